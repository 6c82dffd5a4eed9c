//! `config.json` of a CLIP text encoder, with transformers 5.24 `CLIPTextConfig` defaults.
use std::path::Path;

use serde::Deserialize;

use crate::error::{ModelError, Result};
use crate::loader::read_json;

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ClipTextConfig {
    #[serde(default = "defaults::vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "defaults::hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "defaults::intermediate_size")]
    pub intermediate_size: usize,
    /// `null` in a file means transformers' default too.
    #[serde(
        default = "defaults::projection_dim",
        deserialize_with = "null_as_default::projection_dim"
    )]
    pub projection_dim: usize,
    #[serde(default = "defaults::num_hidden_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "defaults::num_attention_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "defaults::max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default = "defaults::hidden_act")]
    pub hidden_act: String,
    #[serde(
        default = "defaults::layer_norm_eps",
        deserialize_with = "null_as_default::layer_norm_eps"
    )]
    pub layer_norm_eps: f64,
    /// transformers allows a list; the pooled output uses the first id.
    #[serde(default = "defaults::eos_token_id")]
    pub eos_token_id: TokenIds,
    #[serde(default)]
    pub architectures: Vec<String>,
}

/// `eos_token_id` is an int or a list of ints in transformers' configs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn first(&self) -> Option<u32> {
        match self {
            TokenIds::One(id) => Some(*id),
            TokenIds::Many(ids) => ids.first().copied(),
        }
    }
}

/// The activations transformers' `ACT2FN` offers that CLIP checkpoints use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipActivation {
    /// `x * sigmoid(1.702 x)` (OpenAI CLIP, SD 1.x).
    QuickGelu,
    /// erf-exact GELU (`nn.functional.gelu`; OpenCLIP, SD 2.x, SDXL's second encoder).
    Gelu,
    /// The tanh approximation (`gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`).
    GeluTanh,
    Relu,
    Silu,
}

impl ClipTextConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let config: Self = read_json(path, "CLIP text encoder config")?;
        config
            .validate()
            .map_err(|message| ModelError::invalid_file(path, message))?;
        Ok(config)
    }

    /// The checks transformers makes, plus the activation being one this engine has.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        self.activation().map(|_| ())
    }

    /// `CLIPTextModelWithProjection` checkpoints carry `text_projection.weight`.
    pub fn has_projection(&self) -> bool {
        self.architectures
            .iter()
            .any(|a| a == "CLIPTextModelWithProjection")
    }

    pub fn activation(&self) -> std::result::Result<ClipActivation, String> {
        match self.hidden_act.as_str() {
            "quick_gelu" => Ok(ClipActivation::QuickGelu),
            "gelu" => Ok(ClipActivation::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(ClipActivation::GeluTanh),
            "relu" => Ok(ClipActivation::Relu),
            "silu" | "swish" => Ok(ClipActivation::Silu),
            other => Err(format!("hidden_act {other:?} is not supported")),
        }
    }

    pub fn eos_token_id(&self) -> u32 {
        self.eos_token_id.first().unwrap_or(defaults::EOS_TOKEN_ID)
    }
}

mod defaults {
    use super::TokenIds;

    pub const EOS_TOKEN_ID: u32 = 49407;
    pub const PROJECTION_DIM: usize = 512;
    pub const LAYER_NORM_EPS: f64 = 1e-5;

    pub fn projection_dim() -> usize {
        PROJECTION_DIM
    }
    pub fn layer_norm_eps() -> f64 {
        LAYER_NORM_EPS
    }
    pub fn vocab_size() -> usize {
        49408
    }
    pub fn hidden_size() -> usize {
        512
    }
    pub fn intermediate_size() -> usize {
        2048
    }
    pub fn num_hidden_layers() -> usize {
        12
    }
    pub fn num_attention_heads() -> usize {
        8
    }
    pub fn max_position_embeddings() -> usize {
        77
    }
    pub fn hidden_act() -> String {
        "quick_gelu".to_owned()
    }
    pub fn eos_token_id() -> TokenIds {
        TokenIds::One(EOS_TOKEN_ID)
    }
}

/// Fields that transformers types as `X | None` with a default: absent or `null` both mean the default.
mod null_as_default {
    use serde::{Deserialize, Deserializer};

    use super::defaults;

    pub fn projection_dim<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        Ok(Option::<usize>::deserialize(d)?.unwrap_or(defaults::PROJECTION_DIM))
    }

    pub fn layer_norm_eps<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(defaults::LAYER_NORM_EPS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_keys_take_transformers_defaults() {
        let config: ClipTextConfig = serde_json::from_str("{}").expect("parses");
        assert_eq!(config.hidden_size, 512);
        assert_eq!(config.intermediate_size, 2048);
        assert_eq!(config.num_hidden_layers, 12);
        assert_eq!(config.num_attention_heads, 8);
        assert_eq!(config.max_position_embeddings, 77);
        assert_eq!(config.projection_dim, 512);
        assert_eq!(config.layer_norm_eps, 1e-5);
        assert_eq!(config.eos_token_id(), 49407);
        assert_eq!(config.activation(), Ok(ClipActivation::QuickGelu));
        assert!(!config.has_projection());
    }

    #[test]
    fn nulls_lists_and_activations() {
        let config: ClipTextConfig = serde_json::from_str(
            r#"{"projection_dim": null, "layer_norm_eps": null, "eos_token_id": [2, 7],
                "hidden_act": "gelu", "architectures": ["CLIPTextModelWithProjection"]}"#,
        )
        .expect("parses");
        assert_eq!(config.projection_dim, 512);
        assert_eq!(config.layer_norm_eps, 1e-5);
        assert_eq!(config.eos_token_id(), 2);
        assert_eq!(config.activation(), Ok(ClipActivation::Gelu));
        assert!(config.has_projection());
        let odd: ClipTextConfig =
            serde_json::from_str(r#"{"hidden_act": "mish"}"#).expect("parses");
        assert!(odd.validate().is_err());
        let heads: ClipTextConfig =
            serde_json::from_str(r#"{"hidden_size": 10, "num_attention_heads": 3}"#)
                .expect("parses");
        assert!(heads.validate().is_err());
    }
}
