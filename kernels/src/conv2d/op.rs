//! The convolution as a candle custom op holding its packed weight.

use candle_core::{bail, CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::element::{bias_values, values};
use crate::gemm::{gemm, Bias, GemmOutput, Isa, KMajor, PackedMatrix, PanelSource};

use super::direct::{self, conv2d_direct};
use super::im2col::Im2col;
use super::{Conv2dGeometry, ConvDims};

/// A convolution layer's weight packed for the GEMM once, applied to f32 NCHW inputs on the CPU.
#[derive(Clone, Debug)]
pub struct Conv2dKernel {
    isa: Isa,
    weight: PackedMatrix,
    bias: Option<Vec<f32>>,
    out_channels: usize,
    in_channels: usize,
    kernel_h: usize,
    kernel_w: usize,
    geometry: Conv2dGeometry,
}

impl Conv2dKernel {
    /// Packs `weight` (Cout, Cin, kh, kw) and keeps `bias` (Cout) as f32, for the microkernel
    /// [`Isa::detected`] picks.
    pub fn new(weight: &Tensor, bias: Option<&Tensor>, geometry: Conv2dGeometry) -> Result<Self> {
        Self::with_isa(Isa::detected(), weight, bias, geometry)
    }

    /// As [`Conv2dKernel::new`], with a given microkernel (tests run every one).
    pub fn with_isa(
        isa: Isa,
        weight: &Tensor,
        bias: Option<&Tensor>,
        geometry: Conv2dGeometry,
    ) -> Result<Self> {
        let (out_channels, in_channels, kernel_h, kernel_w) = weight.dims4()?;
        geometry.check()?;
        let depth = in_channels * kernel_h * kernel_w;
        let weight = PackedMatrix::pack_a(isa, &values::<f32>(weight)?, out_channels, depth)?;
        let bias = bias_values(bias, out_channels, "conv2d")?;
        Ok(Self {
            isa,
            weight,
            bias,
            out_channels,
            in_channels,
            kernel_h,
            kernel_w,
            geometry,
        })
    }

    /// Convolves x (N, Cin, H, W): x must be an f32 CPU tensor (any layout).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if !x.device().is_cpu() || x.dtype() != DType::F32 {
            bail!(
                "conv2d kernel: input must be f32 on the CPU, got {:?} on {:?}",
                x.dtype(),
                x.device()
            );
        }
        x.contiguous()?.apply_op1_no_bwd(self)
    }

    /// As [`Conv2dKernel::forward`], but every convolution that is not 1x1 pointwise goes
    /// through the packed im2col GEMM, the path strides above 1 take. Stride-1 convolutions
    /// normally read the input in place instead, with the same bits: this is what tests hold
    /// them to.
    pub fn forward_im2col(&self, x: &Tensor) -> Result<Tensor> {
        if !x.device().is_cpu() || x.dtype() != DType::F32 {
            bail!(
                "conv2d kernel: input must be f32 on the CPU, got {:?} on {:?}",
                x.dtype(),
                x.device()
            );
        }
        x.contiguous()?.apply_op1_no_bwd(&Im2colOnly(self))
    }

    fn dims(&self, input: (usize, usize, usize)) -> Result<ConvDims> {
        ConvDims::new(input, (self.kernel_h, self.kernel_w), self.geometry)
    }
}

/// Which way a convolution that is not pointwise is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    /// In place for stride 1, im2col packing otherwise.
    Best,
    /// im2col packing always.
    Im2col,
}

impl CustomOp1 for Conv2dKernel {
    fn name(&self) -> &'static str {
        "imago-conv2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        self.compute(storage, layout, Path::Best)
    }
}

/// The kernel forced onto the im2col path ([`Conv2dKernel::forward_im2col`]).
struct Im2colOnly<'a>(&'a Conv2dKernel);

impl CustomOp1 for Im2colOnly<'_> {
    fn name(&self) -> &'static str {
        "imago-conv2d-im2col"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        self.0.compute(storage, layout, Path::Im2col)
    }
}

impl Conv2dKernel {
    fn compute(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
        path: Path,
    ) -> Result<(CpuStorage, Shape)> {
        let (batch, channels, height, width) = layout.shape().dims4()?;
        if channels != self.in_channels {
            bail!(
                "conv2d kernel: input has {channels} channels, the weight expects {}",
                self.in_channels
            );
        }
        let (CpuStorage::F32(values), Some((start, end))) = (storage, layout.contiguous_offsets())
        else {
            bail!("conv2d kernel: input must be contiguous f32");
        };
        let input = &values[start..end];
        let dims = self.dims((channels, height, width))?;
        let plane = channels * height * width;
        let out_plane = self.out_channels * dims.positions();
        let mut out = vec![0f32; batch * out_plane];
        let bias = self.bias.as_deref().map_or(Bias::None, Bias::PerRow);
        let in_place = path == Path::Best && direct::takes(&dims);
        let kernel = self.isa.microkernel()?;
        let one_sample = |(sample, y): (&[f32], &mut [f32])| -> Result<()> {
            if in_place {
                conv2d_direct(&kernel, &self.weight, self.bias.as_deref(), sample, dims, y);
                return Ok(());
            }
            let c = GemmOutput::new(y, self.out_channels, dims.positions(), dims.positions())?;
            let pointwise;
            let im2col;
            let b: &dyn PanelSource = if dims.is_pointwise() {
                pointwise = KMajor::new(sample, channels, dims.positions(), dims.positions())?;
                &pointwise
            } else {
                im2col = Im2col::new(sample, dims);
                &im2col
            };
            gemm(self.isa, &self.weight, b, c, bias, false)
        };
        // Samples run in parallel too: a small plane alone is one task (one core), and a batch
        // of them (a joined engine batch) would otherwise leave the other cores idle. A
        // sample's bits do not depend on which thread computes it.
        if batch > 1 {
            input
                .par_chunks_exact(plane)
                .zip(out.par_chunks_exact_mut(out_plane))
                .try_for_each(one_sample)?;
        } else {
            input
                .chunks_exact(plane)
                .zip(out.chunks_exact_mut(out_plane))
                .try_for_each(one_sample)?;
        }
        let shape = Shape::from((batch, self.out_channels, dims.out_h, dims.out_w));
        Ok((CpuStorage::F32(out), shape))
    }
}
