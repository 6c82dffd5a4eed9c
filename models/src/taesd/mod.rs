//! diffusers' `AutoencoderTiny`: the TAESD / TAESDXL / TAEF1 tiny autoencoders used for previews.
//!
//! [`TinyAutoencoder::decode`] takes exactly what diffusers' pipelines pass to `vae.decode`:
//! `latents / scaling_factor + shift_factor` with the TAE's own config values. TAESD and TAESDXL
//! have `scaling_factor = 1.0` and no shift, so they decode the UNet's latents (e.g. the
//! predicted x0) as they are; for FLUX (TAEF1) the latents are the 16-channel unpacked ones
//! (batch, 16, h/8, w/8), not the transformer's packed sequence. The output is NCHW, nominally in
//! [-1, 1] but not clamped (diffusers clamps later, when it converts to pixels).
pub mod config;
mod model;

pub use config::TinyAutoencoderConfig;
pub use model::TinyAutoencoder;
