//! GroupNorm written with plain candle tensor ops: the oracle for the fused kernel, and the path
//! used on devices and layouts the kernel does not handle.

use candle_core::{DType, Result, Tensor};

use super::{validate, Activation};

/// The same as [`super::group_norm`] computed with plain candle tensor ops: the oracle.
///
/// Half-precision inputs are computed in f32 and rounded once at the end; f32 and f64 inputs are
/// computed in their own dtype (so an f64 input gives an f64-accurate result).
pub fn group_norm_reference(
    x: &Tensor,
    num_groups: usize,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    activation: Activation,
) -> Result<Tensor> {
    let dims = validate(x, num_groups, weight, bias)?;
    let internal = match x.dtype() {
        DType::F16 | DType::BF16 => DType::F32,
        other => other,
    };
    let grouped =
        x.to_dtype(internal)?
            .reshape((dims.batch, dims.num_groups, dims.elements_per_group()))?;
    // Two passes (mean, then the mean of squared deviations), as torch's biased variance.
    let mean = grouped.mean_keepdim(2)?;
    let centered = grouped.broadcast_sub(&mean)?;
    let variance = centered.sqr()?.mean_keepdim(2)?;
    let std = variance.affine(1.0, eps)?.sqrt()?;
    let normalized = centered.broadcast_div(&std)?.reshape(x.shape())?;

    // Per-channel parameters broadcast as (1, C, 1, ..., 1).
    let mut param_shape = vec![1usize; x.rank()];
    param_shape[1] = dims.channels;
    let weight = weight.to_dtype(internal)?.reshape(param_shape.as_slice())?;
    let bias = bias.to_dtype(internal)?.reshape(param_shape.as_slice())?;
    let affine = normalized.broadcast_mul(&weight)?.broadcast_add(&bias)?;
    let activated = match activation {
        Activation::None => affine,
        Activation::Silu => affine.silu()?,
    };
    activated.to_dtype(x.dtype())
}
