//! diffusers' `Downsample2D` and `Upsample2D` with a convolution (`use_conv=True`).
use candle_core::{Result, Tensor};
use candle_nn::{Conv2dConfig, Module, VarBuilder};

use super::{conv2d, Conv2d};

/// 3x3 conv with stride 2. With padding 0, diffusers first pads right and bottom by one
/// (`F.pad(x, (0, 1, 0, 1))`), as the VAE encoder does.
#[derive(Debug, Clone)]
pub struct Downsample2D {
    conv: Conv2d,
    asymmetric_pad: bool,
}

impl Downsample2D {
    /// Weights under `conv`.
    pub fn new(
        vb: VarBuilder,
        channels: usize,
        out_channels: usize,
        padding: usize,
    ) -> Result<Self> {
        let cfg = Conv2dConfig {
            padding,
            stride: 2,
            ..Default::default()
        };
        Ok(Self {
            conv: conv2d(channels, out_channels, 3, cfg, vb.pp("conv"))?,
            asymmetric_pad: padding == 0,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.asymmetric_pad {
            let x = x.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?;
            self.conv.forward(&x)
        } else {
            self.conv.forward(x)
        }
    }
}

/// Nearest-neighbour upsampling (x2, or to an explicit size) followed by a 3x3 conv.
#[derive(Debug, Clone)]
pub struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    /// Weights under `conv`.
    pub fn new(vb: VarBuilder, channels: usize, out_channels: usize) -> Result<Self> {
        let cfg = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        Ok(Self {
            conv: conv2d(channels, out_channels, 3, cfg, vb.pp("conv"))?,
        })
    }

    /// `size`: the (height, width) to interpolate to; `None` doubles both.
    pub fn forward(&self, x: &Tensor, size: Option<(usize, usize)>) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let (out_h, out_w) = size.unwrap_or((2 * h, 2 * w));
        let x = x.upsample_nearest2d(out_h, out_w)?;
        self.conv.forward(&x)
    }
}
