//! imago's compute kernels as candle custom ops. Each kernel has a plain reference implementation
//! that is its test oracle.

pub mod activation;
pub mod attention;
pub mod conv2d;
mod element;
pub mod gemm;
pub mod gemm_bf16;
pub mod group_norm;
pub mod linear;
mod math;
mod simd;

pub use activation::{
    activate, geglu, gelu_erf, gelu_tanh, quick_gelu, ActivationKind, ActivationOp,
};
pub use attention::{attention_reference, scaled_dot_product_attention, AttentionOp};
pub use conv2d::{conv2d_reference, Conv2dGeometry, Conv2dKernel};
pub use gemm::{
    gemm, gemm_reference, Bias, GemmOutput, Isa, KMajor, LaneMajor, PackedMatrix, PanelSource,
};
pub use group_norm::{group_norm, group_norm_reference, Activation, GroupNormOp, GroupNormRows};
pub use linear::{linear_reference, LinearKernel};
pub use simd::Simd;
