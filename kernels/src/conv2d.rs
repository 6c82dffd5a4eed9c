//! 2-D convolution over NCHW tensors (groups 1) as an implicit GEMM per sample:
//! out[co, p] = W[co, k] · col[k, p], with W the (Cout, Cin·kh·kw) weight packed once as the
//! left operand and col (the im2col matrix) packed block by block straight from the input, so
//! the whole im2col matrix never exists. Stride-1 convolutions skip the packing: the microkernel
//! reads B in place from a zero-padded copy of the input rows (`direct.rs`), with the same bits.
//! 1x1 stride-1 unpadded convolutions read the input as B directly. The bias is the GEMM's per-row bias. Each sample is its own GEMM, so a sample's
//! output does not depend on the batch (nor, by the GEMM's promise, on threads or sizes).

mod direct;
mod im2col;
mod op;
mod reference;

pub use op::Conv2dKernel;
pub use reference::conv2d_reference;

use candle_core::{bail, Result};

/// Stride, zero padding and dilation, the same in both spatial directions (as candle's and
/// diffusers' convolutions are configured).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dGeometry {
    pub padding: usize,
    pub stride: usize,
    pub dilation: usize,
}

impl Conv2dGeometry {
    pub(crate) fn check(&self) -> Result<()> {
        if self.stride == 0 || self.dilation == 0 {
            bail!("conv2d: stride and dilation must be at least 1, got {self:?}");
        }
        Ok(())
    }
}

impl Default for Conv2dGeometry {
    fn default() -> Self {
        Self {
            padding: 0,
            stride: 1,
            dilation: 1,
        }
    }
}

/// The sizes of one convolution: input plane, kernel, output plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConvDims {
    pub in_channels: usize,
    pub height: usize,
    pub width: usize,
    pub kernel_h: usize,
    pub kernel_w: usize,
    pub out_h: usize,
    pub out_w: usize,
    pub geometry: Conv2dGeometry,
}

impl ConvDims {
    pub fn new(
        (in_channels, height, width): (usize, usize, usize),
        (kernel_h, kernel_w): (usize, usize),
        geometry: Conv2dGeometry,
    ) -> Result<Self> {
        geometry.check()?;
        let out = |size: usize, kernel: usize| -> Result<usize> {
            let span = geometry.dilation * (kernel - 1) + 1;
            let padded = size + 2 * geometry.padding;
            if kernel == 0 || padded < span {
                bail!("conv2d: kernel {kernel_h}x{kernel_w} does not fit a {height}x{width} input with {geometry:?}");
            }
            Ok((padded - span) / geometry.stride + 1)
        };
        Ok(Self {
            in_channels,
            height,
            width,
            kernel_h,
            kernel_w,
            out_h: out(height, kernel_h)?,
            out_w: out(width, kernel_w)?,
            geometry,
        })
    }

    /// K of the GEMM: Cin · kh · kw.
    pub fn depth(&self) -> usize {
        self.in_channels * self.kernel_h * self.kernel_w
    }

    /// N of the GEMM: output positions per sample.
    pub fn positions(&self) -> usize {
        self.out_h * self.out_w
    }

    /// Whether col is the input itself (1x1, stride 1, no padding).
    pub fn is_pointwise(&self) -> bool {
        self.kernel_h == 1
            && self.kernel_w == 1
            && self.geometry.stride == 1
            && self.geometry.padding == 0
    }
}
