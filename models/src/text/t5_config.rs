//! `config.json` of a T5 encoder, with transformers 5.24 `T5Config` defaults.
use std::path::Path;

use serde::Deserialize;

use super::clip_config::TokenIds;
use crate::error::{ModelError, Result};
use crate::loader::read_json;

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct T5Config {
    #[serde(default = "defaults::vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "defaults::d_model")]
    pub d_model: usize,
    /// Width of one attention head.
    #[serde(default = "defaults::d_kv")]
    pub d_kv: usize,
    #[serde(default = "defaults::d_ff")]
    pub d_ff: usize,
    #[serde(default = "defaults::num_layers")]
    pub num_layers: usize,
    #[serde(default = "defaults::num_heads")]
    pub num_heads: usize,
    #[serde(default = "defaults::relative_attention_num_buckets")]
    pub relative_attention_num_buckets: usize,
    #[serde(default = "defaults::relative_attention_max_distance")]
    pub relative_attention_max_distance: usize,
    #[serde(default = "defaults::layer_norm_epsilon")]
    pub layer_norm_epsilon: f64,
    /// `"{act}"` or `"gated-{act}"`; `dense_act_fn` and `is_gated_act` derive from it.
    #[serde(default = "defaults::feed_forward_proj")]
    pub feed_forward_proj: String,
    /// Written by transformers next to `feed_forward_proj`; a value in the file wins, as there.
    #[serde(default)]
    pub dense_act_fn: Option<String>,
    #[serde(default)]
    pub is_gated_act: Option<bool>,
    #[serde(default = "defaults::pad_token_id")]
    pub pad_token_id: Option<u32>,
    #[serde(default = "defaults::eos_token_id")]
    pub eos_token_id: Option<TokenIds>,
}

/// The activations of transformers' `ACT2FN` that T5 checkpoints use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum T5Activation {
    Relu,
    /// erf-exact GELU (`"gelu"`).
    Gelu,
    /// The tanh approximation (`"gelu_new"`, what `"gated-gelu"` means, and its aliases).
    GeluTanh,
    Silu,
}

impl T5Config {
    pub fn from_file(path: &Path) -> Result<Self> {
        let config: Self = read_json(path, "T5 text encoder config")?;
        config
            .validate()
            .map_err(|message| ModelError::invalid_file(path, message))?;
        Ok(config)
    }

    /// transformers' `validate_architecture`, plus what this engine's encoder needs.
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.feed_forward_parts()?;
        self.activation()?;
        for (key, value) in [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("d_kv", self.d_kv),
            ("d_ff", self.d_ff),
            ("num_heads", self.num_heads),
        ] {
            if value == 0 {
                return Err(format!("{key} must be positive"));
            }
        }
        // Bidirectional buckets: half per direction, half of those exact; at least one exact bucket.
        let max_exact = self.relative_attention_num_buckets / 4;
        if max_exact == 0 {
            return Err(format!(
                "relative_attention_num_buckets {} must be at least 4",
                self.relative_attention_num_buckets
            ));
        }
        if self.relative_attention_max_distance <= max_exact {
            return Err(format!(
                "relative_attention_max_distance {} must exceed relative_attention_num_buckets / 4 = {max_exact}",
                self.relative_attention_max_distance
            ));
        }
        if !(self.layer_norm_epsilon.is_finite() && self.layer_norm_epsilon >= 0.0) {
            return Err(format!(
                "layer_norm_epsilon {} must be a finite non-negative number",
                self.layer_norm_epsilon
            ));
        }
        Ok(())
    }

    /// `(is_gated, activation name)` as `T5Config.__post_init__` splits `feed_forward_proj`.
    fn feed_forward_parts(&self) -> std::result::Result<(bool, &str), String> {
        let parts: Vec<&str> = self.feed_forward_proj.split('-').collect();
        match parts.as_slice() {
            [act] => Ok((false, act)),
            ["gated", act] => Ok((true, act)),
            _ => Err(format!(
                "feed_forward_proj {:?} is not of the form \"gated-{{ACT_FN}}\" or \"{{ACT_FN}}\"",
                self.feed_forward_proj
            )),
        }
    }

    /// The feed-forward block multiplies `act(wi_0 x)` with `wi_1 x`.
    pub fn is_gated(&self) -> bool {
        self.is_gated_act
            .unwrap_or_else(|| matches!(self.feed_forward_parts(), Ok((true, _))))
    }

    /// The activation name transformers ends up with (`"gated-gelu"` means `gelu_new`).
    pub fn dense_act_fn(&self) -> std::result::Result<String, String> {
        if let Some(name) = &self.dense_act_fn {
            return Ok(name.clone());
        }
        let (_, act) = self.feed_forward_parts()?;
        Ok(if self.feed_forward_proj == "gated-gelu" {
            "gelu_new".to_owned()
        } else {
            act.to_owned()
        })
    }

    pub fn activation(&self) -> std::result::Result<T5Activation, String> {
        let name = self.dense_act_fn()?;
        match name.as_str() {
            "relu" => Ok(T5Activation::Relu),
            "gelu" => Ok(T5Activation::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(T5Activation::GeluTanh),
            "silu" | "swish" => Ok(T5Activation::Silu),
            other => Err(format!(
                "dense_act_fn {other:?} (from feed_forward_proj {:?}) is not supported",
                self.feed_forward_proj
            )),
        }
    }

    /// Width of the concatenated attention heads.
    pub fn inner_dim(&self) -> usize {
        self.num_heads * self.d_kv
    }
}

