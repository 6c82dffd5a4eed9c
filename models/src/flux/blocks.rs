//! diffusers' `FluxTransformerBlock` (double stream) and `FluxSingleTransformerBlock`.
use candle_core::{DType, Result, Tensor, D};
use candle_nn::{Module, VarBuilder};

use crate::nn::{linear, Linear};

use super::attention::{JointAttention, SelfAttention};
use super::norm::{layer_norm, modulate, AdaLayerNormZero, AdaLayerNormZeroSingle, NORM_EPS};
use super::rope::RotaryEmbedding;

/// Both blocks widen their MLP 4x (`mlp_ratio` / FeedForward's `mult`).
const MLP_RATIO: usize = 4;

/// diffusers clips float16 hidden states to the finite range after each block.
fn clip_f16(x: Tensor) -> Result<Tensor> {
    if x.dtype() == DType::F16 {
        x.clamp(-65504f32, 65504f32)
    } else {
        Ok(x)
    }
}

/// `FeedForward(dim, dim_out=dim, activation_fn="gelu-approximate")`: `net.0.proj`, tanh-gelu, `net.2`.
#[derive(Debug, Clone)]
struct GeluFeedForward {
    proj: Linear,
    out: Linear,
}

impl GeluFeedForward {
    fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        Ok(Self {
            proj: linear(dim, dim * MLP_RATIO, vb.pp("net.0.proj"))?,
            out: linear(dim * MLP_RATIO, dim, vb.pp("net.2"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.out
            .forward(&imago_kernels::gelu_tanh(&self.proj.forward(x)?)?)
    }
}

/// x + gate * y, with the (B, D) gate broadcast over the tokens.
fn gated_residual(x: &Tensor, gate: &Tensor, y: &Tensor) -> Result<Tensor> {
    x + gate.unsqueeze(1)?.broadcast_mul(y)?
}

/// One double-stream block: separate weights for the image and text streams, joint attention.
#[derive(Debug, Clone)]
pub struct FluxTransformerBlock {
    norm1: AdaLayerNormZero,
    norm1_context: AdaLayerNormZero,
    attn: JointAttention,
    ff: GeluFeedForward,
    ff_context: GeluFeedForward,
}

impl FluxTransformerBlock {
    pub fn new(vb: VarBuilder, dim: usize, heads: usize, head_dim: usize) -> Result<Self> {
        Ok(Self {
            norm1: AdaLayerNormZero::new(vb.pp("norm1"), dim)?,
            norm1_context: AdaLayerNormZero::new(vb.pp("norm1_context"), dim)?,
            attn: JointAttention::new(vb.pp("attn"), dim, heads, head_dim)?,
            ff: GeluFeedForward::new(vb.pp("ff"), dim)?,
            ff_context: GeluFeedForward::new(vb.pp("ff_context"), dim)?,
        })
    }

    /// Returns the new (image, text) hidden states.
    pub fn forward(
        &self,
        img: &Tensor,
        txt: &Tensor,
        temb: &Tensor,
        rope: &RotaryEmbedding,
    ) -> Result<(Tensor, Tensor)> {
        let (norm_img, m) = self.norm1.forward(img, temb)?;
        let (norm_txt, c) = self.norm1_context.forward(txt, temb)?;
        let (img_attn, txt_attn) = self.attn.forward(&norm_img, &norm_txt, rope)?;

        let img = gated_residual(img, &m.gate_msa, &img_attn)?;
        let norm_img = modulate(&layer_norm(&img, NORM_EPS)?, &m.shift_mlp, &m.scale_mlp)?;
        let img = gated_residual(&img, &m.gate_mlp, &self.ff.forward(&norm_img)?)?;

        let txt = gated_residual(txt, &c.gate_msa, &txt_attn)?;
        let norm_txt = modulate(&layer_norm(&txt, NORM_EPS)?, &c.shift_mlp, &c.scale_mlp)?;
        let txt = gated_residual(&txt, &c.gate_mlp, &self.ff_context.forward(&norm_txt)?)?;
        Ok((img, clip_f16(txt)?))
    }
}

/// One single-stream block over the joint [text, image] sequence: attention and a tanh-gelu MLP
/// in parallel from the same modulated input, `proj_out` over their concatenation.
#[derive(Debug, Clone)]
pub struct FluxSingleTransformerBlock {
    norm: AdaLayerNormZeroSingle,
    proj_mlp: Linear,
    attn: SelfAttention,
    proj_out: Linear,
}

impl FluxSingleTransformerBlock {
    pub fn new(vb: VarBuilder, dim: usize, heads: usize, head_dim: usize) -> Result<Self> {
        let mlp_dim = dim * MLP_RATIO;
        Ok(Self {
            norm: AdaLayerNormZeroSingle::new(vb.pp("norm"), dim)?,
            proj_mlp: linear(dim, mlp_dim, vb.pp("proj_mlp"))?,
            attn: SelfAttention::new(vb.pp("attn"), dim, heads, head_dim)?,
            proj_out: linear(dim + mlp_dim, dim, vb.pp("proj_out"))?,
        })
    }

    /// `x`: the joint (B, L_txt + L_img, dim) sequence. diffusers concatenates text and image
    /// before and splits them after every single block; doing it once around all of them is the
    /// same computation.
    pub fn forward(&self, x: &Tensor, temb: &Tensor, rope: &RotaryEmbedding) -> Result<Tensor> {
        let (normed, gate) = self.norm.forward(x, temb)?;
        let mlp = imago_kernels::gelu_tanh(&self.proj_mlp.forward(&normed)?)?;
        let attn = self.attn.forward(&normed, rope)?;
        let mixed = self
            .proj_out
            .forward(&Tensor::cat(&[&attn, &mlp], D::Minus1)?)?;
        clip_f16(gated_residual(x, &gate, &mixed)?)
    }
}
