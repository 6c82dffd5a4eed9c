//! CLIP's tokenizer exactly as transformers 5.24 `CLIPTokenizer` runs it for diffusers:
//! added/special tokens are cut out of the raw text, the rest is NFC-normalised, whitespace runs
//! become one space, characters are lower-cased one by one, CLIP's regex splits words, digits
//! and punctuation runs, and byte-level BPE encodes each piece. `encode` then adds bos/eos,
//! truncates to `model_max_length` and pads with the pad token, as
//! `tokenizer(prompt, padding="max_length", max_length=model_max_length, truncation=True)`.
use std::collections::HashMap;
use std::path::Path;

use regex::Regex;
use unicode_normalization_alignments::UnicodeNormalization;

use super::bpe::BytePairEncoder;
use super::tokenizer_files::{self, AddedToken, TokenizerSpec, DEFAULT_BOS, DEFAULT_EOS};
use crate::error::{ModelError, Result};

/// CLIP's pre-tokenisation pattern (transformers' `Split` pre-tokenizer, matches kept).
const PRE_TOKENIZE: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// The ids of one prompt, padded to the tokenizer's `model_max_length`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedPrompt {
    pub ids: Vec<u32>,
    /// The prompt had more tokens than fit; the tail was dropped (diffusers warns about it).
    pub truncated: bool,
}

pub struct ClipTokenizer {
    bpe: BytePairEncoder,
    /// Added tokens matched in the raw text, and those matched after normalisation.
    added_raw: Vec<AddedToken>,
    added_normalized: Vec<AddedToken>,
    bos_id: u32,
    eos_id: u32,
    pad_id: u32,
    model_max_length: usize,
    whitespace: Regex,
    pre_tokenizer: Regex,
}

/// A stretch of text between added tokens, or one added token.
enum Segment<'a> {
    Text(&'a str),
    Added(u32),
}

impl ClipTokenizer {
    /// Loads `dir/tokenizer.json`, or `dir/vocab.json` + `dir/merges.txt`, with the special tokens
    /// and `model_max_length` of `tokenizer_config.json` / `special_tokens_map.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let spec = tokenizer_files::load_dir(dir)?;
        Self::from_spec(spec).map_err(|message| ModelError::invalid_file(dir, message))
    }

    /// A tokenizer from an in-memory vocabulary and merge list, with CLIP's bos/eos/unk tokens.
    pub fn from_parts(
        vocab: HashMap<String, u32>,
        merges: Vec<(String, String)>,
        pad_token: &str,
        model_max_length: usize,
    ) -> Result<Self> {
        let spec = TokenizerSpec {
            vocab,
            merges,
            added: Vec::new(),
            bos: DEFAULT_BOS.to_owned(),
            eos: DEFAULT_EOS.to_owned(),
            unk: DEFAULT_EOS.to_owned(),
            pad: pad_token.to_owned(),
            model_max_length,
        };
        Self::from_spec(spec).map_err(|message| ModelError::invalid("tokenizer", message))
    }

    fn from_spec(spec: TokenizerSpec) -> std::result::Result<Self, String> {
        if spec.model_max_length < 2 {
            return Err(format!(
                "model_max_length {} leaves no room for the bos and eos tokens",
                spec.model_max_length
            ));
        }
        let mut added = spec.added;
        // The special tokens are added tokens too, matched on the raw text.
        for token in [&spec.bos, &spec.eos, &spec.unk, &spec.pad] {
            if added.iter().any(|a| &a.content == token) {
                continue;
            }
            let id = spec
                .vocab
                .get(token)
                .copied()
                .ok_or_else(|| format!("special token {token:?} is not in the vocabulary"))?;
            added.push(AddedToken {
                content: token.clone(),
                id,
                normalized: false,
            });
        }
        let id_of = |token: &str| {
            added
                .iter()
                .find(|a| a.content == token)
                .map(|a| a.id)
                .ok_or_else(|| format!("special token {token:?} has no id"))
        };
        let (bos_id, eos_id, pad_id, unk_id) = (
            id_of(&spec.bos)?,
            id_of(&spec.eos)?,
            id_of(&spec.pad)?,
            id_of(&spec.unk)?,
        );
        let (added_normalized, added_raw) = added
            .into_iter()
            .filter(|a| !a.content.is_empty())
            .partition(|a| a.normalized);
        Ok(Self {
            bpe: BytePairEncoder::new(spec.vocab, spec.merges, unk_id),
            added_raw,
            added_normalized,
            bos_id,
            eos_id,
            pad_id,
            model_max_length: spec.model_max_length,
            whitespace: Regex::new(r"\s+").map_err(|e| e.to_string())?,
            pre_tokenizer: Regex::new(PRE_TOKENIZE).map_err(|e| e.to_string())?,
        })
    }

    pub fn model_max_length(&self) -> usize {
        self.model_max_length
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// `[bos, tokens.., eos, pad..]`, exactly `model_max_length` ids; tokens past
    /// `model_max_length - 2` are dropped and `truncated` is set.
    pub fn encode(&self, text: &str) -> TokenizedPrompt {
        let mut tokens = self.token_ids(text);
        let room = self.model_max_length - 2;
        let truncated = tokens.len() > room;
        tokens.truncate(room);
        let mut ids = Vec::with_capacity(self.model_max_length);
        ids.push(self.bos_id);
        ids.extend(tokens);
        ids.push(self.eos_id);
        ids.resize(self.model_max_length, self.pad_id);
        TokenizedPrompt { ids, truncated }
    }

    /// The ids of `text` without bos/eos, truncation or padding.
    pub fn token_ids(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        for segment in split_on_added(text, &self.added_raw) {
            match segment {
                Segment::Added(id) => ids.push(id),
                Segment::Text(raw) => {
                    let normalized = self.normalize(raw);
                    for segment in split_on_added(&normalized, &self.added_normalized) {
                        match segment {
                            Segment::Added(id) => ids.push(id),
                            Segment::Text(piece) => {
                                for word in self.pre_tokenizer.find_iter(piece) {
                                    ids.extend(self.bpe.encode_word(word.as_str()));
                                }
                            }
                        }
                    }
                }
            }
        }
        ids
    }

    /// NFC, whitespace runs to one space, then per-character lower case (no final-sigma rule,
    /// as the `tokenizers` Lowercase normaliser does).
    fn normalize(&self, text: &str) -> String {
        let composed: String = text.nfc().map(|(c, _)| c).collect();
        self.whitespace
            .replace_all(&composed, " ")
            .chars()
            .flat_map(char::to_lowercase)
            .collect()
    }
}

/// Splits `text` around the added tokens, leftmost match first and the longest at one position.
fn split_on_added<'a>(text: &'a str, added: &[AddedToken]) -> Vec<Segment<'a>> {
    if added.is_empty() {
        return vec![Segment::Text(text)];
    }
    let mut segments = Vec::new();
    let mut start = 0;
    let mut pos = 0;
    while pos < text.len() {
        let rest = &text[pos..];
        let matched = added
            .iter()
            .filter(|a| rest.starts_with(a.content.as_str()))
            .max_by_key(|a| a.content.len());
        match matched {
            Some(token) => {
                if start < pos {
                    segments.push(Segment::Text(&text[start..pos]));
                }
                segments.push(Segment::Added(token.id));
                pos += token.content.len();
                start = pos;
            }
            None => pos += rest.chars().next().map_or(1, char::len_utf8),
        }
    }
    if start < text.len() {
        segments.push(Segment::Text(&text[start..]));
    }
    segments
}
