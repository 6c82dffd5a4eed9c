//! imago's compute kernels as candle custom ops. Each kernel has a plain reference implementation
//! that is its test oracle.

pub mod activation;
pub mod attention;
mod element;
pub mod group_norm;
mod math;
mod simd;

pub use activation::{
    activate, geglu, gelu_erf, gelu_tanh, quick_gelu, ActivationKind, ActivationOp,
};
pub use attention::{attention_reference, scaled_dot_product_attention, AttentionOp};
pub use group_norm::{group_norm, group_norm_reference, Activation, GroupNormOp};
pub use simd::Simd;
