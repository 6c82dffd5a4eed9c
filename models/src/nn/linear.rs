//! A linear layer y = x Wᵀ + b: imago's packed GEMM kernel for f32 weights on the CPU, candle's
//! matmul everywhere else (other devices, f16/bf16 compute).

use std::sync::Arc;

use candle_core::{DType, Result, Tensor};
use candle_nn::{Module, VarBuilder};
use imago_kernels::LinearKernel;

#[derive(Debug, Clone)]
pub struct Linear {
    backend: Backend,
}

#[derive(Debug, Clone)]
enum Backend {
    /// The weight packed once at load; the layer keeps no other copy of it.
    Packed(Arc<LinearKernel>),
    Candle(candle_nn::Linear),
}

impl Linear {
    /// A layer over `weight` (out, in) and an optional `bias` (out).
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let backend = if weight.device().is_cpu() && weight.dtype() == DType::F32 {
            Backend::Packed(Arc::new(LinearKernel::new(&weight, bias.as_ref())?))
        } else {
            Backend::Candle(candle_nn::Linear::new(weight, bias))
        };
        Ok(Self { backend })
    }

    /// The dtype the layer computes in (its weight's); inputs must come in it.
    pub fn dtype(&self) -> DType {
        match &self.backend {
            Backend::Packed(_) => DType::F32,
            Backend::Candle(linear) => linear.weight().dtype(),
        }
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.backend {
            Backend::Packed(kernel) => kernel.forward(x),
            Backend::Candle(linear) => linear.forward(x),
        }
    }
}

/// A linear layer with bias, weights `weight` (out, in) and `bias` under `vb`, in the
/// VarBuilder's dtype (the compute dtype), as candle_nn::linear.
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let weight = vb.get((out_dim, in_dim), "weight")?;
    let bias = vb.get(out_dim, "bias")?;
    Linear::new(weight, Some(bias))
}

/// A linear layer without bias, as candle_nn::linear_no_bias.
pub fn linear_no_bias(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    Linear::new(vb.get((out_dim, in_dim), "weight")?, None)
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
        let x = ramp(&[2, 5, 24], 0.02)?;
        let weight = ramp(&[7, 24], 0.01)?;
        let bias = ramp(&[7], 0.1)?;
        let packed = Linear::new(weight.clone(), Some(bias.clone()))?;
        assert!(matches!(packed.backend, Backend::Packed(_)));
        let candle = candle_nn::Linear::new(weight, Some(bias));
        let (ours, theirs) = (packed.forward(&x)?, candle.forward(&x)?);
        assert_eq!(ours.dims(), theirs.dims());
        let diff = (ours - theirs)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "max difference {diff}");
        Ok(())
    }

    #[test]
    fn f16_weights_take_candle() -> Result<()> {
        let layer = Linear::new(ramp(&[7, 24], 0.01)?.to_dtype(DType::F16)?, None)?;
        assert!(matches!(layer.backend, Backend::Candle(_)));
        assert_eq!(layer.dtype(), DType::F16);
        Ok(())
    }
}
