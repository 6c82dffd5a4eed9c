//! How a layer with a weight (a convolution, a linear layer) computes: imago's packed kernels
//! for f32 and bf16 weights on the CPU, candle's op everywhere else (other devices, f16 compute,
//! what our kernels do not cover).
//!
//! bf16 runs the AVX512-BF16 kernel where the CPU has it, else the f32 kernel on widened inputs
//! with the output rounded back to bf16 (candle's CPU convolution and matmul have no bf16
//! kernel).

use std::sync::Arc;

use candle_core::{DType, Result, Tensor};
use candle_nn::Module;
use imago_kernels::gemm_bf16::{Conv2dBf16, LinearBf16, Microkernel};
use imago_kernels::{Conv2dKernel, LinearKernel};

/// A kernel holding its packed weight, applied to a CPU tensor of its dtype.
pub trait PackedKernel {
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
}

macro_rules! packed_kernel {
    ($($kernel:ty),*) => {$(
        impl PackedKernel for $kernel {
            fn forward(&self, x: &Tensor) -> Result<Tensor> {
                <$kernel>::forward(self, x)
            }
        }
    )*};
}
packed_kernel!(Conv2dKernel, Conv2dBf16, LinearKernel, LinearBf16);

/// `F32` and `Bf16` are the layer's packed kernels, `C` candle's layer.
#[derive(Debug)]
pub enum Backend<F32, Bf16, C> {
    /// The weight packed once at load; the layer keeps no other copy of it.
    Packed(Arc<F32>),
    /// bf16 weights packed once for the AVX512-BF16 kernel: bf16 in, f32 sums, bf16 out.
    PackedBf16(Arc<Bf16>),
    /// bf16 weights on a CPU without AVX512-BF16: packed as f32 for the f32 kernel, which runs
    /// on the widened input; the output is rounded back to bf16.
    WidenedBf16(Arc<F32>),
    Candle(C),
}

// Not derived: cloning shares the packed weights whatever the kernel types are.
impl<F32, Bf16, C: Clone> Clone for Backend<F32, Bf16, C> {
    fn clone(&self) -> Self {
        match self {
            Self::Packed(k) => Self::Packed(k.clone()),
            Self::PackedBf16(k) => Self::PackedBf16(k.clone()),
            Self::WidenedBf16(k) => Self::WidenedBf16(k.clone()),
            Self::Candle(c) => Self::Candle(c.clone()),
        }
    }
}

impl<F32: PackedKernel, Bf16: PackedKernel, C: Module> Backend<F32, Bf16, C> {
    /// Picks the backend for `weight` and `bias`: ours when `ours` (the layer's configuration
    /// is one our kernels take) and the weight is an f32 or bf16 CPU tensor, with the bf16
    /// kernel only if `bf16_kernel` is the AVX512-BF16 one; candle's layer otherwise.
    pub fn select(
        weight: Tensor,
        bias: Option<Tensor>,
        ours: bool,
        bf16_kernel: Microkernel,
        pack_f32: impl FnOnce(&Tensor, Option<&Tensor>) -> Result<F32>,
        pack_bf16: impl FnOnce(&Tensor, Option<&Tensor>) -> Result<Bf16>,
        candle: impl FnOnce(Tensor, Option<Tensor>) -> C,
    ) -> Result<Self> {
        let ours = ours && weight.device().is_cpu();
        Ok(match weight.dtype() {
            DType::F32 if ours => Self::Packed(Arc::new(pack_f32(&weight, bias.as_ref())?)),
            DType::BF16 if ours && bf16_kernel == Microkernel::Avx512Bf16 => {
                Self::PackedBf16(Arc::new(pack_bf16(&weight, bias.as_ref())?))
            }
            DType::BF16 if ours => {
                let weight = weight.to_dtype(DType::F32)?;
                let bias = bias.map(|b| b.to_dtype(DType::F32)).transpose()?;
                Self::WidenedBf16(Arc::new(pack_f32(&weight, bias.as_ref())?))
            }
            _ => Self::Candle(candle(weight, bias)),
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Packed(kernel) => kernel.forward(x),
            Self::PackedBf16(kernel) => kernel.forward(x),
            Self::WidenedBf16(kernel) => kernel
                .forward(&x.to_dtype(DType::F32)?)?
                .to_dtype(DType::BF16),
            Self::Candle(layer) => layer.forward(x),
        }
    }
}
