//! imago's compute kernels as candle custom ops. Each kernel has a plain reference implementation
//! that is its test oracle.
