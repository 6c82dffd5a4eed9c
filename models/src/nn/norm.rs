//! Normalisation layers. GroupNorm goes through this one wrapper so a fused kernel can replace it
//! in a single place.
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

#[derive(Debug, Clone)]
pub struct GroupNorm {
    inner: candle_nn::GroupNorm,
}

impl GroupNorm {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.inner.forward(x)
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
    let inner = candle_nn::GroupNorm::new(weight, bias, channels, num_groups, eps)?;
    Ok(GroupNorm { inner })
}

/// torch's `nn.LayerNorm(dim, eps)` with affine weight and bias.
pub fn layer_norm(vb: VarBuilder, dim: usize, eps: f64) -> Result<candle_nn::LayerNorm> {
    let weight = vb.get(dim, "weight")?;
    let bias = vb.get(dim, "bias")?;
    Ok(candle_nn::LayerNorm::new(weight, bias, eps))
}
