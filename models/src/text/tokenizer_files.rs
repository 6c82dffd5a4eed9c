//! Reads a CLIP tokenizer folder: `vocab.json` + `merges.txt`, or a fast-tokenizer `tokenizer.json`,
//! with the special tokens and `model_max_length` of `tokenizer_config.json` /
//! `special_tokens_map.json` where present (transformers' precedence: config, then map, then file).
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::bpe::END_OF_WORD;
use crate::error::{ModelError, Result};

/// A token matched as a whole before BPE (the special tokens, and a tokenizer's added tokens).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedToken {
    pub content: String,
    pub id: u32,
    /// Matched in the normalised (lower-cased) text instead of the raw text.
    pub normalized: bool,
}

/// Everything a [`super::ClipTokenizer`] is built from.
pub struct TokenizerSpec {
    pub vocab: HashMap<String, u32>,
    pub merges: Vec<(String, String)>,
    /// Added tokens with known ids (from `tokenizer.json` / `added_tokens_decoder`).
    pub added: Vec<AddedToken>,
    pub bos: String,
    pub eos: String,
    pub unk: String,
    pub pad: String,
    pub model_max_length: usize,
}

pub const DEFAULT_BOS: &str = "<|startoftext|>";
pub const DEFAULT_EOS: &str = "<|endoftext|>";
/// What diffusers' CLIP pipelines pad to when a tokenizer states no `model_max_length`.
pub const DEFAULT_MODEL_MAX_LENGTH: usize = 77;
/// Larger values are transformers' "no limit" placeholder (1e30), not a real length.
const SANE_MAX_LENGTH: f64 = 1e6;

pub fn load_dir(dir: &Path) -> Result<TokenizerSpec> {
    let config = read_json_if_exists(&dir.join("tokenizer_config.json"))?;
    let special_map = read_json_if_exists(&dir.join("special_tokens_map.json"))?;
    let tokenizer_json_path = dir.join("tokenizer.json");
    let vocab_path = dir.join("vocab.json");
    let merges_path = dir.join("merges.txt");

    // transformers prefers the fast-tokenizer file when a folder has one.
    let (vocab, merges, mut added, file_pad, file_unk) = if tokenizer_json_path.is_file() {
        read_tokenizer_json(&tokenizer_json_path)?
    } else if vocab_path.is_file() && merges_path.is_file() {
        let vocab = read_vocab(&vocab_path)?;
        let merges = read_merges(&merges_path)?;
        (vocab, merges, Vec::new(), None, None)
    } else {
        let missing = if vocab_path.is_file() {
            merges_path
        } else {
            vocab_path
        };
        return Err(ModelError::MissingFile {
            what: format!(
                "CLIP tokenizer file (vocab.json + merges.txt, or tokenizer.json, in {})",
                dir.display()
            ),
            path: missing,
        });
    };

    if let Some(config) = &config {
        added.extend(added_tokens_decoder(
            config,
            &dir.join("tokenizer_config.json"),
        )?);
    }
    let special = |key: &str| {
        config
            .as_ref()
            .and_then(|c| token_string(c.get(key)))
            .or_else(|| special_map.as_ref().and_then(|m| token_string(m.get(key))))
    };
    let model_max_length = config
        .as_ref()
        .and_then(|c| c.get("model_max_length"))
        .and_then(Value::as_f64)
        .filter(|n| (2.0..=SANE_MAX_LENGTH).contains(n))
        .map_or(DEFAULT_MODEL_MAX_LENGTH, |n| n as usize);

    Ok(TokenizerSpec {
        vocab,
        merges,
        added,
        bos: special("bos_token").unwrap_or_else(|| DEFAULT_BOS.to_owned()),
        eos: special("eos_token").unwrap_or_else(|| DEFAULT_EOS.to_owned()),
        unk: special("unk_token")
            .or(file_unk)
            .unwrap_or_else(|| DEFAULT_EOS.to_owned()),
        pad: special("pad_token")
            .or(file_pad)
            .unwrap_or_else(|| DEFAULT_EOS.to_owned()),
        model_max_length,
    })
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))
}

fn read_json(path: &Path) -> Result<Value> {
    serde_json::from_str(&read_text(path)?)
        .map_err(|e| ModelError::invalid_file(path, e.to_string()))
}

