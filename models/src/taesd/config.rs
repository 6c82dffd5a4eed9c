//! `config.json` of a diffusers `AutoencoderTiny` (TAESD / TAESDXL / TAEF1), with diffusers'
//! defaults for absent keys.
use std::path::Path;

use serde::Deserialize;

use crate::error::{ModelError, Result};
use crate::loader::read_json;
use crate::nn::Activation;

fn d_three() -> usize {
    3
}
fn d_channels() -> Vec<usize> {
    vec![64; 4]
}
fn d_relu() -> String {
    "relu".into()
}
fn d_nearest() -> String {
    "nearest".into()
}
fn d_latent() -> usize {
    4
}
fn d_two() -> usize {
    2
}
fn d_encoder_blocks() -> Vec<usize> {
    vec![1, 3, 3, 3]
}
fn d_decoder_blocks() -> Vec<usize> {
    vec![3, 3, 3, 1]
}
fn d_magnitude() -> f64 {
    3.0
}
fn d_shift() -> f64 {
    0.5
}
fn d_one() -> f64 {
    1.0
}

#[derive(Debug, Clone, Deserialize)]
pub struct TinyAutoencoderConfig {
    #[serde(default = "d_three")]
    pub in_channels: usize,
    #[serde(default = "d_three")]
    pub out_channels: usize,
    #[serde(default = "d_channels")]
    pub encoder_block_out_channels: Vec<usize>,
    #[serde(default = "d_channels")]
    pub decoder_block_out_channels: Vec<usize>,
    #[serde(default = "d_relu")]
    pub act_fn: String,
    #[serde(default = "d_nearest")]
    pub upsample_fn: String,
    #[serde(default = "d_latent")]
    pub latent_channels: usize,
    #[serde(default = "d_two")]
    pub upsampling_scaling_factor: usize,
    /// Stage `i` of the encoder is a conv followed by `num_encoder_blocks[i]` residual blocks.
    #[serde(default = "d_encoder_blocks")]
    pub num_encoder_blocks: Vec<usize>,
    /// Stage `i` of the decoder is `num_decoder_blocks[i]` residual blocks, an upsample (all
    /// stages but the last) and a conv.
    #[serde(default = "d_decoder_blocks")]
    pub num_decoder_blocks: Vec<usize>,
    /// Only for 8-bit latent storage (`scale_latents`); `encode`/`decode` do not use it.
    #[serde(default = "d_magnitude")]
    pub latent_magnitude: f64,
    /// Only for 8-bit latent storage (`scale_latents`); `encode`/`decode` do not use it.
    #[serde(default = "d_shift")]
    pub latent_shift: f64,
    #[serde(default)]
    pub force_upcast: bool,
    /// What pipelines divide latents by before `decode` (1.0 for TAESD: none).
    #[serde(default = "d_one")]
    pub scaling_factor: f64,
    /// What pipelines that use it (FLUX) add after dividing by `scaling_factor`.
    #[serde(default)]
    pub shift_factor: f64,
}

impl TinyAutoencoderConfig {
    pub fn from_json(text: &str) -> std::result::Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        read_json(path, "configuration of the tiny autoencoder")
    }

    /// The activation `act_fn` names (diffusers' `get_activation` set).
    pub fn activation(&self) -> Result<Activation> {
        Activation::from_config("act_fn", &self.act_fn)
    }

    /// Rejects what diffusers rejects, or what it would only fail on at forward time, and what
    /// this engine does not implement, naming the key and its value.
    pub fn validate(&self) -> Result<()> {
        let unsupported = |message: String| Err(ModelError::Unsupported(message));
        self.activation()?;
        if self.upsample_fn != "nearest" {
            return unsupported(format!(
                "tiny autoencoder config upsample_fn = {:?} (only \"nearest\")",
                self.upsample_fn
            ));
        }
        if self.upsampling_scaling_factor == 0 {
            return unsupported("tiny autoencoder config upsampling_scaling_factor = 0".into());
        }
        for (key, channels, blocks_key, blocks) in [
            (
                "encoder_block_out_channels",
                &self.encoder_block_out_channels,
                "num_encoder_blocks",
                &self.num_encoder_blocks,
            ),
            (
                "decoder_block_out_channels",
                &self.decoder_block_out_channels,
                "num_decoder_blocks",
                &self.num_decoder_blocks,
            ),
        ] {
            if channels.is_empty() {
                return unsupported(format!("tiny autoencoder config {key} = []"));
            }
            if channels.len() != blocks.len() {
                return unsupported(format!(
                    "tiny autoencoder config has {} {key} for {} {blocks_key}",
                    channels.len(),
                    blocks.len()
                ));
            }
            // Each stage's layers map its width to itself, so diffusers' forward only runs when
            // every stage has the same width.
            if channels.iter().any(|&c| c != channels[0]) {
                return unsupported(format!(
                    "tiny autoencoder config {key} = {channels:?} (stages of different widths)"
                ));
            }
        }
        Ok(())
    }
}
