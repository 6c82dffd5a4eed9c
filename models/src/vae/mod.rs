//! diffusers' `AutoencoderKL` (the SD / SDXL / FLUX VAE).
pub mod config;
mod decoder;
mod encoder;
mod model;

pub use config::VaeConfig;
pub use model::{AutoencoderKL, DiagonalGaussian};
