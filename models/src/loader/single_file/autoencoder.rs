//! FLUX's autoencoder in Black Forest Labs' layout (`ae.safetensors`, the original LDM naming),
//! served under diffusers' `AutoencoderKL` names. The mapping is the inverse of diffusers'
//! `convert_ldm_vae_checkpoint` (diffusers 0.42.1).
use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use super::header::Header;
use super::remap::{remapped_var_builder, Fetch, Source};
use crate::error::{ModelError, Result};
use crate::vae::VaeConfig;

/// Tensors every LDM autoencoder file has, used to recognise one.
pub(super) const PROBES: [&str; 2] = ["encoder.conv_in.weight", "decoder.conv_in.weight"];
/// Key prefixes an autoencoder file may use: none (BFL's `ae.safetensors`) or those of LDM
/// checkpoints that diffusers also strips (`LDM_VAE_KEYS`).
pub(super) const PREFIXES: [&str; 3] = ["", "first_stage_model.", "vae."];

const LAYOUT: &str = "BFL/LDM autoencoder";

/// FLUX.1's latent normalisation: `latents = (z - shift_factor) * scaling_factor`. These are
/// constants of the FLUX ae (from the FLUX.1 repos' `vae/config.json` and BFL's reference code);
/// `ae.safetensors` does not carry them.
pub const FLUX_AE_SCALING_FACTOR: f64 = 0.3611;
pub const FLUX_AE_SHIFT_FACTOR: f64 = 0.1159;
/// The `sample_size` of the FLUX.1 repos' `vae/config.json` (the tile size of tiled decoding);
/// it is no property of the weights.
pub const FLUX_AE_SAMPLE_SIZE: usize = 1024;
/// diffusers' AutoencoderKL default; group counts leave no trace in the weights' shapes.
const NORM_GROUPS: usize = 32;

/// The file's header and key prefix; errors naming the file when it is no LDM autoencoder.
pub(super) fn autoencoder_header(path: &Path) -> Result<(Header, &'static str)> {
    let header = Header::read(path)?;
    match find_prefix(&header) {
        Some(prefix) => Ok((header, prefix)),
        None => Err(ModelError::invalid_file(
            path,
            format!(
                "not an autoencoder in Black Forest Labs'/LDM layout: it has no tensors {} and {}",
                PROBES[0], PROBES[1]
            ),
        )),
    }
}

pub(super) fn find_prefix(header: &Header) -> Option<&'static str> {
    PREFIXES.iter().copied().find(|prefix| {
        PROBES
            .iter()
            .all(|probe| header.has(&format!("{prefix}{probe}")))
    })
}

/// The diffusers `AutoencoderKL` configuration of a BFL/LDM autoencoder file, inferred from its
/// tensor shapes, with FLUX's scaling and shift factors (see [`FLUX_AE_SCALING_FACTOR`]).
pub fn bfl_autoencoder_config(path: &Path) -> Result<VaeConfig> {
    let (header, p) = autoencoder_header(path)?;
    let dims = |name: &str, rank: usize| header.dims(&format!("{p}{name}"), rank);
    let blocks = header.count_indexed(&format!("{p}encoder.down."));
    let up_blocks = header.count_indexed(&format!("{p}decoder.up."));
    if blocks == 0 || blocks != up_blocks {
        return Err(ModelError::invalid_file(
            path,
            format!("{blocks} encoder down blocks but {up_blocks} decoder up blocks"),
        ));
    }
    let block_out_channels = (0..blocks)
        .map(|i| Ok(dims(&format!("encoder.down.{i}.block.0.conv1.weight"), 4)?[0]))
        .collect::<Result<Vec<usize>>>()?;
    let config = serde_json::json!({
        "in_channels": dims("encoder.conv_in.weight", 4)?[1],
        "out_channels": dims("decoder.conv_out.weight", 4)?[0],
        "down_block_types": vec!["DownEncoderBlock2D"; blocks],
        "up_block_types": vec!["UpDecoderBlock2D"; blocks],
        "block_out_channels": block_out_channels,
        "layers_per_block": header.count_indexed(&format!("{p}encoder.down.0.block.")),
        "act_fn": "silu",
        "latent_channels": dims("decoder.conv_in.weight", 4)?[1],
        "norm_num_groups": NORM_GROUPS,
        "sample_size": FLUX_AE_SAMPLE_SIZE,
        "scaling_factor": FLUX_AE_SCALING_FACTOR,
        "shift_factor": FLUX_AE_SHIFT_FACTOR,
        "latents_mean": null,
        "latents_std": null,
        "force_upcast": true,
        "use_quant_conv": header.has(&format!("{p}quant_conv.weight")),
        "use_post_quant_conv": header.has(&format!("{p}post_quant_conv.weight")),
        "mid_block_add_attention": header.has(&format!("{p}encoder.mid.attn_1.q.weight")),
    });
    let config = VaeConfig::from_json(&config.to_string())
        .map_err(|e| ModelError::invalid_file(path, format!("inferred VAE config: {e}")))?;
    config.validate()?;
    Ok(config)
}

