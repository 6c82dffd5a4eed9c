//! A 2-D convolution layer: imago's packed implicit-GEMM kernel for f32 weights on the CPU,
//! candle's convolution everywhere else (other devices, f16/bf16 compute, grouped convs).

use std::sync::Arc;

use candle_core::{DType, Result, Tensor};
use candle_nn::{Conv2dConfig, Module, VarBuilder};
use imago_kernels::{Conv2dGeometry, Conv2dKernel};

#[derive(Debug, Clone)]
pub struct Conv2d {
    backend: Backend,
}

#[derive(Debug, Clone)]
enum Backend {
    /// The weight packed once at load; the layer keeps no other copy of it.
    Packed(Arc<Conv2dKernel>),
    Candle(candle_nn::Conv2d),
}

impl Conv2d {
    /// A layer over `weight` (Cout, Cin / groups, kh, kw) and an optional `bias` (Cout).
    pub fn new(weight: Tensor, bias: Option<Tensor>, config: Conv2dConfig) -> Result<Self> {
        let kernel_takes_it =
            weight.device().is_cpu() && weight.dtype() == DType::F32 && config.groups == 1;
        let backend = if kernel_takes_it {
            let geometry = Conv2dGeometry {
                padding: config.padding,
                stride: config.stride,
                dilation: config.dilation,
            };
            Backend::Packed(Arc::new(Conv2dKernel::new(
                &weight,
                bias.as_ref(),
                geometry,
            )?))
        } else {
            Backend::Candle(candle_nn::Conv2d::new(weight, bias, config))
        };
        Ok(Self { backend })
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.backend {
            Backend::Packed(kernel) => kernel.forward(x),
            Backend::Candle(conv) => conv.forward(x),
        }
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
    use candle_core::Device;

    fn ramp(shape: &[usize], scale: f32) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * scale)
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu)
    }

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

    #[test]
    fn f16_weights_take_candle() -> Result<()> {
        let weight = ramp(&[5, 6, 1, 1], 0.01)?.to_dtype(DType::F16)?;
        let layer = Conv2d::new(weight, None, Conv2dConfig::default())?;
        assert!(matches!(layer.backend, Backend::Candle(_)));
        Ok(())
    }
}
