//! imago's compute kernels as candle custom ops. Each kernel has a plain reference implementation
//! that is its test oracle.

pub mod gemm;
pub mod group_norm;
mod math;

pub use gemm::{
    gemm, gemm_reference, Bias, GemmOutput, Isa, KMajor, LaneMajor, PackedMatrix, PanelSource,
};
pub use group_norm::{group_norm, group_norm_reference, Activation, GroupNormOp};
