//! A 2-D convolution layer on imago's packed implicit-GEMM kernels where they apply, candle's
//! convolution elsewhere (grouped convolutions too; see `packed.rs`).

use candle_core::{Result, Tensor};
use candle_nn::{Conv2dConfig, Module, VarBuilder};
use imago_kernels::gemm_bf16::{Conv2dBf16, Microkernel};
use imago_kernels::{Conv2dGeometry, Conv2dKernel};

use super::packed::Backend;

#[derive(Debug, Clone)]
pub struct Conv2d {
    backend: Backend<Conv2dKernel, Conv2dBf16, candle_nn::Conv2d>,
    /// See [`Conv2d::keeps_size_3x3`].
    keeps_size_3x3: bool,
    /// See [`Conv2d::is_pointwise`].
    pointwise: bool,
}

impl Conv2d {
    /// A layer over `weight` (Cout, Cin / groups, kh, kw) and an optional `bias` (Cout).
    pub fn new(weight: Tensor, bias: Option<Tensor>, config: Conv2dConfig) -> Result<Self> {
        Self::with_bf16_kernel(weight, bias, config, Microkernel::detect())
    }

    /// As [`Conv2d::new`], with bf16 weights taking the AVX512-BF16 kernel only if `bf16_kernel`
    /// is that one (tests pass the portable one to run the widening fallback).
    fn with_bf16_kernel(
        weight: Tensor,
        bias: Option<Tensor>,
        config: Conv2dConfig,
        bf16_kernel: Microkernel,
    ) -> Result<Self> {
        let geometry = Conv2dGeometry {
            padding: config.padding,
            stride: config.stride,
            dilation: config.dilation,
        };
        let kernel = match weight.dims() {
            [_, _, kh, kw] => (*kh, *kw),
            dims => candle_core::bail!("conv2d: weight must be (Cout, Cin, kh, kw), got {dims:?}"),
        };
        let backend = Backend::select(
            weight,
            bias,
            config.groups == 1,
            bf16_kernel,
            |w, b| Conv2dKernel::new(w, b, geometry),
            |w, b| Conv2dBf16::new(w, b, geometry),
            |w, b| candle_nn::Conv2d::new(w, b, config),
        )?;
        let c = config;
        Ok(Self {
            backend,
            keeps_size_3x3: kernel == (3, 3)
                && (c.padding, c.stride, c.dilation, c.groups) == (1, 1, 1, 1),
            pointwise: kernel == (1, 1) && (c.padding, c.stride, c.groups) == (0, 1, 1),
        })
    }

    /// Whether this is a 3x3 convolution with padding 1, stride 1, no dilation and one group:
    /// each output row then depends on the input rows next to it only, and the output has the
    /// input's size (what computing it a band of rows at a time needs).
    pub fn keeps_size_3x3(&self) -> bool {
        self.keeps_size_3x3
    }

    /// Whether this is a 1x1 convolution with stride 1, no padding and one group: a per-pixel map.
    pub fn is_pointwise(&self) -> bool {
        self.pointwise
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.backend.forward(x)
    }
}

/// A square-kernel convolution with bias, weights `weight` and `bias` under `vb`, in the
/// VarBuilder's dtype (the compute dtype), as candle_nn::conv2d.
pub fn conv2d(
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    config: Conv2dConfig,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let weight = vb.get(
        (out_channels, in_channels / config.groups, kernel, kernel),
        "weight",
    )?;
    let bias = vb.get(out_channels, "bias")?;
    Conv2d::new(weight, Some(bias), config)
}

/// A square-kernel convolution without bias, as candle_nn::conv2d_no_bias.
pub fn conv2d_no_bias(
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    config: Conv2dConfig,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let weight = vb.get(
        (out_channels, in_channels / config.groups, kernel, kernel),
        "weight",
    )?;
    Conv2d::new(weight, None, config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::test_util::ramp;
    use candle_core::DType;

    #[test]
    fn packed_and_candle_layers_agree() -> Result<()> {
        let x = ramp(&[2, 6, 9, 7], 0.02)?;
        let weight = ramp(&[5, 6, 3, 3], 0.01)?;
        let bias = ramp(&[5], 0.1)?;
        let config = Conv2dConfig {
            padding: 1,
            stride: 2,
            ..Default::default()
        };
        let packed = Conv2d::new(weight.clone(), Some(bias.clone()), config)?;
        assert!(matches!(packed.backend, Backend::Packed(_)));
        let candle = candle_nn::Conv2d::new(weight, Some(bias), config);
        let diff = (packed.forward(&x)? - candle.forward(&x)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-5, "max difference {diff}");
        Ok(())
    }

    /// bf16 layers (the AVX512-BF16 kernel where this CPU has it, and the widening fallback)
    /// against the f32 layer. Rounding x and w to bf16 moves each product by <= 2^-8 of
    /// |x w| (|x| <= 1, |w| <= 0.5, 54 products: <= 0.11 in all), the bias (|b| <= 5) and the
    /// output by <= 2^-9 of their size (<= 0.01 and 0.06); 0.2 holds every correct path, while
    /// a broken one is off by about the values themselves (~1 to 10).
    #[test]
    fn bf16_layers_agree_with_f32() -> Result<()> {
        let x = ramp(&[2, 6, 9, 7], 0.02)?;
        let weight = ramp(&[5, 6, 3, 3], 0.01)?;
        let bias = ramp(&[5], 0.1)?;
        let config = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let want = Conv2d::new(weight.clone(), Some(bias.clone()), config)?.forward(&x)?;
        let bf16 = |t: &Tensor| t.to_dtype(DType::BF16);
        for kernel in [Microkernel::Avx512Bf16, Microkernel::Portable] {
            if !kernel.is_supported() {
                continue;
            }
            let layer =
                Conv2d::with_bf16_kernel(bf16(&weight)?, Some(bf16(&bias)?), config, kernel)?;
            let expected_backend = match kernel {
                Microkernel::Avx512Bf16 => matches!(layer.backend, Backend::PackedBf16(_)),
                Microkernel::Portable => matches!(layer.backend, Backend::WidenedBf16(_)),
            };
            assert!(expected_backend, "{kernel:?}: {:?}", layer.backend);
            let got = layer.forward(&bf16(&x)?)?;
            assert_eq!(got.dtype(), DType::BF16);
            let diff = (got.to_dtype(DType::F32)? - &want)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert!(diff < 0.2, "{kernel:?}: max difference {diff}");
        }
        Ok(())
    }

    #[test]
    fn f16_weights_take_candle() -> Result<()> {
        let weight = ramp(&[5, 6, 1, 1], 0.01)?.to_dtype(DType::F16)?;
        let layer = Conv2d::new(weight, None, Conv2dConfig::default())?;
        assert!(matches!(layer.backend, Backend::Candle(_)));
        Ok(())
    }
}
