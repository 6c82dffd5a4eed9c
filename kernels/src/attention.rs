//! Multi-head scaled dot-product attention, softmax(q k^T * scale) v, on tensors laid out as
//! (batch, tokens, heads * head_dim) (the layout the models' projections produce).
//!
//! `scaled_dot_product_attention` runs a flash-style CPU kernel ([`AttentionOp`]) for CPU
//! f32/f16/bf16 inputs: it walks tiles of queries against tiles of keys with an online softmax,
//! so the (q_len, kv_len) score matrix is never stored. Everything else (CUDA, Metal, f64,
//! tensors tracked for backprop) takes [`attention_reference`], plain candle ops.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod op;
mod pack;
mod portable;
mod reference;
mod tile;

use candle_core::{bail, DType, Result, Tensor};

pub use op::AttentionOp;
pub use reference::attention_reference;

use crate::Simd;

/// The sizes of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AttentionDims {
    pub batch: usize,
    pub q_len: usize,
    pub kv_len: usize,
    pub heads: usize,
    pub head_dim: usize,
}

impl AttentionDims {
    /// heads * head_dim: the length of one token's row.
    pub fn width(&self) -> usize {
        self.heads * self.head_dim
    }
}

/// Checks q (B, Lq, H*D), k and v (B, Lk, H*D) against heads and head_dim.
pub(crate) fn attention_dims(
    q: &[usize],
    k: &[usize],
    v: &[usize],
    heads: usize,
    head_dim: usize,
) -> Result<AttentionDims> {
    if heads == 0 || head_dim == 0 {
        bail!("attention: heads ({heads}) and head_dim ({head_dim}) must be at least 1");
    }
    let width = heads * head_dim;
    let (&[batch, q_len, q_width], &[kb, kv_len, k_width]) = (q, k) else {
        bail!("attention: q and k must be (batch, tokens, heads * head_dim), got {q:?} and {k:?}");
    };
    if q_width != width || k_width != width || kb != batch {
        bail!(
            "attention: q {q:?} and k {k:?} must be (batch, tokens, {heads} * {head_dim}) with the same batch"
        );
    }
    if v != k {
        bail!("attention: v must have k's shape {k:?}, got {v:?}");
    }
    Ok(AttentionDims {
        batch,
        q_len,
        kv_len,
        heads,
        head_dim,
    })
}

/// softmax(q k^T / sqrt(head_dim)) v for each of `heads` heads. q is (batch, q_len, heads *
/// head_dim), k and v are (batch, kv_len, heads * head_dim); the output has q's shape and dtype.
///
/// CPU f32/f16/bf16 inputs of one dtype take the fused kernel on the widest SIMD path this CPU
/// has ([`Simd::detected`]); its result for one sample does not depend on the batch size or the
/// thread count. Anything else takes [`attention_reference`].
pub fn scaled_dot_product_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    head_dim: usize,
) -> Result<Tensor> {
    let dims = attention_dims(q.dims(), k.dims(), v.dims(), heads, head_dim)?;
    if !takes_fast_path(q, k, v, dims) {
        return attention_reference(q, k, v, heads, head_dim);
    }
    let op = AttentionOp::new(heads, head_dim, Simd::detected());
    q.contiguous()?
        .apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, &op)
}

fn takes_fast_path(q: &Tensor, k: &Tensor, v: &Tensor, dims: AttentionDims) -> bool {
    let all_cpu = [q, k, v].iter().all(|t| t.device().is_cpu());
    // The custom op has no backward pass: keep autograd working through the reference ops.
    let tracked = [q, k, v].iter().any(|t| t.track_op());
    let dtype = q.dtype();
    let kernel_dtype = matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
        && k.dtype() == dtype
        && v.dtype() == dtype;
    // Softmax over no keys is undefined (NaN in torch); the reference ops say what it gives.
    all_cpu && !tracked && kernel_dtype && dims.kv_len > 0
}
