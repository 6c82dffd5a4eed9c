//! Flash attention (feature `flash-attn`, candle-flash-attn's CUDA kernels for sm_80 and newer)
//! for [`super::attention::scaled_dot_product_attention`]: f16/bf16 tensors on a CUDA device.
//! It never materialises the (tokens x tokens) score matrix, which is what bounds the attention
//! memory at large resolutions.

use candle_core::{DType, Result, Tensor};

/// The largest head size candle-flash-attn has kernels for; sizes must be multiples of 8.
const MAX_HEAD_DIM: usize = 512;

/// Attention computed by flash attention when the inputs suit it, `None` otherwise (the caller
/// then computes it with plain ops). Shapes as the caller's: (batch, tokens, heads * head_dim).
pub(crate) fn flash_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    head_dim: usize,
) -> Result<Option<Tensor>> {
    if !suits_flash_attention(q, k, v, head_dim) {
        return Ok(None);
    }
    let (batch, q_len, _) = q.dims3()?;
    let kv_len = k.dim(1)?;
    // (batch, tokens, heads, head_dim) is the kernel's layout: a reshape, no transpose.
    let q = q.reshape((batch, q_len, heads, head_dim))?;
    let k = k.reshape((batch, kv_len, heads, head_dim))?;
    let v = v.reshape((batch, kv_len, heads, head_dim))?;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let out = candle_flash_attn::flash_attn(&q, &k, &v, scale, false)?;
    Ok(Some(out.reshape((batch, q_len, heads * head_dim))?))
}

fn suits_flash_attention(q: &Tensor, k: &Tensor, v: &Tensor, head_dim: usize) -> bool {
    let half = matches!(q.dtype(), DType::F16 | DType::BF16);
    let same_dtype = k.dtype() == q.dtype() && v.dtype() == q.dtype();
    let on_cuda = [q, k, v].iter().all(|t| t.device().is_cuda());
    let head_dim_ok = head_dim % 8 == 0 && head_dim <= MAX_HEAD_DIM;
    half && same_dtype && on_cuda && head_dim_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Flash attention in f16 against the plain ops in f32 on the same device. Runs only where a
    /// CUDA device is present; elsewhere it says so and passes.
    #[test]
    fn flash_attention_matches_plain_ops() -> Result<()> {
        let Ok(device) = Device::new_cuda(0) else {
            eprintln!("skipped: no CUDA device");
            return Ok(());
        };
        // SD-like shapes: 8 heads of 40 (SD 1.5) and 1 head of 512 (the VAE mid-block).
        for (batch, q_len, kv_len, heads, head_dim) in [(2, 77, 77, 8, 40), (1, 256, 256, 1, 512)] {
            let width = heads * head_dim;
            let q = Tensor::randn(0f32, 1.0, (batch, q_len, width), &device)?;
            let k = Tensor::randn(0f32, 1.0, (batch, kv_len, width), &device)?;
            let v = Tensor::randn(0f32, 1.0, (batch, kv_len, width), &device)?;
            let plain =
                super::super::attention::scaled_dot_product_attention(&q, &k, &v, heads, head_dim)?;
            let half = |t: &Tensor| t.to_dtype(DType::F16);
            let flash = flash_attention(&half(&q)?, &half(&k)?, &half(&v)?, heads, head_dim)?
                .expect("f16 CUDA inputs take flash attention");
            let diff = (flash.to_dtype(DType::F32)? - &plain)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            // Outputs are convex combinations of v (|v| < ~5): f16 inputs and output round at
            // 2^-11 relative, accumulation is f32, so 1e-2 absolute bounds the difference.
            assert!(
                diff < 1e-2,
                "{batch}x{q_len}x{heads}x{head_dim}: max diff {diff}"
            );
        }
        Ok(())
    }
}
