//! FLUX.1's transformer (diffusers' `FluxTransformer2DModel`) and FluxPipeline's latent packing.
mod attention;
mod blocks;
pub mod config;
mod embeddings;
mod model;
mod norm;
mod packing;
mod rope;
#[cfg(test)]
mod tests;

pub use config::FluxTransformerConfig;
pub use model::FluxTransformer2DModel;
pub use packing::{latent_image_ids, pack_latents, text_ids, unpack_latents};
pub use rope::{FluxPosEmbed, RotaryEmbedding};
