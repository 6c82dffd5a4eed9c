//! T5's tokenizer exactly as transformers 5.24 `T5Tokenizer` builds it from a `tokenizer.json`:
//! the file's Unigram vocabulary (unk id 2, no byte fallback), the file's SentencePiece
//! `Precompiled` normaliser when it has one (any other normaliser is dropped), whitespace splitting
//! then `Metaspace("▁", prepend always)`, and `$A </s>` as the template. `encode` is
//! `tokenizer(prompt, padding="max_length", max_length=..., truncation=True)`: the text's tokens are
//! cut to `max_length - 1`, `</s>` follows, and `<pad>` fills the rest.
use std::path::Path;

use serde::Deserialize;
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::{NormalizerWrapper, Precompiled};
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::{AddedToken, ModelWrapper, PreTokenizerWrapper, Tokenizer};

use super::clip_tokenizer::TokenizedPrompt;
use crate::error::{ModelError, Result};

/// transformers' `T5Tokenizer` passes `unk_id=2` whatever the file says.
const UNK_ID: usize = 2;
const METASPACE: char = '\u{2581}';

pub struct T5Tokenizer {
    tokenizer: Tokenizer,
    eos_id: u32,
    pad_id: u32,
}

/// The special tokens of `tokenizer_config.json` (transformers' T5 defaults when absent).
#[derive(Debug, Clone, PartialEq, Eq)]
struct SpecialTokens {
    eos: String,
    unk: String,
    pad: String,
}

impl Default for SpecialTokens {
    fn default() -> Self {
        Self {
            eos: "</s>".to_owned(),
            unk: "<unk>".to_owned(),
            pad: "<pad>".to_owned(),
        }
    }
}

impl T5Tokenizer {
    /// Loads `tokenizer.json`, with the special tokens of a `tokenizer_config.json` beside it.
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(ModelError::MissingFile {
                what: "T5 tokenizer".to_owned(),
                path: path.to_path_buf(),
            });
        }
        let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
        let config_path = path.with_file_name("tokenizer_config.json");
        let special = if config_path.is_file() {
            let text = std::fs::read_to_string(&config_path)
                .map_err(|e| ModelError::io(&config_path, e))?;
            special_tokens_from_config(&text)
                .map_err(|message| ModelError::invalid_file(&config_path, message))?
        } else {
            SpecialTokens::default()
        };
        Self::build(&bytes, &special).map_err(|message| ModelError::invalid_file(path, message))
    }

    /// A tokenizer from the bytes of a `tokenizer.json`, with T5's default special tokens.
    pub fn from_json_bytes(bytes: &[u8]) -> Result<Self> {
        Self::build(bytes, &SpecialTokens::default())
            .map_err(|message| ModelError::invalid("tokenizer.json", message))
    }

    fn build(bytes: &[u8], special: &SpecialTokens) -> std::result::Result<Self, String> {
        let mut tokenizer = Tokenizer::from_bytes(bytes).map_err(|e| e.to_string())?;
        let vocab: Vec<(String, f64)> = match tokenizer.get_model() {
            ModelWrapper::Unigram(model) => model.iter().cloned().collect(),
            _ => return Err("the model is not a Unigram model, as T5's is".to_owned()),
        };
        let model = Unigram::from(vocab, Some(UNK_ID), false)
            .map_err(|e| format!("Unigram vocabulary with unk id {UNK_ID}: {e}"))?;
        let precompiled = tokenizer.get_normalizer().and_then(find_precompiled);
        tokenizer.with_model(model);
        tokenizer
            .with_normalizer(precompiled.map(NormalizerWrapper::Precompiled))
            .map_err(|e| e.to_string())?;
        tokenizer.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(Sequence::new(vec![
            PreTokenizerWrapper::WhitespaceSplit(WhitespaceSplit),
            PreTokenizerWrapper::Metaspace(Metaspace::new(METASPACE, PrependScheme::Always, true)),
        ]))));
        // `encode` applies the template, truncation and padding itself.
        tokenizer.with_post_processor(None::<tokenizers::PostProcessorWrapper>);
        tokenizer.with_truncation(None).map_err(|e| e.to_string())?;
        tokenizer.with_padding(None);
        tokenizer
            .add_special_tokens(
                [&special.pad, &special.eos, &special.unk]
                    .into_iter()
                    .map(|content| AddedToken::from(content.as_str(), true)),
            )
            .map_err(|e| e.to_string())?;
        let id_of = |token: &str| {
            tokenizer
                .token_to_id(token)
                .ok_or_else(|| format!("no id for the special token {token:?}"))
        };
        let eos_id = id_of(&special.eos)?;
        let pad_id = id_of(&special.pad)?;
        Ok(Self {
            tokenizer,
            eos_id,
            pad_id,
        })
    }

    /// As diffusers: tokenizer(prompt, padding="max_length", max_length, truncation=True,
    /// add_special_tokens=True): ids incl. the final </s>, padded with the pad id to max_length.
    pub fn encode(&self, text: &str, max_length: usize) -> Result<TokenizedPrompt> {
        if max_length == 0 {
            return Err(ModelError::invalid(
                "max_sequence_length",
                "must be at least 1 to hold the </s> token",
            ));
        }
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| ModelError::invalid("prompt", format!("T5 tokenizer: {e}")))?;
        let tokens = encoding.get_ids();
        let room = max_length - 1;
        let kept = tokens.len().min(room);
        let mut ids = Vec::with_capacity(max_length);
        ids.extend_from_slice(&tokens[..kept]);
        ids.push(self.eos_id);
        ids.resize(max_length, self.pad_id);
        Ok(TokenizedPrompt {
            ids,
            truncated: tokens.len() > room,
        })
    }

    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }
}

