//! diffusers' `Downsample2D` and `Upsample2D` with a convolution (`use_conv=True`).
use candle_core::{Result, Tensor};
use candle_nn::{Conv2dConfig, Module, VarBuilder};

use super::banded::{band_bytes, bands, conv_rows, stitch_rows, worth_banding};
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
        let doubling = (out_h, out_w) == (2 * h, 2 * w);
        if doubling && self.conv.keeps_size_3x3() && worth_banding(x, 4 * x.elem_count()) {
            return self.forward_doubled_banded(x, band_bytes());
        }
        let x = x.upsample_nearest2d(out_h, out_w)?;
        self.conv.forward(&x)
    }

    /// The x2 case a band of output rows (about `band_bytes` of upsampled input) at a time: the
    /// upsampled input never exists in full. The conv must keep the size (3x3, padding 1).
    pub(crate) fn forward_doubled_banded(&self, x: &Tensor, band_bytes: usize) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let (out_h, out_w) = (2 * h, 2 * w);
        let bands = bands(band_bytes, (n, c, out_h, out_w));
        stitch_rows(
            (n, out_h, out_w),
            &bands,
            "banded upsampling",
            |_, first, count| {
                conv_rows(&self.conv, out_h, first, count, |a, b| {
                    // Upsampled rows a..b come from source rows a / 2 ..= (b - 1) / 2.
                    let (s0, s1) = (a / 2, (b - 1) / 2 + 1);
                    x.narrow(2, s0, s1 - s0)?
                        .upsample_nearest2d(2 * (s1 - s0), out_w)?
                        .narrow(2, a - 2 * s0, b - a)
                })
            },
        )
    }

    /// x2 upsampling of an input the caller gives up (the VAE decoder's last upsampler, whose
    /// output is the largest map). On a large input, `x` is copied into two pieces of rows, those
    /// the first half of the bands reads and those the second half reads, and dropped; the first
    /// piece is dropped and its memory returned to the system when the second half starts, so
    /// only half of the input stays beside the finished output. Same bits as [`Self::forward`].
    pub fn forward_doubled_consuming(&self, x: Tensor) -> Result<Tensor> {
        if self.conv.keeps_size_3x3() && worth_banding(&x, 4 * x.elem_count()) {
            self.doubled_from_pieces(x, band_bytes())
        } else {
            self.forward(&x, None)
        }
    }

    pub(crate) fn doubled_from_pieces(&self, x: Tensor, band_bytes: usize) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let (out_h, out_w) = (2 * h, 2 * w);
        let bands = bands(band_bytes, (n, c, out_h, out_w));
        // The source rows s0..s1 that output rows first..first + count read (halo included).
        let source = |&(first, count): &(usize, usize)| {
            let (a, b) = (first.saturating_sub(1), (first + count + 1).min(out_h));
            (a / 2, (b - 1) / 2 + 1)
        };
        let split = bands.len() / 2;
        let top_end = bands[..split].last().map_or(0, |band| source(band).1);
        let bottom_start = bands.get(split).map_or(h, |band| source(band).0);
        let mut top = match split {
            0 => None,
            _ => Some(x.narrow(2, 0, top_end)?.contiguous()?),
        };
        let bottom = x.narrow(2, bottom_start, h - bottom_start)?.contiguous()?;
        drop(x);
        stitch_rows(
            (n, out_h, out_w),
            &bands,
            "banded upsampling",
            |index, first, count| {
                if index == split && top.take().is_some() {
                    crate::allocator::release_free_heap();
                }
                let (piece, offset) = match &top {
                    Some(top) => (top, 0),
                    None => (&bottom, bottom_start),
                };
                conv_rows(&self.conv, out_h, first, count, |a, b| {
                    let (s0, s1) = (a / 2, (b - 1) / 2 + 1);
                    piece
                        .narrow(2, s0 - offset, s1 - s0)?
                        .upsample_nearest2d(2 * (s1 - s0), out_w)?
                        .narrow(2, a - 2 * s0, b - a)
                })
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::test_util::bits;
    use crate::tiny_weights::deterministic_var_builder;
    use candle_core::{DType, Device};

    /// x2 upsampling by bands of output rows (1 to all, odd and even band edges) gives the plain
    /// upsample-then-convolve bits.
    #[test]
    fn banded_upsampling_matches_the_plain_layer() -> Result<()> {
        let vb = deterministic_var_builder(5, DType::F32, &Device::Cpu);
        let up = Upsample2D::new(vb, 3, 5)?;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 5, 4), &Device::Cpu)?;
        let plain = up.conv.forward(&x.upsample_nearest2d(10, 8)?)?;
        // One upsampled row of both samples is 2 x 3 x 8 f32 values.
        for rows in [1, 2, 3, 4, 7, 10] {
            let banded = up.forward_doubled_banded(&x, rows * 2 * 3 * 8 * 4)?;
            assert_eq!(bits(&banded)?, bits(&plain)?, "{rows} rows");
            let pieces = up.doubled_from_pieces(x.copy()?, rows * 2 * 3 * 8 * 4)?;
            assert_eq!(bits(&pieces)?, bits(&plain)?, "{rows} rows from pieces");
        }
        Ok(())
    }
}
