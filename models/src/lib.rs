//! imago's diffusion engine: loaders, text encoders, UNet, VAE, schedulers and pipelines on candle.
//! No async runtime and no HTTP here: the server reaches this crate through a dedicated thread.
pub mod error;
pub mod rng;
pub mod schedulers;

pub use error::{ModelError, Result};
