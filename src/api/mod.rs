//! The HTTP surface: wire types (what clients send and receive).
pub mod wire;
