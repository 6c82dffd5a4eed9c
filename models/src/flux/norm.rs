//! The normalisations of FLUX's blocks: LayerNorm without affine (eps 1e-6), the q/k RMSNorm, and
//! diffusers' adaptive `AdaLayerNormZero`, `AdaLayerNormZeroSingle`, `AdaLayerNormContinuous`.
use candle_core::{DType, Result, Tensor, D};
use candle_nn::{Module, VarBuilder};

use crate::nn::{linear, Linear};

/// eps of every LayerNorm and RMSNorm in the FLUX transformer.
pub const NORM_EPS: f64 = 1e-6;

/// Statistics in f32 even for half-precision inputs (as torch's kernels accumulate).
fn upcast(x: &Tensor) -> Result<Tensor> {
    match x.dtype() {
        DType::F16 | DType::BF16 => x.to_dtype(DType::F32),
        _ => Ok(x.clone()),
    }
}

/// `nn.LayerNorm(dim, elementwise_affine=False, eps)` over the last dimension, two-pass
/// (mean, then the variance of the centred values) for accuracy on large activations.
pub fn layer_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    let xf = upcast(x)?;
    let centred = xf.broadcast_sub(&xf.mean_keepdim(D::Minus1)?)?;
    let variance = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let rstd = (variance + eps)?.sqrt()?.recip()?;
    centred.broadcast_mul(&rstd)?.to_dtype(x.dtype())
}

/// `torch.nn.RMSNorm(dim, eps)` with its weight: x * rsqrt(mean(x^2) + eps) * weight.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn new(vb: VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let xf = upcast(x)?;
        let rstd = (xf.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?
            .sqrt()?
            .recip()?;
        let normed = xf.broadcast_mul(&rstd)?.to_dtype(x.dtype())?;
        normed.broadcast_mul(&self.weight)
    }
}

/// norm(x) * (1 + scale) + shift, with (B, D) modulation broadcast over the tokens of (B, L, D).
pub fn modulate(normed: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    normed
        .broadcast_mul(&(scale + 1.0)?.unsqueeze(1)?)?
        .broadcast_add(&shift.unsqueeze(1)?)
}

/// `linear(silu(emb))` split into `n` chunks of `dim` along the features (torch.chunk(n, dim=1)).
fn modulation_chunks(linear: &Linear, emb: &Tensor, n: usize, dim: usize) -> Result<Vec<Tensor>> {
    let projected = linear.forward(&candle_nn::ops::silu(emb)?)?;
    (0..n).map(|i| projected.narrow(1, i * dim, dim)).collect()
}

/// What a double block's `AdaLayerNormZero` returns besides the normalised input.
#[derive(Debug, Clone)]
pub struct ZeroModulation {
    pub gate_msa: Tensor,
    pub shift_mlp: Tensor,
    pub scale_mlp: Tensor,
    pub gate_mlp: Tensor,
}

/// `AdaLayerNormZero(dim)`: `linear` to 6 * dim (shift, scale, gate for attention, then for the MLP).
#[derive(Debug, Clone)]
pub struct AdaLayerNormZero {
    linear: Linear,
    dim: usize,
}

impl AdaLayerNormZero {
    pub fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        Ok(Self {
            linear: linear(dim, 6 * dim, vb.pp("linear"))?,
            dim,
        })
    }

    pub fn forward(&self, x: &Tensor, emb: &Tensor) -> Result<(Tensor, ZeroModulation)> {
        let c = modulation_chunks(&self.linear, emb, 6, self.dim)?;
        let normed = modulate(&layer_norm(x, NORM_EPS)?, &c[0], &c[1])?;
        Ok((
            normed,
            ZeroModulation {
                gate_msa: c[2].clone(),
                shift_mlp: c[3].clone(),
                scale_mlp: c[4].clone(),
                gate_mlp: c[5].clone(),
            },
        ))
    }
}

/// `AdaLayerNormZeroSingle(dim)`: `linear` to 3 * dim (shift, scale, gate).
#[derive(Debug, Clone)]
pub struct AdaLayerNormZeroSingle {
    linear: Linear,
    dim: usize,
}

impl AdaLayerNormZeroSingle {
    pub fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        Ok(Self {
            linear: linear(dim, 3 * dim, vb.pp("linear"))?,
            dim,
        })
    }

    /// Returns the modulated input and the gate.
    pub fn forward(&self, x: &Tensor, emb: &Tensor) -> Result<(Tensor, Tensor)> {
        let c = modulation_chunks(&self.linear, emb, 3, self.dim)?;
        let normed = modulate(&layer_norm(x, NORM_EPS)?, &c[0], &c[1])?;
        Ok((normed, c[2].clone()))
    }
}

/// `AdaLayerNormContinuous(dim, dim, elementwise_affine=False, eps=1e-6)`, the output norm.
/// Its chunks are (scale, shift), the reverse of the AdaLayerNormZero order.
#[derive(Debug, Clone)]
pub struct AdaLayerNormContinuous {
    linear: Linear,
    dim: usize,
}

impl AdaLayerNormContinuous {
    pub fn new(vb: VarBuilder, dim: usize, conditioning_dim: usize) -> Result<Self> {
        Ok(Self {
            linear: linear(conditioning_dim, 2 * dim, vb.pp("linear"))?,
            dim,
        })
    }

    pub fn forward(&self, x: &Tensor, emb: &Tensor) -> Result<Tensor> {
        let c = modulation_chunks(&self.linear, emb, 2, self.dim)?;
        let (scale, shift) = (&c[0], &c[1]);
        modulate(&layer_norm(x, NORM_EPS)?, shift, scale)
    }
}
