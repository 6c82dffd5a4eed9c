//! diffusers' `AutoencoderKL` (the SD / SDXL / FLUX VAE).
pub mod config;
mod decoder;
mod encoder;
mod model;
mod tiling;

pub use config::VaeConfig;
pub use model::{AutoencoderKL, DiagonalGaussian};
pub use tiling::{TileSizes, TILING_MIN_PIXELS};
