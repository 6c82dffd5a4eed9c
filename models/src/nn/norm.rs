//! Normalisation layers. GroupNorm goes through this one wrapper so a fused kernel can replace it
//! in a single place.
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use imago_kernels::{Activation as FusedActivation, GroupNormRows};

use super::activation::Activation;

/// GroupNorm on imago-kernels' fused op (one statistics pass, one write pass, SiLU fused).
#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    num_groups: usize,
    eps: f64,
}

impl GroupNorm {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        imago_kernels::group_norm(
            x,
            self.num_groups,
            &self.weight,
            &self.bias,
            self.eps,
            FusedActivation::None,
        )
    }

    /// `act(group_norm(x))`, fused when the activation is SiLU.
    pub fn forward_then(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        match act {
            Activation::Silu => imago_kernels::group_norm(
                x,
                self.num_groups,
                &self.weight,
                &self.bias,
                self.eps,
                FusedActivation::Silu,
            ),
            other => other.forward(&self.forward(x)?),
        }
    }
}

impl GroupNorm {
    /// `act(group_norm(x))` a band of rows at a time ([`GroupNormRows`]), where x is a contiguous
    /// f32 CPU (N, C, H, W) tensor and `act` is SiLU (the fused activation); `None` elsewhere.
    pub fn rows_then(&self, x: &Tensor, act: Activation) -> Result<Option<GroupNormRows>> {
        if act != Activation::Silu || !GroupNormRows::supports(x) {
            return Ok(None);
        }
        GroupNormRows::new(
            x,
            self.num_groups,
            &self.weight,
            &self.bias,
            self.eps,
            FusedActivation::Silu,
        )
        .map(Some)
    }
}

/// torch's `nn.GroupNorm(num_groups, channels, eps, affine=True)`, weights `weight` and `bias`.
pub fn group_norm(
    vb: VarBuilder,
    num_groups: usize,
    channels: usize,
    eps: f64,
) -> Result<GroupNorm> {
    let weight = vb.get(channels, "weight")?;
    let bias = vb.get(channels, "bias")?;
    if num_groups == 0 || !channels.is_multiple_of(num_groups) {
        candle_core::bail!(
            "group norm {}: {channels} channels are not divisible by {num_groups} groups",
            vb.prefix()
        );
    }
    Ok(GroupNorm {
        weight,
        bias,
        num_groups,
        eps,
    })
}

/// torch's `nn.LayerNorm(dim, eps)` with affine weight and bias.
pub fn layer_norm(vb: VarBuilder, dim: usize, eps: f64) -> Result<candle_nn::LayerNorm> {
    let weight = vb.get(dim, "weight")?;
    let bias = vb.get(dim, "bias")?;
    Ok(candle_nn::LayerNorm::new(weight, bias, eps))
}
