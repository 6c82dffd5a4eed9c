//! imago's diffusion engine: loaders, text encoders, UNet, VAE, schedulers and pipelines on candle.
//! No async runtime and no HTTP here: the server reaches this crate through a dedicated thread.
pub mod allocator;
pub mod bench;
pub mod builtin;
pub mod candle_pool;
pub mod device;
pub mod error;
pub mod flux;
pub mod loader;
pub mod nn;
pub mod pipeline;
pub mod preview;
pub mod rng;
pub mod schedulers;
pub mod specs;
pub mod taesd;
pub mod text;
pub mod tiny_weights;
pub mod unet;
pub mod vae;

pub use candle_core::{DType, Tensor};
pub use error::{ModelError, Result};
