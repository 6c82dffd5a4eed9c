//! diffusers' `UNet2DConditionModel`: config, blocks and forward pass.
mod blocks;
pub mod config;
mod model;
mod transformer;

pub use config::{LayerDepths, PerBlock, SampleSize, UNetConfig};
pub use model::{AddedConditions, UNet2DConditionModel};
