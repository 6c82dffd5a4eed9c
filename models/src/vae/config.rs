//! `vae/config.json` of a diffusers `AutoencoderKL`, with diffusers' defaults for absent keys.
use serde::Deserialize;

use crate::error::ModelError;
use crate::Result;

fn d_three() -> usize {
    3
}
fn d_down() -> Vec<String> {
    vec!["DownEncoderBlock2D".into()]
}
fn d_up() -> Vec<String> {
    vec!["UpDecoderBlock2D".into()]
}
fn d_channels() -> Vec<usize> {
    vec![64]
}
fn d_one() -> usize {
    1
}
fn d_silu() -> String {
    "silu".into()
}
fn d_latent() -> usize {
    4
}
fn d_groups() -> usize {
    32
}
fn d_scaling() -> f64 {
    0.18215
}
fn d_true() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
pub struct VaeConfig {
    #[serde(default = "d_three")]
    pub in_channels: usize,
    #[serde(default = "d_three")]
    pub out_channels: usize,
    #[serde(default = "d_down")]
    pub down_block_types: Vec<String>,
    #[serde(default = "d_up")]
    pub up_block_types: Vec<String>,
    #[serde(default = "d_channels")]
    pub block_out_channels: Vec<usize>,
    #[serde(default = "d_one")]
    pub layers_per_block: usize,
    #[serde(default = "d_silu")]
    pub act_fn: String,
    #[serde(default = "d_latent")]
    pub latent_channels: usize,
    #[serde(default = "d_groups")]
    pub norm_num_groups: usize,
    #[serde(default)]
    pub sample_size: Option<serde_json::Value>,
    #[serde(default = "d_scaling")]
    pub scaling_factor: f64,
    #[serde(default)]
    pub shift_factor: Option<f64>,
    /// Per-channel latent statistics some VAEs publish for their pipelines.
    #[serde(default)]
    pub latents_mean: Option<Vec<f64>>,
    #[serde(default)]
    pub latents_std: Option<Vec<f64>>,
    /// diffusers runs such a VAE in f32 even in an f16 pipeline.
    #[serde(default = "d_true")]
    pub force_upcast: bool,
    #[serde(default = "d_true")]
    pub use_quant_conv: bool,
    #[serde(default = "d_true")]
    pub use_post_quant_conv: bool,
    #[serde(default = "d_true")]
    pub mid_block_add_attention: bool,
}

impl VaeConfig {
    pub fn from_json(text: &str) -> std::result::Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Rejects what this engine does not implement, naming the key and its value.
    pub fn validate(&self) -> Result<()> {
        let n = self.block_out_channels.len();
        if n == 0 {
            return Err(ModelError::Unsupported(
                "VAE config block_out_channels = []".into(),
            ));
        }
        for (key, kinds, expected) in [
            (
                "down_block_types",
                &self.down_block_types,
                "DownEncoderBlock2D",
            ),
            ("up_block_types", &self.up_block_types, "UpDecoderBlock2D"),
        ] {
            if kinds.len() != n {
                return Err(ModelError::Unsupported(format!(
                    "VAE config has {} {key} for {n} block_out_channels",
                    kinds.len()
                )));
            }
            if let Some(other) = kinds.iter().find(|k| k.as_str() != expected) {
                return Err(ModelError::Unsupported(format!(
                    "VAE config {key} = {other:?}"
                )));
            }
        }
        Ok(())
    }
}
