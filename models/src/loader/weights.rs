//! Finding, validating and memory-mapping a component's safetensors weights. Pickle checkpoints
//! (`.bin`, `.pt`, `.ckpt`) are never loaded: unpickling runs arbitrary code.
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

use crate::error::{ModelError, Result};

/// Weight file stems: diffusers models (unet, vae, transformer) use the first, transformers
/// models (text encoders) the second.
const DIFFUSERS_STEM: &str = "diffusion_pytorch_model";
const TRANSFORMERS_STEM: &str = "model";
const PICKLE_EXTENSIONS: [&str; 4] = ["bin", "pt", "pth", "ckpt"];

/// The safetensors files of the component `name` in `dir`, in loading order.
///
/// Looks for `<stem>.fp16.safetensors`, `<stem>.fp16.safetensors.index.json`,
/// `<stem>.safetensors`, `<stem>.safetensors.index.json` (fp16 variants first), with the stem of
/// `library` tried before the other one. A sharded index's `weight_map` names the shard files,
/// which must all exist.
pub fn find_weight_files(name: &str, dir: &Path, library: Option<&str>) -> Result<Vec<PathBuf>> {
    let stems = if library == Some("transformers") {
        [TRANSFORMERS_STEM, DIFFUSERS_STEM]
    } else {
        [DIFFUSERS_STEM, TRANSFORMERS_STEM]
    };
    let mut looked_for = Vec::new();
    for stem in stems {
        for variant in [".fp16", ""] {
            let single = format!("{stem}{variant}.safetensors");
            let index = format!("{single}.index.json");
            if dir.join(&single).is_file() {
                return Ok(vec![dir.join(single)]);
            }
            if dir.join(&index).is_file() {
                return shard_files(name, dir, &dir.join(index));
            }
            looked_for.push(single);
            looked_for.push(index);
        }
    }
    let expected = dir.join(format!("{}.safetensors", stems[0]));
    let pickles = pickle_files(dir);
    let what = if pickles.is_empty() {
        format!(
            "weights of component {name} (looked for {})",
            looked_for.join(", ")
        )
    } else {
        format!(
            "safetensors weights of component {name} (found only pickle weights: {}; imago loads \
             only .safetensors, never pickle; use the repo's safetensors files or convert them)",
            pickles.join(", ")
        )
    };
    Err(ModelError::MissingFile {
        what,
        path: expected,
    })
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

/// The distinct shard files named by a `*.safetensors.index.json`, sorted by name.
fn shard_files(name: &str, dir: &Path, index_path: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index_path).map_err(|e| ModelError::io(index_path, e))?;
    let index: ShardIndex = serde_json::from_str(&text)
        .map_err(|e| ModelError::invalid_file(index_path, e.to_string()))?;
    let shards: BTreeSet<&str> = index.weight_map.values().map(String::as_str).collect();
    if shards.is_empty() {
        return Err(ModelError::invalid_file(
            index_path,
            "`weight_map` is empty",
        ));
    }
    let mut files = Vec::with_capacity(shards.len());
    for shard in shards {
        // A shard is a sibling file; anything else would let an index point outside the repo.
        let plain = Path::new(shard).file_name().is_some_and(|f| f == shard);
        if !plain {
            return Err(ModelError::invalid_file(
                index_path,
                format!("shard `{shard}` is not a file name in the same folder"),
            ));
        }
        let path = dir.join(shard);
        if !path.is_file() {
            return Err(ModelError::MissingFile {
                what: format!(
                    "weight shard of component {name} (listed in {})",
                    index_path.display()
                ),
                path,
            });
        }
        files.push(path);
    }
    Ok(files)
}

fn pickle_files(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| PICKLE_EXTENSIONS.contains(&e))
        })
        .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
        .collect();
    found.sort();
    found
}

/// Checks that `path` is a well-formed safetensors file whose tensors are all f16, bf16 or f32:
/// the header parses, the tensors' data ranges are contiguous and cover the file exactly (so a
/// truncated file is caught here, not as a bus error when a mapped page is touched later).
/// Only the header is read.
pub fn validate_safetensors(path: &Path) -> Result<()> {
    let corrupt = |message: String| ModelError::Safetensors {
        path: path.to_path_buf(),
        message,
    };
    let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
    let len = file.metadata().map_err(|e| ModelError::io(path, e))?.len();
    if len < 8 {
        return Err(corrupt(format!(
            "{len} bytes, too short for a safetensors header"
        )));
    }
    // SAFETY: the map is read-only and dropped before returning; a concurrent writer could change
    // the bytes we parse, which at worst makes this check report an error.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
    let (_, metadata) = SafeTensors::read_metadata(&mmap).map_err(|e| corrupt(e.to_string()))?;
    let mut bad: Vec<String> = metadata
        .tensors()
        .into_iter()
        .filter(|(_, info)| !matches!(info.dtype, Dtype::F16 | Dtype::BF16 | Dtype::F32))
        .map(|(name, info)| format!("{name} ({:?})", info.dtype))
        .collect();
    if !bad.is_empty() {
        bad.sort();
        return Err(corrupt(format!(
            "unsupported tensor dtype (only F16, BF16 and F32 weights are loaded): {}",
            bad.join(", ")
        )));
    }
    Ok(())
}

/// Validates every file, then memory-maps them all into one VarBuilder that converts tensors to
/// `dtype` when they are fetched. A tensor of the wrong shape is reported by candle, with its
/// name, when the model is constructed.
pub fn mmap_var_builder(
    files: &[PathBuf],
    dtype: DType,
    device: &Device,
) -> Result<candle_nn::VarBuilder<'static>> {
    for file in files {
        validate_safetensors(file)?;
    }
    // SAFETY: the files were just validated; like every mmap loader we rely on them not being
    // modified while the model is loaded.
    let tensors = unsafe { candle_core::safetensors::MmapedSafetensors::multi(files) }?;
    Ok(candle_nn::VarBuilder::from_backend(
        Box::new(tensors),
        dtype,
        device.clone(),
    ))
}
