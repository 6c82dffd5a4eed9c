//! diffusers' `Transformer2DModel` over continuous inputs, with `BasicTransformerBlock`s
//! (layer norms eps 1e-5, self-attention, cross-attention, GEGLU feed-forward).
use candle_core::{Result, Tensor};
use candle_nn::{LayerNorm, Module, VarBuilder};

use crate::nn::{self, conv2d, Conv2d, Linear};

use crate::nn::attention::AttentionConfig;
use crate::nn::norm::layer_norm;
use crate::nn::{group_norm, Attention, FeedForward, GroupNorm};

const LAYER_NORM_EPS: f64 = 1e-5;
/// Transformer2DModel's GroupNorm eps is fixed, whatever the UNet's norm_eps.
const GROUP_NORM_EPS: f64 = 1e-6;

#[derive(Debug, Clone)]
struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
    only_cross_attention: bool,
}

impl BasicTransformerBlock {
    fn new(
        vb: VarBuilder,
        dim: usize,
        heads: usize,
        head_dim: usize,
        cross_attention_dim: usize,
        only_cross_attention: bool,
    ) -> Result<Self> {
        let attn = |name: &str, context_dim: Option<usize>| {
            Attention::new(
                vb.pp(name),
                AttentionConfig {
                    query_dim: dim,
                    context_dim,
                    heads,
                    head_dim,
                    qkv_bias: false,
                },
            )
        };
        Ok(Self {
            norm1: layer_norm(vb.pp("norm1"), dim, LAYER_NORM_EPS)?,
            attn1: attn("attn1", only_cross_attention.then_some(cross_attention_dim))?,
            norm2: layer_norm(vb.pp("norm2"), dim, LAYER_NORM_EPS)?,
            attn2: attn("attn2", Some(cross_attention_dim))?,
            norm3: layer_norm(vb.pp("norm3"), dim, LAYER_NORM_EPS)?,
            ff: FeedForward::new(vb.pp("ff"), dim, dim * 4)?,
            only_cross_attention,
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let self_context = self.only_cross_attention.then_some(context);
        let x = (self.attn1.forward(&self.norm1.forward(x)?, self_context)? + x)?;
        let x = (self
            .attn2
            .forward(&self.norm2.forward(&x)?, Some(context))?
            + x)?;
        self.ff.forward(&self.norm3.forward(&x)?)? + x
    }
}

/// proj_in / proj_out: Linear on tokens (`use_linear_projection`) or 1x1 conv on the feature map.
#[derive(Debug, Clone)]
enum Projection {
    Linear(Linear),
    Conv(Conv2d),
}

impl Projection {
    fn new(vb: VarBuilder, in_dim: usize, out_dim: usize, linear: bool) -> Result<Self> {
        Ok(if linear {
            Self::Linear(nn::linear(in_dim, out_dim, vb)?)
        } else {
            Self::Conv(conv2d(in_dim, out_dim, 1, Default::default(), vb)?)
        })
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Transformer2DModel {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Projection,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct TransformerConfig {
    pub channels: usize,
    pub heads: usize,
    pub depth: usize,
    pub cross_attention_dim: usize,
    pub groups: usize,
    pub use_linear_projection: bool,
    pub only_cross_attention: bool,
}

impl Transformer2DModel {
    pub fn new(vb: VarBuilder, cfg: TransformerConfig) -> Result<Self> {
        let head_dim = cfg.channels / cfg.heads;
        let inner_dim = cfg.heads * head_dim;
        let linear = cfg.use_linear_projection;
        let blocks = (0..cfg.depth)
            .map(|i| {
                BasicTransformerBlock::new(
                    vb.pp(format!("transformer_blocks.{i}")),
                    inner_dim,
                    cfg.heads,
                    head_dim,
                    cfg.cross_attention_dim,
                    cfg.only_cross_attention,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            norm: group_norm(vb.pp("norm"), cfg.groups, cfg.channels, GROUP_NORM_EPS)?,
            proj_in: Projection::new(vb.pp("proj_in"), cfg.channels, inner_dim, linear)?,
            blocks,
            proj_out: Projection::new(vb.pp("proj_out"), inner_dim, cfg.channels, linear)?,
        })
    }

    /// `x`: (batch, channels, height, width); `context`: (batch, tokens, cross_attention_dim).
    pub fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (b, _, h, w) = x.dims4()?;
        let normed = self.norm.forward(x)?;
        // (b, c, h, w) -> tokens (b, h*w, c), projecting before or after as the weights require.
        let to_tokens = |t: &Tensor| -> Result<Tensor> {
            let c = t.dim(1)?;
            t.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()
        };
        let mut tokens = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(&conv.forward(&normed)?)?,
            Projection::Linear(linear) => linear.forward(&to_tokens(&normed)?)?,
        };
        for block in &self.blocks {
            tokens = block.forward(&tokens, context)?;
        }
        let to_map = |t: &Tensor| -> Result<Tensor> {
            let c = t.dim(2)?;
            t.transpose(1, 2)?.reshape((b, c, h, w))
        };
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(&to_map(&tokens)?)?,
            Projection::Linear(linear) => to_map(&linear.forward(&tokens)?)?,
        };
        out + x
    }
}
