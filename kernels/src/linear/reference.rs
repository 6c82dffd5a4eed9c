//! candle's matmul plus a broadcast bias: the oracle for [`super::LinearKernel`] and the path
//! for everything the kernel does not take.

use candle_core::{Result, Tensor};

/// x (..., in) · weightᵀ (weight (out, in)) + bias (out).
pub fn linear_reference(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let y = x.broadcast_matmul(&weight.t()?)?;
    match bias {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}
