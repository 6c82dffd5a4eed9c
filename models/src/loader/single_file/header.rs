//! The tensor names and shapes of a safetensors file, read from its JSON header alone (no tensor
//! data is touched), to recognise a file's layout and infer a model's configuration.
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{ModelError, Result};

/// The safetensors format's own bound on the header (100 MB), so a corrupt length cannot make us
/// allocate gigabytes.
const MAX_HEADER_BYTES: u64 = 100_000_000;

#[derive(Deserialize)]
struct Entry {
    shape: Vec<usize>,
}

#[derive(Debug, Clone)]
pub(super) struct Header {
    path: PathBuf,
    shapes: BTreeMap<String, Vec<usize>>,
}

impl Header {
    pub fn read(path: &Path) -> Result<Self> {
        let corrupt = |message: String| ModelError::Safetensors {
            path: path.to_path_buf(),
            message,
        };
        let mut file = File::open(path).map_err(|e| ModelError::io(path, e))?;
        let file_len = file.metadata().map_err(|e| ModelError::io(path, e))?.len();
        let mut len_bytes = [0u8; 8];
        file.read_exact(&mut len_bytes).map_err(|_| {
            corrupt(format!(
                "{file_len} bytes, too short for a safetensors header"
            ))
        })?;
        let len = u64::from_le_bytes(len_bytes);
        if len > MAX_HEADER_BYTES || len > file_len.saturating_sub(8) {
            return Err(corrupt(format!(
                "header length {len} does not fit the file ({file_len} bytes)"
            )));
        }
        // `len` is at most MAX_HEADER_BYTES, so it fits usize.
        let mut json = vec![0u8; len as usize];
        file.read_exact(&mut json)
            .map_err(|e| corrupt(format!("cannot read the header: {e}")))?;
        let entries: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&json)
            .map_err(|e| corrupt(format!("header is not valid JSON: {e}")))?;
        let mut shapes = BTreeMap::new();
        for (name, value) in entries {
            if name == "__metadata__" {
                continue;
            }
            let entry: Entry = serde_json::from_value(value)
                .map_err(|e| corrupt(format!("header entry {name}: {e}")))?;
            shapes.insert(name, entry.shape);
        }
        Ok(Self {
            path: path.to_path_buf(),
            shapes,
        })
    }

    pub fn has(&self, name: &str) -> bool {
        self.shapes.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.shapes.keys().map(String::as_str)
    }

    /// The first of `prefixes` under which the file holds `probe`.
    pub fn prefix_of(&self, probe: &str, prefixes: &[&'static str]) -> Option<&'static str> {
        prefixes
            .iter()
            .copied()
            .find(|prefix| self.has(&format!("{prefix}{probe}")))
    }

    /// 1 + the largest `i` among tensors named `{prefix}{i}.…`; 0 when there are none.
    pub fn count_indexed(&self, prefix: &str) -> usize {
        self.names()
            .filter_map(|name| name.strip_prefix(prefix)?.split('.').next()?.parse().ok())
            .map(|i: usize| i + 1)
            .max()
            .unwrap_or(0)
    }

    /// The shape of `name`, which must exist with `rank` dimensions.
    pub fn dims(&self, name: &str, rank: usize) -> Result<&[usize]> {
        match self.shapes.get(name) {
            Some(shape) if shape.len() == rank => Ok(shape),
            Some(shape) => Err(ModelError::invalid_file(
                &self.path,
                format!("tensor {name} has shape {shape:?}, expected {rank} dimensions"),
            )),
            None => Err(ModelError::invalid_file(
                &self.path,
                format!("missing tensor {name}"),
            )),
        }
    }
}
