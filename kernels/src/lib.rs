//! imago's compute kernels as candle custom ops. Each kernel has a plain reference implementation
//! that is its test oracle.

pub mod gemm_bf16;
pub mod group_norm;
mod math;

pub use group_norm::{group_norm, group_norm_reference, Activation, GroupNormOp};
