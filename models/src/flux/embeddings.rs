//! diffusers' `CombinedTimestepTextProjEmbeddings` / `CombinedTimestepGuidanceTextProjEmbeddings`:
//! the conditioning vector `temb` from the timestep, the optional guidance and the pooled text.
use candle_core::{DType, Result, Tensor};
use candle_nn::{Module, VarBuilder};

use crate::nn::{linear, Linear};

use crate::nn::{timestep_embedding, Activation, TimestepEmbedding};

/// `Timesteps(num_channels=256, flip_sin_to_cos=True, downscale_freq_shift=0)`.
const TIME_PROJ_CHANNELS: usize = 256;

/// `PixArtAlphaTextProjection(in, hidden, act_fn="silu")`: linear_1, SiLU, linear_2.
#[derive(Debug, Clone)]
pub struct TextProjection {
    linear_1: Linear,
    linear_2: Linear,
}

impl TextProjection {
    pub fn new(vb: VarBuilder, in_dim: usize, hidden: usize) -> Result<Self> {
        Ok(Self {
            linear_1: linear(in_dim, hidden, vb.pp("linear_1"))?,
            linear_2: linear(hidden, hidden, vb.pp("linear_2"))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let hidden = candle_nn::ops::silu(&self.linear_1.forward(x)?)?;
        self.linear_2.forward(&hidden)
    }
}

/// `time_text_embed`: timestep_embedder(proj(t)) [+ guidance_embedder(proj(g))] + text_embedder(pooled).
#[derive(Debug, Clone)]
pub struct TimeTextEmbedding {
    timestep_embedder: TimestepEmbedding,
    guidance_embedder: Option<TimestepEmbedding>,
    text_embedder: TextProjection,
}

/// The sinusoidal projection of already-scaled timesteps (B,): diffusers takes `.float()` of
/// them, so it is computed in f32 whatever the model's dtype, then cast to `dtype`.
fn time_proj(timesteps: &Tensor, dtype: DType) -> Result<Tensor> {
    let values = timesteps
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    timestep_embedding(&values, TIME_PROJ_CHANNELS, true, 0.0, timesteps.device())?.to_dtype(dtype)
}

impl TimeTextEmbedding {
    pub fn new(
        vb: VarBuilder,
        embedding_dim: usize,
        pooled_projection_dim: usize,
        guidance_embeds: bool,
    ) -> Result<Self> {
        let mlp = |name: &str| {
            TimestepEmbedding::new(
                vb.pp(name),
                TIME_PROJ_CHANNELS,
                embedding_dim,
                Activation::Silu,
                None,
                None,
            )
        };
        let guidance_embedder = if guidance_embeds {
            Some(mlp("guidance_embedder")?)
        } else {
            None
        };
        Ok(Self {
            timestep_embedder: mlp("timestep_embedder")?,
            guidance_embedder,
            text_embedder: TextProjection::new(
                vb.pp("text_embedder"),
                pooled_projection_dim,
                embedding_dim,
            )?,
        })
    }

    /// `timestep` and `guidance` are already multiplied by 1000 (B,); `pooled`: (B, pooled_dim).
    /// A model with a guidance embedder needs `guidance`, one without refuses it (as diffusers,
    /// whose embedding classes take a fixed set of arguments).
    pub fn forward(
        &self,
        timestep: &Tensor,
        guidance: Option<&Tensor>,
        pooled: &Tensor,
    ) -> Result<Tensor> {
        let dtype = pooled.dtype();
        let mut emb = self
            .timestep_embedder
            .forward(&time_proj(timestep, dtype)?, None)?;
        match (&self.guidance_embedder, guidance) {
            (Some(embedder), Some(g)) => {
                let g = embedder.forward(&time_proj(g, dtype)?, None)?;
                emb = emb.broadcast_add(&g)?;
            }
            (None, None) => {}
            (Some(_), None) => {
                candle_core::bail!("this FLUX transformer has a guidance embedding: pass guidance")
            }
            (None, Some(_)) => candle_core::bail!(
                "this FLUX transformer has no guidance embedding (guidance_embeds = false): pass no guidance"
            ),
        }
        emb.broadcast_add(&self.text_embedder.forward(pooled)?)
    }
}