/// A VarBuilder that serves diffusers `AutoencoderKL` names out of a BFL/LDM autoencoder file
/// (reversed decoder block order, 1x1-conv attention kernels read as linear weights), converting
/// tensors to `dtype` when fetched.
pub fn bfl_autoencoder_var_builder(
    path: &Path,
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>> {
    let (header, prefix) = autoencoder_header(path)?;
    let up_blocks = header.count_indexed(&format!("{prefix}decoder.up."));
    let map = Box::new(move |name: &str| autoencoder_source(name, up_blocks));
    remapped_var_builder(path, prefix, LAYOUT, map, dtype, device)
}

/// Where diffusers tensor `name` is in an LDM file whose decoder has `up_blocks` blocks.
pub(super) fn autoencoder_source(name: &str, up_blocks: usize) -> Option<Source> {
    let (stem, param) = name.rsplit_once('.')?;
    if !matches!(param, "weight" | "bias") {
        return None;
    }
    if matches!(stem, "quant_conv" | "post_quant_conv") {
        return Some(Source::whole(name));
    }
    let (side, inner) = stem.split_once('.')?;
    if !matches!(side, "encoder" | "decoder") {
        return None;
    }
    let whole = |stored: String| Some(Source::whole(format!("{side}.{stored}.{param}")));
    match inner {
        "conv_in" | "conv_out" => return whole(inner.to_string()),
        "conv_norm_out" => return whole("norm_out".to_string()),
        _ => {}
    }
    let parts: Vec<&str> = inner.split('.').collect();
    match (side, parts.as_slice()) {
        ("encoder", ["down_blocks", i, "resnets", j, layer]) => {
            let (i, j) = (index(i)?, index(j)?);
            whole(format!("down.{i}.block.{j}.{}", resnet_layer(layer)?))
        }
        ("encoder", ["down_blocks", i, "downsamplers", "0", "conv"]) => {
            whole(format!("down.{}.downsample.conv", index(i)?))
        }
        ("decoder", ["up_blocks", i, "resnets", j, layer]) => {
            // diffusers' up_blocks run from the deepest level; LDM's `up` is indexed by level.
            let level = up_blocks.checked_sub(index(i)? + 1)?;
            whole(format!(
                "up.{level}.block.{}.{}",
                index(j)?,
                resnet_layer(layer)?
            ))
        }
        ("decoder", ["up_blocks", i, "upsamplers", "0", "conv"]) => {
            let level = up_blocks.checked_sub(index(i)? + 1)?;
            whole(format!("up.{level}.upsample.conv"))
        }
        (_, ["mid_block", "resnets", k, layer]) => {
            let block = index(k)? + 1;
            whole(format!("mid.block_{block}.{}", resnet_layer(layer)?))
        }
        (_, ["mid_block", "attentions", "0", "group_norm"]) => whole("mid.attn_1.norm".to_string()),
        (_, ["mid_block", "attentions", "0", projection @ ..]) => {
            let stored = match projection {
                ["to_q"] => "q",
                ["to_k"] => "k",
                ["to_v"] => "v",
                ["to_out", "0"] => "proj_out",
                _ => return None,
            };
            // LDM stores these as 1x1 convolutions; diffusers squeezes the weights to linear ones.
            let fetch = if param == "weight" {
                Fetch::SqueezeConv
            } else {
                Fetch::Whole
            };
            Some(Source::with(
                format!("{side}.mid.attn_1.{stored}.{param}"),
                fetch,
            ))
        }
        _ => None,
    }
}

fn index(text: &str) -> Option<usize> {
    text.parse().ok()
}

fn resnet_layer(layer: &str) -> Option<&'static str> {
    Some(match layer {
        "norm1" => "norm1",
        "conv1" => "conv1",
        "norm2" => "norm2",
        "conv2" => "conv2",
        "conv_shortcut" => "nin_shortcut",
        _ => return None,
    })
}
