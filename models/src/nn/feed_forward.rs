//! diffusers' `FeedForward` with the GEGLU activation (the transformer blocks' default):
//! `net.0.proj` to 2 * inner, value * gelu_erf(gate), `net.2` back to dim.
use candle_core::{Result, Tensor};
use candle_nn::{Module, VarBuilder};

use super::{linear, Linear};

#[derive(Debug, Clone)]
pub struct FeedForward {
    proj_in: Linear,
    proj_out: Linear,
}

impl FeedForward {
    /// `inner_dim` is dim * mult (mult = 4 in BasicTransformerBlock).
    pub fn new(vb: VarBuilder, dim: usize, inner_dim: usize) -> Result<Self> {
        let proj_in = linear(dim, inner_dim * 2, vb.pp("net.0.proj"))?;
        let proj_out = linear(inner_dim, dim, vb.pp("net.2"))?;
        Ok(Self { proj_in, proj_out })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let projected = self.proj_in.forward(x)?;
        // torch.chunk(2, dim=-1): the first half is the value, the second half the gate; one
        // fused pass computes value * gelu_erf(gate).
        let hidden = imago_kernels::geglu(&projected)?;
        self.proj_out.forward(&hidden)
    }
}
