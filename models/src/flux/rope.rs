//! diffusers' `FluxPosEmbed` (per-axis 1D rotary embeddings, `repeat_interleave_real=True`) and
//! `apply_rotary_emb(use_real=True, use_real_unbind_dim=-1)`.
use candle_core::{DType, Device, Result, Tensor, D};

/// FLUX's RoPE base.
const THETA: f64 = 10000.0;

#[derive(Debug, Clone)]
pub struct FluxPosEmbed {
    axes_dim: Vec<usize>,
}

/// Rotary tables for a sequence: `cos` and `sin`, each (L, head_dim) f32.
#[derive(Debug, Clone)]
pub struct RotaryEmbedding {
    pub cos: Tensor,
    pub sin: Tensor,
}

impl FluxPosEmbed {
    pub fn new(axes_dim: &[usize]) -> Self {
        Self {
            axes_dim: axes_dim.to_vec(),
        }
    }

    /// `ids`: (L, axes) position ids, any float dtype. diffusers takes `ids.float()`, builds the
    /// angles pos * theta^(-2j/dim) in float64 (on CPU and CUDA), takes cos/sin there and casts
    /// them to float32, each value repeated twice (interleaved); axes are concatenated.
    pub fn forward(&self, ids: &Tensor) -> Result<RotaryEmbedding> {
        let (len, n_axes) = ids.dims2()?;
        if n_axes != self.axes_dim.len() {
            candle_core::bail!(
                "FLUX position ids have {n_axes} columns, the model's axes_dims_rope has {}",
                self.axes_dim.len()
            );
        }
        let positions = ids.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let head_dim: usize = self.axes_dim.iter().sum();
        let mut cos = Vec::with_capacity(len * head_dim);
        let mut sin = Vec::with_capacity(len * head_dim);
        let inv_freqs: Vec<Vec<f64>> = self.axes_dim.iter().map(|&d| inv_freqs(d)).collect();
        for row in &positions {
            for (pos, freqs) in row.iter().zip(&inv_freqs) {
                for freq in freqs {
                    let angle = f64::from(*pos) * freq;
                    let (s, c) = (angle.sin() as f32, angle.cos() as f32);
                    cos.extend([c, c]);
                    sin.extend([s, s]);
                }
            }
        }
        let device = ids.device();
        Ok(RotaryEmbedding {
            cos: Tensor::from_vec(cos, (len, head_dim), device)?,
            sin: Tensor::from_vec(sin, (len, head_dim), device)?,
        })
    }
}

/// 1 / theta^(arange(0, dim, 2) / dim), in float64 as diffusers computes it for FLUX.
fn inv_freqs(dim: usize) -> Vec<f64> {
    (0..dim)
        .step_by(2)
        .map(|i| 1.0 / THETA.powf(i as f64 / dim as f64))
        .collect()
}

impl RotaryEmbedding {
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(Self {
            cos: self.cos.to_device(device)?,
            sin: self.sin.to_device(device)?,
        })
    }

    /// Rotates `x` (B, L, heads, head_dim): pairs (x[2k], x[2k+1]) become
    /// (x[2k] cos - x[2k+1] sin, x[2k+1] cos + x[2k] sin), computed in f32 and cast back.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let (batch, len, heads, head_dim) = x.dims4()?;
        let dtype = x.dtype();
        let xf = x.to_dtype(DType::F32)?;
        let pairs = xf.reshape((batch, len, heads, head_dim / 2, 2))?;
        let real = pairs.narrow(D::Minus1, 0, 1)?;
        let imag = pairs.narrow(D::Minus1, 1, 1)?;
        let rotated = Tensor::cat(&[&imag.neg()?, &real], D::Minus1)?
            .reshape((batch, len, heads, head_dim))?;
        let cos = self.cos.reshape((1, len, 1, head_dim))?;
        let sin = self.sin.reshape((1, len, 1, head_dim))?;
        let out = (xf.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?)?;
        out.to_dtype(dtype)
    }
}
