//! FLUX transformers in Black Forest Labs' layout (`flux1-dev.safetensors`,
//! `flux1-schnell.safetensors`, ComfyUI's copies with keys under `model.diffusion_model.`), served
//! under diffusers' `FluxTransformer2DModel` names. The mapping is the inverse of diffusers'
//! `convert_flux_transformer_checkpoint_to_diffusers` (diffusers 0.42.1), except that the split of
//! the single blocks' `linear1` uses the file's hidden size instead of FLUX.1's fixed 3072.
use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use super::header::Header;
use super::remap::{remapped_var_builder, Fetch, Source};
use crate::error::{ModelError, Result};

/// A tensor every FLUX transformer file has, used to recognise one.
pub(super) const PROBE: &str = "double_blocks.0.img_attn.qkv.weight";
/// Key prefixes a FLUX transformer file may use: none (BFL) or ComfyUI's.
pub(super) const PREFIXES: [&str; 2] = ["", "model.diffusion_model."];

const LAYOUT: &str = "BFL FLUX transformer";

/// Shapes read from a BFL transformer file's header, to build a `FluxTransformerConfig` when the
/// folder has no `transformer/config.json`. (`axes_dims_rope` cannot be read from weights.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BflTransformerShapes {
    pub num_layers: usize,
    pub num_single_layers: usize,
    /// `num_attention_heads * attention_head_dim` (3072 for FLUX.1).
    pub hidden_size: usize,
    /// `attention_head_dim`, the length of the q/k RMSNorm scale.
    pub head_dim: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub joint_attention_dim: usize,
    pub pooled_projection_dim: usize,
    /// FLUX.1-dev has a guidance embedder (`guidance_in`), schnell does not.
    pub guidance_embeds: bool,
}

impl BflTransformerShapes {
    pub fn num_attention_heads(&self) -> usize {
        self.hidden_size / self.head_dim
    }
}

/// The file's header and its key prefix; errors naming the file when it is no FLUX transformer.
fn transformer_header(path: &Path) -> Result<(Header, &'static str)> {
    let header = Header::read(path)?;
    match header.prefix_of(PROBE, &PREFIXES) {
        Some(prefix) => Ok((header, prefix)),
        None => Err(ModelError::invalid_file(
            path,
            format!(
                "not a FLUX transformer in Black Forest Labs' layout: it has no tensor {PROBE} \
                 (nor model.diffusion_model.{PROBE})"
            ),
        )),
    }
}

pub fn bfl_transformer_shapes(path: &Path) -> Result<BflTransformerShapes> {
    let (header, p) = transformer_header(path)?;
    let dims = |name: &str, rank: usize| header.dims(&format!("{p}{name}"), rank);
    let img_in = dims("img_in.weight", 2)?;
    let head_dim = dims("double_blocks.0.img_attn.norm.query_norm.scale", 1)?[0];
    let hidden_size = img_in[0];
    if head_dim == 0 || hidden_size % head_dim != 0 {
        return Err(ModelError::invalid_file(
            path,
            format!("hidden size {hidden_size} is not a multiple of the head size {head_dim}"),
        ));
    }
    Ok(BflTransformerShapes {
        num_layers: header.count_indexed(&format!("{p}double_blocks.")),
        num_single_layers: header.count_indexed(&format!("{p}single_blocks.")),
        hidden_size,
        head_dim,
        in_channels: img_in[1],
        out_channels: dims("final_layer.linear.weight", 2)?[0],
        joint_attention_dim: dims("txt_in.weight", 2)?[1],
        pooled_projection_dim: dims("vector_in.in_layer.weight", 2)?[1],
        guidance_embeds: header.has(&format!("{p}guidance_in.in_layer.weight")),
    })
}

