//! Building blocks shared by the UNet and the VAE, with diffusers' exact formulas and weight names.
pub mod activation;
pub mod attention;
#[cfg(feature = "flash-attn")]
mod attention_cuda;
pub mod banded;
pub mod conv;
pub mod feed_forward;
pub mod linear;
pub mod mid_block;
pub mod norm;
mod packed;
pub mod resnet;
pub mod sampling;
#[cfg(test)]
mod test_util;
pub mod timestep;

pub use activation::Activation;
pub use attention::Attention;
pub use conv::{conv2d, conv2d_no_bias, Conv2d};
pub use feed_forward::FeedForward;
pub use linear::{linear, linear_no_bias, Linear};
pub use mid_block::{MidBlock2D, SpatialSelfAttention};
pub use norm::{group_norm, GroupNorm};
pub use resnet::{ResnetBlock2D, ResnetConfig, TimeEmbeddingNorm};
pub use sampling::{Downsample2D, Upsample2D};
pub use timestep::{timestep_embedding, TimestepEmbedding};