fn read_json_if_exists(path: &Path) -> Result<Option<Value>> {
    if path.is_file() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

/// A special token is written either as a string or as an AddedToken object with `content`.
fn token_string(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

fn vocab_from_value(value: &Value, path: &Path) -> Result<HashMap<String, u32>> {
    let map = value
        .as_object()
        .ok_or_else(|| ModelError::invalid_file(path, "the vocabulary is not a JSON object"))?;
    map.iter()
        .map(|(token, id)| {
            id.as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .map(|id| (token.clone(), id))
                .ok_or_else(|| {
                    ModelError::invalid_file(path, format!("token {token:?} has a non-integer id"))
                })
        })
        .collect()
}

fn read_vocab(path: &Path) -> Result<HashMap<String, u32>> {
    vocab_from_value(&read_json(path)?, path)
}

/// `merges.txt`: an optional `#version` line, then one `left right` pair a line.
fn read_merges(path: &Path) -> Result<Vec<(String, String)>> {
    let text = read_text(path)?;
    let mut merges = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if (index == 0 && line.starts_with("#version")) || line.trim().is_empty() {
            continue;
        }
        merges.push(split_merge(line).ok_or_else(|| {
            ModelError::invalid_file(
                path,
                format!("line {} is not a `left right` merge: {line:?}", index + 1),
            )
        })?);
    }
    Ok(merges)
}

fn split_merge(line: &str) -> Option<(String, String)> {
    let mut parts = line.split(' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty() => {
            Some((a.to_owned(), b.to_owned()))
        }
        _ => None,
    }
}

type TokenizerJsonParts = (
    HashMap<String, u32>,
    Vec<(String, String)>,
    Vec<AddedToken>,
    Option<String>,
    Option<String>,
);

/// The HF fast-tokenizer file of a CLIP tokenizer: a BPE model with `</w>` word ends.
fn read_tokenizer_json(path: &Path) -> Result<TokenizerJsonParts> {
    let json = read_json(path)?;
    let model = json
        .get("model")
        .ok_or_else(|| ModelError::invalid_file(path, "no `model` section"))?;
    let model_type = model.get("type").and_then(Value::as_str).unwrap_or("BPE");
    if model_type != "BPE" {
        return Err(ModelError::invalid_file(
            path,
            format!("a CLIP tokenizer needs a BPE model, this one is {model_type}"),
        ));
    }
    let suffix = model.get("end_of_word_suffix").and_then(Value::as_str);
    if suffix != Some(END_OF_WORD) {
        return Err(ModelError::invalid_file(
            path,
            format!("a CLIP tokenizer ends words with {END_OF_WORD:?}, this one with {suffix:?}"),
        ));
    }
    let vocab = vocab_from_value(
        model
            .get("vocab")
            .ok_or_else(|| ModelError::invalid_file(path, "no `model.vocab`"))?,
        path,
    )?;
    let merges = model
        .get("merges")
        .and_then(Value::as_array)
        .ok_or_else(|| ModelError::invalid_file(path, "no `model.merges` list"))?
        .iter()
        .enumerate()
        .map(|(index, merge)| {
            let pair = match merge {
                Value::String(s) => split_merge(s),
                Value::Array(pair) => match pair.as_slice() {
                    [Value::String(a), Value::String(b)] => Some((a.clone(), b.clone())),
                    _ => None,
                },
                _ => None,
            };
            pair.ok_or_else(|| {
                ModelError::invalid_file(path, format!("merge {index} is not a pair: {merge}"))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let added = match json.get("added_tokens") {
        Some(Value::Array(tokens)) => tokens
            .iter()
            .map(|token| added_token(token, None, path))
            .collect::<Result<Vec<_>>>()?,
        _ => Vec::new(),
    };
    let pad = json
        .get("padding")
        .and_then(|p| p.get("pad_token"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let unk = model
        .get("unk_token")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok((vocab, merges, added, pad, unk))
}

/// `tokenizer_config.json`'s `added_tokens_decoder`: `{ "49406": { "content": ..., ... } }`.
fn added_tokens_decoder(config: &Value, path: &Path) -> Result<Vec<AddedToken>> {
    let Some(decoder) = config
        .get("added_tokens_decoder")
        .and_then(Value::as_object)
    else {
        return Ok(Vec::new());
    };
    decoder
        .iter()
        .map(|(id, token)| {
            let id = id.parse::<u32>().map_err(|_| {
                ModelError::invalid_file(path, format!("added token id {id:?} is not an integer"))
            })?;
            added_token(token, Some(id), path)
        })
        .collect()
}

fn added_token(token: &Value, id: Option<u32>, path: &Path) -> Result<AddedToken> {
    let id = id.or_else(|| {
        token
            .get("id")
            .and_then(Value::as_u64)
            .and_then(|i| u32::try_from(i).ok())
    });
    let content = token.get("content").and_then(Value::as_str);
    match (id, content) {
        (Some(id), Some(content)) => Ok(AddedToken {
            content: content.to_owned(),
            id,
            normalized: token
                .get("normalized")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        }),
        _ => Err(ModelError::invalid_file(
            PathBuf::from(path),
            format!("added token without id or content: {token}"),
        )),
    }
}
