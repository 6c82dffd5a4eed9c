//! diffusers' `ResnetBlock2D` (pre-norm, 3x3 convs, optional time embedding and 1x1 shortcut).
use candle_core::{Result, Tensor};
use candle_nn::{Conv2dConfig, Module, VarBuilder};

use super::banded::{band_bytes, bands, conv_rows, normalized_conv, worth_banding};
use super::{conv2d, linear, Conv2d, Linear};

use super::{group_norm, Activation, GroupNorm};
use crate::error::ModelError;

mod in_place;

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
    out_channels: usize,
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
            out_channels: cfg.out_channels,
            act: cfg.act,
            time_embedding_norm: cfg.time_embedding_norm,
            output_scale_factor: cfg.output_scale_factor,
        })
    }

    /// `temb`: (batch, temb_channels), already the UNet's embedding (this block applies the
    /// activation before its projection, as diffusers does with skip_time_act false).
    pub fn forward(&self, input: &Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        if temb.is_none() && worth_banding(input, input.elem_count()) {
            if let Some(out) = self.forward_banded(input, band_bytes())? {
                return Ok(out);
            }
        }
        // Each temporary is dropped as soon as the next one exists.
        let h = self
            .conv1
            .forward(&self.norm1.forward_then(input, self.act)?)?;
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
        self.scale_output((shortcut + h)?)
    }

    fn scale_output(&self, out: Tensor) -> Result<Tensor> {
        if self.output_scale_factor == 1.0 {
            Ok(out)
        } else {
            out / self.output_scale_factor
        }
    }

    /// The block without a time embedding, a band of rows (about `band_bytes` of input) at a
    /// time: besides `input`, only the first convolution's output exists in full, and the
    /// block's output is written over it. `None` where the layers do not allow it (non-SiLU
    /// activation, other convolutions, tensors the row normalization does not take).
    pub(crate) fn forward_banded(
        &self,
        input: &Tensor,
        band_bytes: usize,
    ) -> Result<Option<Tensor>> {
        let shortcut_ok = self.conv_shortcut.as_ref().is_none_or(Conv2d::is_pointwise);
        if !(self.conv1.keeps_size_3x3() && self.conv2.keeps_size_3x3() && shortcut_ok) {
            return Ok(None);
        }
        let Some(rows1) = self.norm1.rows_then(input, self.act)? else {
            return Ok(None);
        };
        let h = normalized_conv(&rows1, &self.conv1, input, band_bytes)?;
        drop(rows1);
        let Some(rows2) = self.norm2.rows_then(&h, self.act)? else {
            return Ok(None);
        };
        let (n, c, height, w) = h.dims4()?;
        // Bands sized by the wider of the convolution's and the shortcut's input.
        let widest = c.max(input.dim(1)?);
        // Band k's output is written over h only after band k + 1 has read its input rows
        // (which include band k's last row).
        let mut pending: Option<(usize, Tensor)> = None;
        for (first, count) in bands(band_bytes, (n, widest, height, w)) {
            let conv = conv_rows(&self.conv2, height, first, count, |a, b| {
                rows2.rows(&h, a, b - a)
            })?;
            if let Some((row, band)) = pending.take() {
                h.slice_set(&band, 2, row)?;
            }
            let input_band = input.narrow(2, first, count)?;
            let shortcut = match &self.conv_shortcut {
                Some(conv) => conv.forward(&input_band.contiguous()?)?,
                None => input_band,
            };
            let out = self.scale_output((shortcut + conv)?)?;
            pending = Some((first, out.contiguous()?));
        }
        if let Some((row, band)) = pending {
            h.slice_set(&band, 2, row)?;
        }
        Ok(Some(h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::test_util::bits;
    use crate::tiny_weights::deterministic_var_builder;
    use candle_core::{DType, Device};

    pub(super) fn block(
        seed: u64,
        in_channels: usize,
        out_channels: usize,
    ) -> Result<ResnetBlock2D> {
        let vb = deterministic_var_builder(seed, DType::F32, &Device::Cpu);
        ResnetBlock2D::new(
            vb,
            ResnetConfig {
                in_channels,
                out_channels,
                temb_channels: None,
                groups: 2,
                eps: 1e-6,
                act: Activation::Silu,
                time_embedding_norm: TimeEmbeddingNorm::Default,
                output_scale_factor: 1.0,
            },
        )
    }

    /// The banded block (with and without a 1x1 shortcut, bands of 1 to all rows, odd heights)
    /// gives the plain block's bits, and leaves its input as it was.
    #[test]
    fn banded_block_matches_the_plain_block() -> Result<()> {
        for (in_c, out_c) in [(6, 4), (4, 4)] {
            let block = block(3, in_c, out_c)?;
            let x = Tensor::randn(0f32, 1.0, (1, in_c, 11, 7), &Device::Cpu)?;
            let before = bits(&x)?;
            let plain = block.forward(&x, None)?;
            // One row of in_c x 7 f32 values is 28 * in_c bytes.
            for rows in [1, 2, 3, 5, 11] {
                let banded = block
                    .forward_banded(&x, rows * 28 * in_c)?
                    .expect("an f32 CPU block bands");
                assert_eq!(
                    bits(&banded)?,
                    bits(&plain)?,
                    "{in_c}->{out_c}, {rows} rows"
                );
            }
            assert_eq!(bits(&x)?, before);
        }
        Ok(())
    }
}
