//! Attention written with plain candle ops (the score matrix materialised): the kernel's oracle
//! and the path for devices and dtypes the kernel does not handle.

use candle_core::{DType, Result, Tensor, D};

use super::attention_dims;

/// The same as [`super::scaled_dot_product_attention`] with plain candle ops. Half-precision
/// inputs are computed in f32 and rounded once at the end; f32 and f64 in their own dtype.
pub fn attention_reference(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    head_dim: usize,
) -> Result<Tensor> {
    let dims = attention_dims(q.dims(), k.dims(), v.dims(), heads, head_dim)?;
    let internal = match q.dtype() {
        DType::F16 | DType::BF16 => DType::F32,
        other => other,
    };
    // (B, L, H*D) -> (B, H, L, D)
    let split = |t: &Tensor, len: usize| -> Result<Tensor> {
        t.to_dtype(internal)?
            .reshape((dims.batch, len, heads, head_dim))?
            .transpose(1, 2)?
            .contiguous()
    };
    let scale = 1.0 / (head_dim as f64).sqrt();
    let q4 = split(q, dims.q_len)?;
    let k4 = split(k, dims.kv_len)?;
    let v4 = split(v, dims.kv_len)?;
    let scores = (q4.matmul(&k4.transpose(D::Minus2, D::Minus1)?.contiguous()?)? * scale)?;
    let probs = softmax_last_dim(&scores)?;
    probs
        .matmul(&v4)?
        .transpose(1, 2)?
        .reshape((dims.batch, dims.q_len, dims.width()))?
        .to_dtype(q.dtype())
}

/// Softmax over the last dimension, max-subtracted (candle-core has no softmax of its own).
fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}
