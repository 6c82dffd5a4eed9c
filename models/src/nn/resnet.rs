//! diffusers' `ResnetBlock2D` (pre-norm, 3x3 convs, optional time embedding and 1x1 shortcut).
use candle_core::{Result, Tensor};
use candle_nn::{Conv2dConfig, Module, VarBuilder};

use super::{conv2d, linear, Conv2d, Linear};

use super::{group_norm, Activation, GroupNorm};
use crate::error::ModelError;

/// How the time embedding enters the block (`resnet_time_scale_shift`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeEmbeddingNorm {
    /// Added to the features before `norm2`.
    Default,
    /// Split into (scale, shift) applied after `norm2`.
    ScaleShift,
}

impl TimeEmbeddingNorm {
    pub fn from_config(value: &str) -> crate::Result<Self> {
        match value {
            "default" => Ok(Self::Default),
            "scale_shift" => Ok(Self::ScaleShift),
            other => Err(ModelError::Unsupported(format!(
                "resnet_time_scale_shift = {other:?}"
            ))),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct ResnetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    /// Width of the time embedding; `None` for the VAE's blocks.
    pub temb_channels: Option<usize>,
    pub groups: usize,
    pub eps: f64,
    pub act: Activation,
    pub time_embedding_norm: TimeEmbeddingNorm,
    pub output_scale_factor: f64,
}

#[derive(Debug, Clone)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    act: Activation,
    time_embedding_norm: TimeEmbeddingNorm,
    output_scale_factor: f64,
}

fn conv3x3(vb: VarBuilder, in_c: usize, out_c: usize) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: 1,
        ..Default::default()
    };
    conv2d(in_c, out_c, 3, cfg, vb)
}

impl ResnetBlock2D {
    pub fn new(vb: VarBuilder, cfg: ResnetConfig) -> Result<Self> {
        let time_emb_proj = match cfg.temb_channels {
            Some(t) => {
                let out = match cfg.time_embedding_norm {
                    TimeEmbeddingNorm::Default => cfg.out_channels,
                    TimeEmbeddingNorm::ScaleShift => 2 * cfg.out_channels,
                };
                Some(linear(t, out, vb.pp("time_emb_proj"))?)
            }
            None => None,
        };
        let conv_shortcut = if cfg.in_channels != cfg.out_channels {
            Some(conv2d(
                cfg.in_channels,
                cfg.out_channels,
                1,
                Default::default(),
                vb.pp("conv_shortcut"),
            )?)
        } else {
            None
        };
        Ok(Self {
            norm1: group_norm(vb.pp("norm1"), cfg.groups, cfg.in_channels, cfg.eps)?,
            conv1: conv3x3(vb.pp("conv1"), cfg.in_channels, cfg.out_channels)?,
            time_emb_proj,
            norm2: group_norm(vb.pp("norm2"), cfg.groups, cfg.out_channels, cfg.eps)?,
            conv2: conv3x3(vb.pp("conv2"), cfg.out_channels, cfg.out_channels)?,
            conv_shortcut,
            act: cfg.act,
            time_embedding_norm: cfg.time_embedding_norm,
            output_scale_factor: cfg.output_scale_factor,
        })
    }

    /// `temb`: (batch, temb_channels), already the UNet's embedding (this block applies the
    /// activation before its projection, as diffusers does with skip_time_act false).
    pub fn forward(&self, input: &Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        let h = self.norm1.forward_then(input, self.act)?;
        let h = self.conv1.forward(&h)?;
        let temb = match (temb, &self.time_emb_proj) {
            (Some(t), Some(proj)) => Some(
                proj.forward(&self.act.forward(t)?)?
                    .unsqueeze(2)?
                    .unsqueeze(3)?,
            ),
            _ => None,
        };
        let h = match (self.time_embedding_norm, temb) {
            (TimeEmbeddingNorm::Default, Some(t)) => {
                self.norm2.forward_then(&h.broadcast_add(&t)?, self.act)?
            }
            (TimeEmbeddingNorm::ScaleShift, Some(t)) => {
                let chans = t.dim(1)? / 2;
                let scale = t.narrow(1, 0, chans)?;
                let shift = t.narrow(1, chans, chans)?;
                let h = self
                    .norm2
                    .forward(&h)?
                    .broadcast_mul(&(scale + 1.0)?)?
                    .broadcast_add(&shift)?;
                self.act.forward(&h)?
            }
            (_, None) => self.norm2.forward_then(&h, self.act)?,
        };
        let h = self.conv2.forward(&h)?;
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(input)?,
            None => input.clone(),
        };
        let out = (shortcut + h)?;
        if self.output_scale_factor == 1.0 {
            Ok(out)
        } else {
            out / self.output_scale_factor
        }
    }
}
