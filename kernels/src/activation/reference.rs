//! The activations with plain candle ops: the kernel's oracle and the fallback path.

use candle_core::{Result, Tensor, D};

use super::ActivationKind;

/// `kind` computed by candle's own element-wise ops.
pub fn activate(x: &Tensor, kind: ActivationKind) -> Result<Tensor> {
    let out_dims = kind.output_dims(x.dims())?;
    match kind {
        ActivationKind::GeluErf => x.gelu_erf(),
        ActivationKind::GeluTanh => x.gelu(),
        ActivationKind::QuickGelu => x * (x * -1.702)?.exp()?.affine(1.0, 1.0)?.recip()?,
        ActivationKind::Geglu => {
            let half = out_dims[out_dims.len() - 1];
            let value = x.narrow(D::Minus1, 0, half)?;
            let gate = x.narrow(D::Minus1, half, half)?;
            value * gate.gelu_erf()?
        }
    }
}
