//! The activations diffusers' `get_activation` knows, picked by their config name.
use candle_core::{Result, Tensor};

use crate::error::ModelError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    Mish,
    /// torch's `nn.GELU()`: the exact, erf-based gelu.
    Gelu,
    Relu,
}

impl Activation {
    /// `key` names the config field, for the error message.
    pub fn from_config(key: &str, name: &str) -> crate::Result<Self> {
        match name {
            "silu" | "swish" => Ok(Self::Silu),
            "mish" => Ok(Self::Mish),
            "gelu" => Ok(Self::Gelu),
            "relu" => Ok(Self::Relu),
            other => Err(ModelError::Unsupported(format!("{key} = {other:?}"))),
        }
    }

    pub fn forward(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Silu => candle_nn::ops::silu(x),
            // mish(x) = x * tanh(softplus(x)); softplus written stably as max(x,0) + ln(1 + e^-|x|).
            Self::Mish => {
                let softplus = (x.relu()? + x.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?)?;
                x * softplus.tanh()?
            }
            Self::Gelu => imago_kernels::gelu_erf(x),
            Self::Relu => x.relu(),
        }
    }
}
