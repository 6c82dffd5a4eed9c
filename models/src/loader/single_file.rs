//! FLUX in Black Forest Labs' single-file layout: the transformer in one safetensors file
//! (`flux1-dev.safetensors`, `flux1-schnell.safetensors`, or a ComfyUI copy whose keys start with
//! `model.diffusion_model.`) and the autoencoder in `ae.safetensors`, both at the root of the
//! repo, next to the diffusers folders. Their tensors are served under diffusers names, so the
//! diffusers-layout models load them unchanged.
mod autoencoder;
mod header;
mod remap;
#[cfg(test)]
mod tests;
mod transformer;

use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};
use header::Header;

pub use autoencoder::{
    bfl_autoencoder_config, bfl_autoencoder_var_builder, FLUX_AE_SAMPLE_SIZE,
    FLUX_AE_SCALING_FACTOR, FLUX_AE_SHIFT_FACTOR,
};
pub use transformer::{bfl_transformer_shapes, bfl_transformer_var_builder, BflTransformerShapes};

/// The single files of a FLUX folder in Black Forest Labs' layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FluxSingleFiles {
    pub transformer: PathBuf,
    /// `ae.safetensors` (or another root file holding an LDM autoencoder), when there is one.
    pub autoencoder: Option<PathBuf>,
}

/// Finds the BFL single files at the root of `root`, recognising them by their tensor names (only
/// headers are read): a transformer holds `double_blocks.0.img_attn.qkv.weight` (optionally under
/// `model.diffusion_model.`), an autoencoder `encoder.conv_in.weight` and `decoder.conv_in.weight`.
/// `Ok(None)` when no root file is a FLUX transformer. Errors on two candidates for one role, and
/// on a file named like a BFL file (`flux1-*.safetensors`, `ae.safetensors`) that is not one.
pub fn find_flux_single_files(root: &Path) -> Result<Option<FluxSingleFiles>> {
    let mut transformers = Vec::new();
    let mut autoencoders = Vec::new();
    for path in root_safetensors(root)? {
        let header = Header::read(&path)?;
        let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if header
            .prefix_of(transformer::PROBE, &transformer::PREFIXES)
            .is_some()
        {
            transformers.push(path);
        } else if autoencoder::find_prefix(&header).is_some() {
            autoencoders.push(path);
        } else if file_name.starts_with("flux1-") {
            return Err(ModelError::invalid_file(
                &path,
                format!(
                    "named like a FLUX transformer but has no tensor {}",
                    transformer::PROBE
                ),
            ));
        } else if file_name == "ae.safetensors" {
            return Err(ModelError::invalid_file(
                &path,
                format!(
                    "named like the FLUX autoencoder but has no tensors {}",
                    autoencoder::PROBES.join(", ")
                ),
            ));
        }
    }
    let Some(transformer) = single(root, transformers, "FLUX transformer")? else {
        return Ok(None);
    };
    let autoencoder = single(root, autoencoders, "FLUX autoencoder")?;
    Ok(Some(FluxSingleFiles {
        transformer,
        autoencoder,
    }))
}

/// The `*.safetensors` files (or links to files) directly in `root`, sorted by name.
fn root_safetensors(root: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(root).map_err(|e| ModelError::io(root, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| ModelError::io(root, e))?.path();
        let is_safetensors = path.extension().is_some_and(|e| e == "safetensors");
        if is_safetensors && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The one candidate, none, or an error listing them all.
fn single(root: &Path, mut found: Vec<PathBuf>, role: &str) -> Result<Option<PathBuf>> {
    if found.len() > 1 {
        let names: Vec<String> = found.iter().map(|p| p.display().to_string()).collect();
        return Err(ModelError::invalid_file(
            root,
            format!(
                "ambiguous: {} files hold a {role}: {}; keep only one in the folder",
                found.len(),
                names.join(", ")
            ),
        ));
    }
    Ok(found.pop())
}
