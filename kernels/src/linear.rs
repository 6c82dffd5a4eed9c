//! A linear layer y = x Wᵀ + b over the last dimension, as a GEMM with x's rows as A (packed on
//! the fly) and Wᵀ packed once at load as B. Each row of y depends only on its row of x (and
//! by the GEMM's promise not on the row count or threads).

mod op;
mod reference;

pub use op::LinearKernel;
pub use reference::linear_reference;