mod defaults {
    use super::TokenIds;

    pub fn vocab_size() -> usize {
        32128
    }
    pub fn d_model() -> usize {
        512
    }
    pub fn d_kv() -> usize {
        64
    }
    pub fn d_ff() -> usize {
        2048
    }
    pub fn num_layers() -> usize {
        6
    }
    pub fn num_heads() -> usize {
        8
    }
    pub fn relative_attention_num_buckets() -> usize {
        32
    }
    pub fn relative_attention_max_distance() -> usize {
        128
    }
    pub fn layer_norm_epsilon() -> f64 {
        1e-6
    }
    pub fn feed_forward_proj() -> String {
        "relu".to_owned()
    }
    pub fn pad_token_id() -> Option<u32> {
        Some(0)
    }
    pub fn eos_token_id() -> Option<TokenIds> {
        Some(TokenIds::One(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_keys_take_transformers_defaults() {
        let config: T5Config = serde_json::from_str("{}").expect("parses");
        assert_eq!(config.vocab_size, 32128);
        assert_eq!(config.d_model, 512);
        assert_eq!(config.d_kv, 64);
        assert_eq!(config.d_ff, 2048);
        assert_eq!(config.num_layers, 6);
        assert_eq!(config.num_heads, 8);
        assert_eq!(config.relative_attention_num_buckets, 32);
        assert_eq!(config.relative_attention_max_distance, 128);
        assert_eq!(config.layer_norm_epsilon, 1e-6);
        assert_eq!(config.pad_token_id, Some(0));
        assert_eq!(config.eos_token_id, Some(TokenIds::One(1)));
        assert!(!config.is_gated());
        assert_eq!(config.activation(), Ok(T5Activation::Relu));
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn feed_forward_proj_as_transformers_splits_it() {
        let parse = |json: &str| serde_json::from_str::<T5Config>(json).expect("parses");
        let gelu = parse(r#"{"feed_forward_proj": "gated-gelu"}"#);
        assert!(gelu.is_gated());
        assert_eq!(gelu.dense_act_fn().as_deref(), Ok("gelu_new"));
        assert_eq!(gelu.activation(), Ok(T5Activation::GeluTanh));
        let silu = parse(r#"{"feed_forward_proj": "gated-silu"}"#);
        assert!(silu.is_gated());
        assert_eq!(silu.activation(), Ok(T5Activation::Silu));
        let plain = parse(r#"{"feed_forward_proj": "gelu"}"#);
        assert!(!plain.is_gated());
        assert_eq!(plain.activation(), Ok(T5Activation::Gelu));
        // Keys in the file override the derived values, as in transformers.
        let explicit = parse(
            r#"{"feed_forward_proj": "gated-gelu", "dense_act_fn": "relu", "is_gated_act": false}"#,
        );
        assert!(!explicit.is_gated());
        assert_eq!(explicit.activation(), Ok(T5Activation::Relu));
    }

    #[test]
    fn validate_names_the_bad_key() {
        let check = |json: &str, key: &str| {
            let config: T5Config = serde_json::from_str(json).expect("parses");
            let message = config.validate().expect_err(json);
            assert!(message.contains(key), "{message} should name {key}");
        };
        check(
            r#"{"feed_forward_proj": "gated-gelu-x"}"#,
            "feed_forward_proj",
        );
        check(
            r#"{"feed_forward_proj": "fancy-gelu"}"#,
            "feed_forward_proj",
        );
        check(r#"{"feed_forward_proj": "mish"}"#, "dense_act_fn");
        check(r#"{"num_heads": 0}"#, "num_heads");
        check(
            r#"{"relative_attention_num_buckets": 2}"#,
            "relative_attention_num_buckets",
        );
        check(
            r#"{"relative_attention_max_distance": 8}"#,
            "relative_attention_max_distance",
        );
        check(r#"{"layer_norm_epsilon": -1.0}"#, "layer_norm_epsilon");
    }

    #[test]
    fn reads_the_fixture_config() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/parity/flux-schnell-4step/model/text_encoder_2/config.json"
        ));
        let config = T5Config::from_file(path).expect("fixture config");
        assert_eq!(
            (
                config.d_model,
                config.d_kv,
                config.d_ff,
                config.num_layers,
                config.num_heads
            ),
            (32, 8, 64, 2, 4)
        );
        assert_eq!(config.vocab_size, 55);
        assert!(config.is_gated());
        assert_eq!(config.activation(), Ok(T5Activation::GeluTanh));
    }
}
