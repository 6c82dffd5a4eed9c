//! A linear layer y = x Wᵀ + b on imago's packed GEMM kernels where they apply, candle's matmul
//! elsewhere (see `packed.rs`).

use candle_core::{DType, Result, Tensor};
use candle_nn::{Module, VarBuilder};
use imago_kernels::gemm_bf16::{LinearBf16, Microkernel};
use imago_kernels::LinearKernel;

use super::packed::Backend;

#[derive(Debug, Clone)]
pub struct Linear {
    backend: Backend<LinearKernel, LinearBf16, candle_nn::Linear>,
}

impl Linear {
    /// A layer over `weight` (out, in) and an optional `bias` (out).
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        Self::with_bf16_kernel(weight, bias, Microkernel::detect())
    }

    /// As [`Linear::new`], with bf16 weights taking the AVX512-BF16 kernel only if `bf16_kernel`
    /// is that one (tests pass the portable one to run the widening fallback).
    fn with_bf16_kernel(
        weight: Tensor,
        bias: Option<Tensor>,
        bf16_kernel: Microkernel,
    ) -> Result<Self> {
        let backend = Backend::select(
            weight,
            bias,
            true,
            bf16_kernel,
            LinearKernel::new,
            LinearBf16::new,
            candle_nn::Linear::new,
        )?;
        Ok(Self { backend })
    }

    /// The dtype the layer computes in (its weight's); inputs must come in it.
    pub fn dtype(&self) -> DType {
        match &self.backend {
            Backend::Packed(_) => DType::F32,
            Backend::PackedBf16(_) | Backend::WidenedBf16(_) => DType::BF16,
            Backend::Candle(linear) => linear.weight().dtype(),
        }
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.backend.forward(x)
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
    use crate::nn::test_util::ramp;

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

    /// bf16 layers (the AVX512-BF16 kernel where this CPU has it, and the widening fallback)
    /// against the f32 layer. Rounding x and w to bf16 moves each product by <= 2^-8 of |x w|
    /// (|x| <= 1, |w| <= 0.5, 24 products: <= 0.05 in all), the bias (|b| <= 5) and the output
    /// (|y| <= 17) by <= 2^-9 of their size (0.01 and 0.035); 0.1 holds every correct path,
    /// while a broken one is off by about the values themselves.
    #[test]
    fn bf16_layers_agree_with_f32() -> Result<()> {
        let x = ramp(&[2, 5, 24], 0.02)?;
        let weight = ramp(&[7, 24], 0.01)?;
        let bias = ramp(&[7], 0.1)?;
        let want = Linear::new(weight.clone(), Some(bias.clone()))?.forward(&x)?;
        let bf16 = |t: &Tensor| t.to_dtype(DType::BF16);
        for kernel in [Microkernel::Avx512Bf16, Microkernel::Portable] {
            if !kernel.is_supported() {
                continue;
            }
            let layer = Linear::with_bf16_kernel(bf16(&weight)?, Some(bf16(&bias)?), kernel)?;
            assert_eq!(layer.dtype(), DType::BF16);
            let expected_backend = match kernel {
                Microkernel::Avx512Bf16 => matches!(layer.backend, Backend::PackedBf16(_)),
                Microkernel::Portable => matches!(layer.backend, Backend::WidenedBf16(_)),
            };
            assert!(expected_backend, "{kernel:?}: {:?}", layer.backend);
            let got = layer.forward(&bf16(&x)?)?;
            assert_eq!((got.dims(), got.dtype()), (want.dims(), DType::BF16));
            let diff = (got.to_dtype(DType::F32)? - &want)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert!(diff < 0.1, "{kernel:?}: max difference {diff}");
        }
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
