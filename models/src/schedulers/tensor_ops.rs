//! Tensor-by-scalar arithmetic with torch's rounding: a float32 scalar times a tensor is one
//! float32 multiply (candle's `affine` with `add = 0`), and division divides (candle's `x / f64`
//! would multiply by a rounded reciprocal instead).
use candle_core::{DType, Result, Tensor};

/// `t * s`.
pub(crate) fn mul(t: &Tensor, s: f32) -> Result<Tensor> {
    t.affine(s as f64, 0.0)
}

/// `t / s`.
pub(crate) fn div(t: &Tensor, s: f32) -> Result<Tensor> {
    let scalar = Tensor::new(s, t.device())?.to_dtype(t.dtype())?;
    t.broadcast_div(&scalar)
}

/// `t` in float32, where diffusers does the update arithmetic.
pub(crate) fn to_f32(t: &Tensor) -> Result<Tensor> {
    t.to_dtype(DType::F32)
}