/// A VarBuilder that serves diffusers `FluxTransformer2DModel` names out of a BFL transformer file
/// (splitting the fused qkv and `linear1`, swapping norm_out's shift/scale halves), converting
/// tensors to `dtype` when fetched.
pub fn bfl_transformer_var_builder(
    path: &Path,
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>> {
    let (header, prefix) = transformer_header(path)?;
    let hidden = header.dims(&format!("{prefix}img_in.weight"), 2)?[0];
    let map = Box::new(move |name: &str| transformer_source(name, hidden));
    remapped_var_builder(path, prefix, LAYOUT, map, dtype, device)
}

/// Where diffusers tensor `name` is in a BFL file whose hidden size is `hidden`.
pub(super) fn transformer_source(name: &str, hidden: usize) -> Option<Source> {
    let (stem, param) = name.rsplit_once('.')?;
    let linear_param = matches!(param, "weight" | "bias");
    if let Some(rest) = stem.strip_prefix("transformer_blocks.") {
        let (index, inner) = block_index(rest)?;
        return double_block_source(index, inner, param);
    }
    if let Some(rest) = stem.strip_prefix("single_transformer_blocks.") {
        let (index, inner) = block_index(rest)?;
        return single_block_source(index, inner, param, hidden);
    }
    if !linear_param {
        return None;
    }
    let stored = match stem {
        "norm_out.linear" => {
            let name = format!("final_layer.adaLN_modulation.1.{param}");
            return Some(Source::with(name, Fetch::SwapHalves));
        }
        "time_text_embed.timestep_embedder.linear_1" => "time_in.in_layer",
        "time_text_embed.timestep_embedder.linear_2" => "time_in.out_layer",
        "time_text_embed.text_embedder.linear_1" => "vector_in.in_layer",
        "time_text_embed.text_embedder.linear_2" => "vector_in.out_layer",
        "time_text_embed.guidance_embedder.linear_1" => "guidance_in.in_layer",
        "time_text_embed.guidance_embedder.linear_2" => "guidance_in.out_layer",
        "context_embedder" => "txt_in",
        "x_embedder" => "img_in",
        "proj_out" => "final_layer.linear",
        _ => return None,
    };
    Some(Source::whole(format!("{stored}.{param}")))
}

/// `"3.attn.to_q"` -> `(3, "attn.to_q")`.
fn block_index(rest: &str) -> Option<(usize, &str)> {
    let (index, inner) = rest.split_once('.')?;
    Some((index.parse().ok()?, inner))
}

fn double_block_source(i: usize, inner: &str, param: &str) -> Option<Source> {
    let block = format!("double_blocks.{i}");
    if param == "weight" {
        let norm = match inner {
            "attn.norm_q" => Some("img_attn.norm.query_norm"),
            "attn.norm_k" => Some("img_attn.norm.key_norm"),
            "attn.norm_added_q" => Some("txt_attn.norm.query_norm"),
            "attn.norm_added_k" => Some("txt_attn.norm.key_norm"),
            _ => None,
        };
        if let Some(norm) = norm {
            return Some(Source::whole(format!("{block}.{norm}.scale")));
        }
    }
    if !matches!(param, "weight" | "bias") {
        return None;
    }
    let qkv = |stream: &str, index: usize| {
        let fetch = Fetch::Chunk { index, of: 3 };
        Some(Source::with(
            format!("{block}.{stream}_attn.qkv.{param}"),
            fetch,
        ))
    };
    let stored = match inner {
        "attn.to_q" => return qkv("img", 0),
        "attn.to_k" => return qkv("img", 1),
        "attn.to_v" => return qkv("img", 2),
        "attn.add_q_proj" => return qkv("txt", 0),
        "attn.add_k_proj" => return qkv("txt", 1),
        "attn.add_v_proj" => return qkv("txt", 2),
        "norm1.linear" => "img_mod.lin",
        "norm1_context.linear" => "txt_mod.lin",
        "attn.to_out.0" => "img_attn.proj",
        "attn.to_add_out" => "txt_attn.proj",
        "ff.net.0.proj" => "img_mlp.0",
        "ff.net.2" => "img_mlp.2",
        "ff_context.net.0.proj" => "txt_mlp.0",
        "ff_context.net.2" => "txt_mlp.2",
        _ => return None,
    };
    Some(Source::whole(format!("{block}.{stored}.{param}")))
}

fn single_block_source(i: usize, inner: &str, param: &str, hidden: usize) -> Option<Source> {
    let block = format!("single_blocks.{i}");
    if param == "weight" {
        let norm = match inner {
            "attn.norm_q" => Some("norm.query_norm"),
            "attn.norm_k" => Some("norm.key_norm"),
            _ => None,
        };
        if let Some(norm) = norm {
            return Some(Source::whole(format!("{block}.{norm}.scale")));
        }
    }
    if !matches!(param, "weight" | "bias") {
        return None;
    }
    // linear1 stacks q, k, v (hidden rows each) and the MLP input projection (the rest).
    let linear1 = |fetch: Fetch| Some(Source::with(format!("{block}.linear1.{param}"), fetch));
    let stored = match inner {
        "attn.to_q" => {
            return linear1(Fetch::Rows {
                start: 0,
                len: hidden,
            })
        }
        "attn.to_k" => {
            return linear1(Fetch::Rows {
                start: hidden,
                len: hidden,
            })
        }
        "attn.to_v" => {
            return linear1(Fetch::Rows {
                start: 2 * hidden,
                len: hidden,
            })
        }
        "proj_mlp" => return linear1(Fetch::RowsFrom(3 * hidden)),
        "norm.linear" => "modulation.lin",
        "proj_out" => "linear2",
        _ => return None,
    };
    Some(Source::whole(format!("{block}.{stored}.{param}")))
}
