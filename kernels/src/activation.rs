//! GELU activations and the GEGLU gate, as one pass over the data with a vectorised erf/exp.
//!
//! Each function runs [`ActivationOp`] for CPU f32/f16/bf16 inputs and falls back to the plain
//! candle ops of [`reference`] everywhere else (CUDA, Metal, f64, tensors tracked for backprop).

mod math;
mod op;
pub mod reference;

use candle_core::{bail, DType, Result, Tensor};

pub use op::ActivationOp;

use crate::Simd;

/// Which function the op applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActivationKind {
    /// torch's exact GELU, x * (1 + erf(x / sqrt 2)) / 2.
    GeluErf,
    /// torch's tanh-approximated GELU (`approximate="tanh"`).
    GeluTanh,
    /// CLIP's x * sigmoid(1.702 x).
    QuickGelu,
    /// diffusers' GEGLU on the projection's output (..., 2n): the first half times the exact
    /// GELU of the second half, giving (..., n).
    Geglu,
}

impl ActivationKind {
    /// The output shape for an input shape (GEGLU halves the last dimension).
    pub(crate) fn output_dims(self, dims: &[usize]) -> Result<Vec<usize>> {
        if self != ActivationKind::Geglu {
            return Ok(dims.to_vec());
        }
        match dims.split_last() {
            Some((&last, rest)) if last % 2 == 0 => {
                let mut out = rest.to_vec();
                out.push(last / 2);
                Ok(out)
            }
            _ => {
                bail!("geglu: the last dimension must be even (value and gate), got shape {dims:?}")
            }
        }
    }
}

/// torch's exact (erf) GELU.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    activate(x, ActivationKind::GeluErf)
}

/// torch's tanh GELU (candle's `Tensor::gelu`).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    activate(x, ActivationKind::GeluTanh)
}

/// CLIP's quick GELU, x * sigmoid(1.702 x).
pub fn quick_gelu(x: &Tensor) -> Result<Tensor> {
    activate(x, ActivationKind::QuickGelu)
}

/// GEGLU: `x` is (..., 2n), the value then the gate (torch.chunk(2, -1)); returns
/// value * gelu_erf(gate), (..., n).
pub fn geglu(x: &Tensor) -> Result<Tensor> {
    activate(x, ActivationKind::Geglu)
}

/// `kind` applied with the kernel where it can run, with [`reference::activate`] otherwise.
pub fn activate(x: &Tensor, kind: ActivationKind) -> Result<Tensor> {
    kind.output_dims(x.dims())?;
    let kernel_dtype = matches!(x.dtype(), DType::F32 | DType::F16 | DType::BF16);
    if !x.device().is_cpu() || x.track_op() || !kernel_dtype {
        return reference::activate(x, kind);
    }
    x.contiguous()?
        .apply_op1_no_bwd(&ActivationOp::new(kind, Simd::detected()))
}