/// The SentencePiece character map of the file's normaliser, alone or inside a sequence.
fn find_precompiled(normalizer: &NormalizerWrapper) -> Option<Precompiled> {
    match normalizer {
        NormalizerWrapper::Precompiled(precompiled) => Some(precompiled.clone()),
        NormalizerWrapper::Sequence(sequence) => {
            sequence.as_ref().iter().find_map(find_precompiled)
        }
        _ => None,
    }
}

/// A special token in `tokenizer_config.json`: a string or an `AddedToken` object.
#[derive(Deserialize)]
#[serde(untagged)]
enum TokenEntry {
    Text(String),
    Object { content: String },
}

fn special_tokens_from_config(text: &str) -> std::result::Result<SpecialTokens, String> {
    #[derive(Deserialize)]
    struct Config {
        eos_token: Option<TokenEntry>,
        unk_token: Option<TokenEntry>,
        pad_token: Option<TokenEntry>,
    }
    let config: Config = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let content = |entry: Option<TokenEntry>, default: String| match entry {
        Some(TokenEntry::Text(text)) | Some(TokenEntry::Object { content: text }) => text,
        None => default,
    };
    let defaults = SpecialTokens::default();
    Ok(SpecialTokens {
        eos: content(config.eos_token, defaults.eos),
        unk: content(config.unk_token, defaults.unk),
        pad: content(config.pad_token, defaults.pad),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKENIZER: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/parity/flux-schnell-4step/model/tokenizer_2/tokenizer.json"
    );

    fn tokenizer() -> T5Tokenizer {
        T5Tokenizer::from_file(Path::new(TOKENIZER)).expect("fixture tokenizer")
    }

    /// Reference ids from transformers 5.24 `T5TokenizerFast.from_pretrained(tokenizer_2)`.
    #[test]
    fn case_prompt_matches_transformers() {
        let encoded = tokenizer()
            .encode("watercolor painting of a lighthouse at dusk", 32)
            .expect("encode");
        assert_eq!(
            encoded.ids,
            vec![
                42, 4, 7, 6, 9, 22, 35, 31, 19, 4, 14, 7, 14, 16, 3, 5, 11, 3, 4, 25, 28, 26, 6, 3,
                4, 7, 3, 10, 26, 38, 1, 0
            ]
        );
        assert!(!encoded.truncated);
    }

    #[test]
    fn truncation_keeps_the_final_eos() {
        let tokenizer = tokenizer();
        let long =
            "a  very   long prompt about a watercolor painting of a lighthouse at dusk with boats";
        let cases: [(&str, usize, &[u32]); 6] = [
            (long, 8, &[3, 4, 3, 2, 6, 9, 36, 1]),
            (
                long,
                32,
                &[
                    3, 4, 3, 2, 6, 9, 36, 3, 13, 33, 16, 19, 9, 5, 24, 43, 7, 3, 4, 46, 5, 20, 7,
                    3, 4, 42, 4, 7, 6, 9, 22, 1,
                ],
            ),
            (long, 3, &[3, 4, 1]),
            (long, 1, &[1]),
            (
                "   leading and trailing   ",
                8,
                &[3, 13, 6, 4, 10, 14, 16, 1],
            ),
            (
                "watercolor painting of a lighthouse at dusk",
                8,
                &[42, 4, 7, 6, 9, 22, 35, 1],
            ),
        ];
        for (text, max_length, expected) in cases {
            let encoded = tokenizer.encode(text, max_length).expect("encode");
            assert_eq!(encoded.ids, expected, "{text:?} at {max_length}");
            assert!(encoded.truncated, "{text:?} at {max_length}");
        }
        assert!(tokenizer.encode(long, 0).is_err());
    }

    #[test]
    fn whitespace_unknown_characters_and_special_tokens() {
        let tokenizer = tokenizer();
        let cases: [(&str, usize, &[u32], bool); 6] = [
            (
                "double  spaces\tand\nnewlines ünïcödé 日本 émoji 🦀 </s> <pad> end",
                64,
                &[
                    3, 10, 5, 20, 46, 13, 6, 3, 17, 43, 4, 22, 6, 17, 3, 4, 8, 10, 3, 8, 6, 27, 13,
                    14, 6, 17, 3, 2, 8, 2, 22, 2, 10, 2, 3, 2, 3, 2, 24, 5, 2, 12, 3, 2, 1, 0, 3,
                    6, 8, 10, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ],
                false,
            ),
            (
                "x </s>y<pad>z <unk>",
                12,
                &[3, 37, 1, 3, 36, 0, 3, 2, 2, 1, 0, 0],
                false,
            ),
            (
                "Ⅻ ｆｕｌｌ　ｗｉｄｔｈ",
                8,
                &[3, 2, 3, 2, 3, 2, 1, 0],
                false,
            ),
            (
                "HELLO World!!",
                32,
                &[
                    3, 2, 3, 2, 31, 13, 10, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                    0, 0, 0, 0, 0, 0, 0,
                ],
                false,
            ),
            ("", 8, &[1, 0, 0, 0, 0, 0, 0, 0], false),
            (
                "   leading and trailing   ",
                18,
                &[
                    3, 13, 6, 4, 10, 14, 16, 3, 4, 8, 10, 3, 48, 44, 13, 14, 16, 1,
                ],
                false,
            ),
        ];
        for (text, max_length, expected, truncated) in cases {
            let encoded = tokenizer.encode(text, max_length).expect("encode");
            assert_eq!(encoded.ids, expected, "{text:?} at {max_length}");
            assert_eq!(encoded.truncated, truncated, "{text:?} at {max_length}");
        }
    }

    #[test]
    fn special_ids_and_errors_name_the_file() {
        let tokenizer = tokenizer();
        assert_eq!((tokenizer.eos_id(), tokenizer.pad_id()), (1, 0));
        let bytes = std::fs::read(TOKENIZER).expect("bytes");
        let from_bytes = T5Tokenizer::from_json_bytes(&bytes).expect("from bytes");
        let expected = TokenizedPrompt {
            ids: vec![3, 4, 25, 28, 26, 1],
            truncated: true,
        };
        assert_eq!(
            from_bytes.encode("a lighthouse", 6).expect("encode"),
            expected
        );
        assert_eq!(
            tokenizer.encode("a lighthouse", 6).expect("encode"),
            expected
        );

        let dir = tempfile::tempdir().expect("tempdir");
        let broken = dir.path().join("tokenizer.json");
        std::fs::write(&broken, "{\"not\": \"a tokenizer\"}").expect("write");
        let message = T5Tokenizer::from_file(&broken)
            .err()
            .expect("broken file is rejected")
            .to_string();
        assert!(message.contains("tokenizer.json"), "{message}");
        let missing = dir.path().join("absent/tokenizer.json");
        let message = T5Tokenizer::from_file(&missing)
            .err()
            .expect("missing file is rejected")
            .to_string();
        assert!(message.contains("absent/tokenizer.json"), "{message}");
    }

    #[test]
    fn special_tokens_come_from_tokenizer_config() {
        let special = special_tokens_from_config(
            r#"{"eos_token": {"content": "<eos>", "lstrip": false}, "pad_token": "<p>"}"#,
        )
        .expect("parses");
        assert_eq!(special.eos, "<eos>");
        assert_eq!(special.pad, "<p>");
        assert_eq!(special.unk, "<unk>");
    }
}
