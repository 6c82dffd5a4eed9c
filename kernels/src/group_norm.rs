//! GroupNorm over (N, C, *) tensors, as torch.nn.functional.group_norm computes it (biased
//! variance, eps inside the square root), with an optional SiLU fused after the affine step.
//!
//! `group_norm` runs a fused kernel ([`GroupNormOp`]) for contiguous f32/f16/bf16 inputs on the
//! CPU, and on CUDA with the `cuda` feature; it falls back to [`group_norm_reference`] (plain
//! candle tensor ops) everywhere else.

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
mod reference;
mod rows;

use candle_core::{bail, DType, Result, Tensor};

pub use cpu::GroupNormOp;
pub use reference::group_norm_reference;
pub use rows::GroupNormRows;

/// Activation applied element-wise after the affine step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    None,
    /// x * sigmoid(x), as torch.nn.functional.silu.
    Silu,
}

/// The sizes GroupNorm works with, derived from an (N, C, *) shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GroupNormDims {
    pub batch: usize,
    pub channels: usize,
    pub num_groups: usize,
    /// Product of the dimensions after C (1 for a rank-2 input).
    pub spatial: usize,
}

impl GroupNormDims {
    pub fn channels_per_group(&self) -> usize {
        self.channels / self.num_groups
    }

    pub fn elements_per_group(&self) -> usize {
        self.channels_per_group() * self.spatial
    }
}

/// Checks the input's shape against num_groups; shared by every path so all give the same errors.
pub(crate) fn input_dims(dims: &[usize], num_groups: usize) -> Result<GroupNormDims> {
    if dims.len() < 2 {
        bail!("group_norm: input must have rank >= 2 (N, C, *), got shape {dims:?}");
    }
    let (batch, channels) = (dims[0], dims[1]);
    if num_groups == 0 {
        bail!("group_norm: num_groups must be at least 1, got 0");
    }
    if channels % num_groups != 0 {
        bail!("group_norm: {channels} channels are not divisible by {num_groups} groups");
    }
    Ok(GroupNormDims {
        batch,
        channels,
        num_groups,
        spatial: dims[2..].iter().product(),
    })
}

/// Checks that a per-channel parameter (weight or bias) has shape [channels].
pub(crate) fn check_channel_param(name: &str, dims: &[usize], channels: usize) -> Result<()> {
    if dims != [channels] {
        bail!("group_norm: {name} must have shape [{channels}] (one value per channel), got shape {dims:?}");
    }
    Ok(())
}

/// Validates all three operands and returns the input's dims.
pub(crate) fn validate(
    x: &Tensor,
    num_groups: usize,
    weight: &Tensor,
    bias: &Tensor,
) -> Result<GroupNormDims> {
    let dims = input_dims(x.dims(), num_groups)?;
    check_channel_param("weight", weight.dims(), dims.channels)?;
    check_channel_param("bias", bias.dims(), dims.channels)?;
    for (name, t) in [("input", x), ("weight", weight), ("bias", bias)] {
        if !t.dtype().is_float() {
            bail!(
                "group_norm: {name} must be a float tensor, got {:?}",
                t.dtype()
            );
        }
    }
    Ok(dims)
}

/// GroupNorm over an NCHW (or N, C, *) tensor, exactly torch.nn.functional.group_norm (biased
/// variance, eps inside the sqrt), optional SiLU after the affine. The output has x's dtype.
///
/// Contiguous f32/f16/bf16 inputs on the CPU (or on CUDA with the `cuda` feature) take the fused
/// kernel; anything else (Metal, non-contiguous or f64 inputs, empty CUDA inputs, tensors tracked for
/// backprop) takes the reference ops.
pub fn group_norm(
    x: &Tensor,
    num_groups: usize,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    activation: Activation,
) -> Result<Tensor> {
    validate(x, num_groups, weight, bias)?;
    if !takes_fast_path(x, weight, bias) {
        return group_norm_reference(x, num_groups, weight, bias, eps, activation);
    }
    let op = GroupNormOp::new(num_groups, eps, activation);
    let (weight, bias) = if x.device().is_cuda() {
        // The CUDA kernel reads its [C] parameters as f32 only.
        (weight.to_dtype(DType::F32)?, bias.to_dtype(DType::F32)?)
    } else {
        (weight.clone(), bias.clone())
    };
    x.apply_op3_no_bwd(&weight.contiguous()?, &bias.contiguous()?, &op)
}

fn takes_fast_path(x: &Tensor, weight: &Tensor, bias: &Tensor) -> bool {
    let device = x.device();
    // An empty CUDA input would launch no blocks at all: the reference handles it.
    let kernel_device =
        device.is_cpu() || (cfg!(feature = "cuda") && device.is_cuda() && x.elem_count() > 0);
    let same_device = [weight, bias]
        .iter()
        .all(|t| t.device().same_device(device));
    // The custom op has no backward pass: keep autograd working through the reference ops.
    let tracked = [x, weight, bias].iter().any(|t| t.track_op());
    let kernel_dtype = matches!(x.dtype(), DType::F32 | DType::F16 | DType::BF16);
    kernel_device && same_device && !tracked && kernel_dtype && x.is_contiguous()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dims_of_nchw_and_rank_two() -> Result<()> {
        let d = input_dims(&[2, 320, 7, 9], 32)?;
        assert_eq!((d.batch, d.channels, d.spatial), (2, 320, 63));
        assert_eq!(d.channels_per_group(), 10);
        assert_eq!(d.elements_per_group(), 630);
        assert_eq!(input_dims(&[3, 4], 2)?.spatial, 1);
        Ok(())
    }
}
