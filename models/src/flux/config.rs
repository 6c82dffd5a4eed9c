//! `transformer/config.json` of a diffusers `FluxTransformer2DModel`, with diffusers' defaults for
//! absent keys (FLUX.1's full-size shapes).
use std::path::Path;

use serde::Deserialize;

use crate::error::ModelError;
use crate::loader::read_json;
use crate::Result;

fn d_patch_size() -> usize {
    1
}
fn d_in_channels() -> usize {
    64
}
fn d_num_layers() -> usize {
    19
}
fn d_num_single_layers() -> usize {
    38
}
fn d_attention_head_dim() -> usize {
    128
}
fn d_num_attention_heads() -> usize {
    24
}
fn d_joint_attention_dim() -> usize {
    4096
}
fn d_pooled_projection_dim() -> usize {
    768
}
fn d_axes_dims_rope() -> Vec<usize> {
    vec![16, 56, 56]
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FluxTransformerConfig {
    #[serde(default = "d_patch_size")]
    pub patch_size: usize,
    #[serde(default = "d_in_channels")]
    pub in_channels: usize,
    /// `None` means `in_channels`.
    #[serde(default)]
    pub out_channels: Option<usize>,
    /// Double-stream (joint attention) blocks.
    #[serde(default = "d_num_layers")]
    pub num_layers: usize,
    /// Single-stream (parallel attention + MLP) blocks.
    #[serde(default = "d_num_single_layers")]
    pub num_single_layers: usize,
    #[serde(default = "d_attention_head_dim")]
    pub attention_head_dim: usize,
    #[serde(default = "d_num_attention_heads")]
    pub num_attention_heads: usize,
    /// Width of the T5 sequence the context embedder projects.
    #[serde(default = "d_joint_attention_dim")]
    pub joint_attention_dim: usize,
    /// Width of the pooled CLIP embedding.
    #[serde(default = "d_pooled_projection_dim")]
    pub pooled_projection_dim: usize,
    /// FLUX.1-dev's distilled guidance embedding (schnell has none).
    #[serde(default)]
    pub guidance_embeds: bool,
    /// Rotary dimensions of the (text/index, row, column) position axes.
    #[serde(default = "d_axes_dims_rope")]
    pub axes_dims_rope: Vec<usize>,
}

impl Default for FluxTransformerConfig {
    fn default() -> Self {
        // Every field has a serde default, so the empty object parses.
        serde_json::from_str("{}").expect("all fields have defaults")
    }
}

impl FluxTransformerConfig {
    /// Reads and validates a `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let config: Self = read_json(path, "FLUX transformer config")?;
        config
            .validate()
            .map_err(|message| ModelError::invalid_file(path, message))?;
        Ok(config)
    }

    pub fn from_json(text: &str) -> std::result::Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Width of the hidden states: heads * head_dim.
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// Channels of the velocity the model predicts.
    pub fn out_channels(&self) -> usize {
        self.out_channels.unwrap_or(self.in_channels)
    }

    /// Rejects shapes diffusers' model cannot run (or this engine does not), naming the key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let positive = [
            ("in_channels", self.in_channels),
            ("attention_head_dim", self.attention_head_dim),
            ("num_attention_heads", self.num_attention_heads),
            ("joint_attention_dim", self.joint_attention_dim),
            ("pooled_projection_dim", self.pooled_projection_dim),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(format!("FLUX transformer config {key} = 0"));
            }
        }
        if self.out_channels == Some(0) {
            return Err("FLUX transformer config out_channels = 0".to_owned());
        }
        // The pipeline packs 2x2 latent patches itself; the model's own patching is 1 in every
        // released FLUX.1 and its proj_out would otherwise emit patch_size^2 * out_channels.
        if self.patch_size != 1 {
            return Err(format!(
                "FLUX transformer config patch_size = {} (only 1 is supported)",
                self.patch_size
            ));
        }
        // Position ids have 3 columns (index, row, column), one rotary axis each.
        if self.axes_dims_rope.len() != 3 {
            return Err(format!(
                "FLUX transformer config axes_dims_rope = {:?}: expected 3 axes",
                self.axes_dims_rope
            ));
        }
        if let Some(odd) = self
            .axes_dims_rope
            .iter()
            .find(|d| **d == 0 || **d % 2 == 1)
        {
            return Err(format!(
                "FLUX transformer config axes_dims_rope = {:?}: axis dimension {odd} is not a positive even number",
                self.axes_dims_rope
            ));
        }
        let rope_dim: usize = self.axes_dims_rope.iter().sum();
        if rope_dim != self.attention_head_dim {
            return Err(format!(
                "FLUX transformer config axes_dims_rope = {:?} sums to {rope_dim}, attention_head_dim is {}",
                self.axes_dims_rope, self.attention_head_dim
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_flux1_dev_shapes_without_guidance() {
        let config =
            FluxTransformerConfig::from_json(r#"{"_class_name": "FluxTransformer2DModel"}"#)
                .expect("parses");
        assert_eq!(config.in_channels, 64);
        assert_eq!(config.out_channels(), 64);
        assert_eq!(config.num_layers, 19);
        assert_eq!(config.num_single_layers, 38);
        assert_eq!(config.inner_dim(), 3072);
        assert_eq!(config.joint_attention_dim, 4096);
        assert_eq!(config.pooled_projection_dim, 768);
        assert!(!config.guidance_embeds);
        assert_eq!(config.axes_dims_rope, vec![16, 56, 56]);
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config, FluxTransformerConfig::default());
    }

    #[test]
    fn fixture_config_parses() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/parity/flux-schnell-4step/model/transformer/config.json"
        ));
        let config = FluxTransformerConfig::from_file(path).expect("valid config");
        assert_eq!(config.num_layers, 1);
        assert_eq!(config.num_single_layers, 2);
        assert_eq!(config.inner_dim(), 32);
        assert_eq!(config.out_channels, None);
        assert_eq!(config.axes_dims_rope, vec![4, 6, 6]);
    }

    #[test]
    fn validate_names_the_bad_key() {
        let bad = |json: &str| {
            FluxTransformerConfig::from_json(json)
                .expect("parses")
                .validate()
                .expect_err("invalid")
        };
        let err = bad(r#"{"attention_head_dim": 16, "axes_dims_rope": [4, 6, 8]}"#);
        assert!(
            err.contains("axes_dims_rope") && err.contains("18"),
            "{err}"
        );
        let err = bad(r#"{"patch_size": 2}"#);
        assert!(err.contains("patch_size"), "{err}");
        let err = bad(r#"{"attention_head_dim": 15, "axes_dims_rope": [3, 6, 6]}"#);
        assert!(err.contains("axes_dims_rope"), "{err}");
        let err = bad(r#"{"attention_head_dim": 16, "axes_dims_rope": [8, 8]}"#);
        assert!(err.contains("3 axes"), "{err}");
        let err = bad(r#"{"num_attention_heads": 0}"#);
        assert!(err.contains("num_attention_heads"), "{err}");
    }
}
