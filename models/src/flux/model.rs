//! diffusers' `FluxTransformer2DModel`: embed the packed latents and the T5 sequence, run the
//! double-stream then the single-stream blocks with RoPE over [text, image] positions, and project
//! the image tokens to the velocity.
use candle_core::{DType, Result, Tensor};
use candle_nn::{Module, VarBuilder};

use crate::nn::{linear, Linear};

use super::blocks::{FluxSingleTransformerBlock, FluxTransformerBlock};
use super::config::FluxTransformerConfig;
use super::embeddings::TimeTextEmbedding;
use super::norm::AdaLayerNormContinuous;
use super::rope::FluxPosEmbed;
use crate::error::ModelError;

/// The pipeline passes timesteps and guidance divided by 1000; the model scales them back.
const TIME_SCALE: f64 = 1000.0;

#[derive(Debug, Clone)]
pub struct FluxTransformer2DModel {
    x_embedder: Linear,
    context_embedder: Linear,
    time_text_embed: TimeTextEmbedding,
    pos_embed: FluxPosEmbed,
    transformer_blocks: Vec<FluxTransformerBlock>,
    single_transformer_blocks: Vec<FluxSingleTransformerBlock>,
    norm_out: AdaLayerNormContinuous,
    proj_out: Linear,
    dtype: DType,
}

/// Ids as (L, 3); diffusers still accepts (1, L, 3) and takes the first.
fn ids_2d(ids: &Tensor, what: &str) -> Result<Tensor> {
    match ids.rank() {
        2 => Ok(ids.clone()),
        3 => ids.get(0),
        _ => candle_core::bail!("FLUX {what} must be (L, 3), got {:?}", ids.shape()),
    }
}

impl FluxTransformer2DModel {
    /// Weights under diffusers' names (`x_embedder`, `transformer_blocks.{i}.attn.to_q`, ...), in the
    /// VarBuilder's dtype, which is also the compute dtype.
    pub fn new(vb: VarBuilder, config: &FluxTransformerConfig) -> crate::Result<Self> {
        config.validate().map_err(ModelError::Unsupported)?;
        let dim = config.inner_dim();
        let heads = config.num_attention_heads;
        let head_dim = config.attention_head_dim;
        let transformer_blocks = (0..config.num_layers)
            .map(|i| {
                FluxTransformerBlock::new(
                    vb.pp(format!("transformer_blocks.{i}")),
                    dim,
                    heads,
                    head_dim,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let single_transformer_blocks = (0..config.num_single_layers)
            .map(|i| {
                FluxSingleTransformerBlock::new(
                    vb.pp(format!("single_transformer_blocks.{i}")),
                    dim,
                    heads,
                    head_dim,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let out_dim = config.patch_size * config.patch_size * config.out_channels();
        Ok(Self {
            x_embedder: linear(config.in_channels, dim, vb.pp("x_embedder"))?,
            context_embedder: linear(config.joint_attention_dim, dim, vb.pp("context_embedder"))?,
            time_text_embed: TimeTextEmbedding::new(
                vb.pp("time_text_embed"),
                dim,
                config.pooled_projection_dim,
                config.guidance_embeds,
            )?,
            pos_embed: FluxPosEmbed::new(&config.axes_dims_rope),
            transformer_blocks,
            single_transformer_blocks,
            norm_out: AdaLayerNormContinuous::new(vb.pp("norm_out"), dim, dim)?,
            proj_out: linear(dim, out_dim, vb.pp("proj_out"))?,
            dtype: vb.dtype(),
        })
    }

    /// The compute dtype (that of the weights).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Returns the velocity prediction (B, L_img, out_channels) in the model's dtype.
    /// `img`: packed latents (B, L_img, in_channels); `txt`: T5 states (B, L_txt, joint_dim);
    /// `pooled`: CLIP pooled (B, pooled_dim); `timestep` and `guidance`: (B,) or (1,), what the
    /// pipeline passes (t / 1000 and the guidance scale); ids: (L, 3) positions.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        img: &Tensor,
        txt: &Tensor,
        pooled: &Tensor,
        timestep: &Tensor,
        img_ids: &Tensor,
        txt_ids: &Tensor,
        guidance: Option<&Tensor>,
    ) -> Result<Tensor> {
        // Contiguous inputs: candle's batched matmul misreads a non-contiguous left operand.
        let img = self
            .x_embedder
            .forward(&img.to_dtype(self.dtype)?.contiguous()?)?;
        // `timestep.to(hidden_states.dtype) * 1000`, in that order.
        let timestep = (timestep.to_dtype(self.dtype)? * TIME_SCALE)?;
        let guidance = match guidance {
            Some(g) => Some((g.to_dtype(self.dtype)? * TIME_SCALE)?),
            None => None,
        };
        let temb = self.time_text_embed.forward(
            &timestep,
            guidance.as_ref(),
            &pooled.to_dtype(self.dtype)?,
        )?;
        let txt = self
            .context_embedder
            .forward(&txt.to_dtype(self.dtype)?.contiguous()?)?;

        let ids = Tensor::cat(
            &[
                &ids_2d(txt_ids, "txt_ids")?.to_dtype(DType::F32)?,
                &ids_2d(img_ids, "img_ids")?.to_dtype(DType::F32)?,
            ],
            0,
        )?;
        let (txt_len, img_len) = (txt.dim(1)?, img.dim(1)?);
        if ids.dim(0)? != txt_len + img_len {
            candle_core::bail!(
                "FLUX ids cover {} positions, the text and image sequences have {txt_len} + {img_len}",
                ids.dim(0)?
            );
        }
        let rope = self.pos_embed.forward(&ids)?.to_device(img.device())?;

        let (mut img, mut txt) = (img, txt);
        for block in &self.transformer_blocks {
            (img, txt) = block.forward(&img, &txt, &temb, &rope)?;
        }
        let mut joint = Tensor::cat(&[&txt, &img], 1)?;
        for block in &self.single_transformer_blocks {
            joint = block.forward(&joint, &temb, &rope)?;
        }
        let img = joint.narrow(1, txt_len, img_len)?.contiguous()?;
        let img = self.norm_out.forward(&img, &temb)?;
        self.proj_out.forward(&img)
    }
}
