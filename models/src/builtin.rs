//! The built-in tiny models (`imago/tiny-sd`, `imago/tiny-sdxl`, `imago/tiny-flux`): real architectures at toy size,
//! configs embedded from `models/builtin/`, weights generated deterministically in memory.
//! They run without any download, for demos and tests; their pictures are noise-like.
use std::collections::HashMap;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{ModelError, Result};
use crate::loader::BuiltInModel;
use crate::schedulers::{FlowMatchConfig, SchedulerConfig};
use crate::text::{ClipTokenizer, T5Tokenizer};
use crate::tiny_weights::{deterministic_var_builder, tiny_clip_vocab};

const TINY_SD: &[(&str, &str)] = &[
    (
        "model_index",
        include_str!("../builtin/tiny-sd/model_index.json"),
    ),
    (
        "scheduler",
        include_str!("../builtin/tiny-sd/scheduler.json"),
    ),
    (
        "text_encoder",
        include_str!("../builtin/tiny-sd/text_encoder.json"),
    ),
    ("unet", include_str!("../builtin/tiny-sd/unet.json")),
    ("vae", include_str!("../builtin/tiny-sd/vae.json")),
];

const TINY_SDXL: &[(&str, &str)] = &[
    (
        "model_index",
        include_str!("../builtin/tiny-sdxl/model_index.json"),
    ),
    (
        "scheduler",
        include_str!("../builtin/tiny-sdxl/scheduler.json"),
    ),
    (
        "text_encoder",
        include_str!("../builtin/tiny-sdxl/text_encoder.json"),
    ),
    (
        "text_encoder_2",
        include_str!("../builtin/tiny-sdxl/text_encoder_2.json"),
    ),
    ("unet", include_str!("../builtin/tiny-sdxl/unet.json")),
    ("vae", include_str!("../builtin/tiny-sdxl/vae.json")),
];

const TINY_FLUX: &[(&str, &str)] = &[
    (
        "model_index",
        include_str!("../builtin/tiny-flux/model_index.json"),
    ),
    (
        "scheduler",
        include_str!("../builtin/tiny-flux/scheduler.json"),
    ),
    (
        "text_encoder",
        include_str!("../builtin/tiny-flux/text_encoder.json"),
    ),
    (
        "text_encoder_2",
        include_str!("../builtin/tiny-flux/text_encoder_2.json"),
    ),
    (
        "tokenizer_2",
        include_str!("../builtin/tiny-flux/tokenizer_2.json"),
    ),
    (
        "transformer",
        include_str!("../builtin/tiny-flux/transformer.json"),
    ),
    ("vae", include_str!("../builtin/tiny-flux/vae.json")),
];

/// The CLIP window of the built-in tokenizers, as the real ones.
const MODEL_MAX_LENGTH: usize = 77;

#[derive(Clone)]
pub struct BuiltInComponents {
    model: BuiltInModel,
    files: &'static [(&'static str, &'static str)],
    index: Value,
    vocab: HashMap<String, u32>,
    merges: Vec<(String, String)>,
}

impl BuiltInComponents {
    pub fn new(model: BuiltInModel) -> Result<Self> {
        let files = match model {
            BuiltInModel::TinySd => TINY_SD,
            BuiltInModel::TinySdxl => TINY_SDXL,
            BuiltInModel::TinyFlux => TINY_FLUX,
        };
        let (vocab, merges) = tiny_clip_vocab();
        let mut this = Self {
            model,
            files,
            index: Value::Null,
            vocab,
            merges,
        };
        this.index = this.json("model_index")?;
        Ok(this)
    }

    pub fn id(&self) -> String {
        self.model.to_string()
    }

    fn json(&self, component: &str) -> Result<Value> {
        let text = self
            .files
            .iter()
            .find(|(name, _)| *name == component)
            .map(|(_, text)| *text)
            .ok_or_else(|| ModelError::MissingFile {
                what: format!("component {component} of built-in model {}", self.model),
                path: format!("builtin/{}/{component}.json", self.model).into(),
            })?;
        serde_json::from_str(text).map_err(|e| {
            ModelError::invalid_file(format!("builtin {component}.json"), e.to_string())
        })
    }

    pub fn pipeline_class(&self) -> &str {
        self.index
            .get("_class_name")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// A listed component; the CLIP tokenizers are built in, so a tokenizer exists beside each
    /// text encoder.
    pub fn has_component(&self, name: &str) -> bool {
        let listed = |n: &str| self.files.iter().any(|(file, _)| *file == n);
        match name.strip_prefix("tokenizer") {
            Some(suffix) => listed(name) || listed(&format!("text_encoder{suffix}")),
            None => listed(name),
        }
    }

    pub fn index_value<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.index.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => serde_json::from_value(v.clone()).map(Some).map_err(|e| {
                ModelError::invalid_file("builtin model_index.json", format!("{key}: {e}"))
            }),
        }
    }

    /// A component's config; CLIP text encoders get the built-in CLIP tokenizer's vocabulary size
    /// and ids (T5's config carries its own tokenizer's).
    pub fn config<T: DeserializeOwned>(&self, component: &str) -> Result<T> {
        let mut value = self.json(component)?;
        let is_clip = value
            .get("model_type")
            .and_then(Value::as_str)
            .is_some_and(|t| t.starts_with("clip"));
        if is_clip {
            let n = self.vocab.len() as u64;
            let eos = self.vocab.get("<|endoftext|>").copied().unwrap_or(0) as u64;
            let bos = self.vocab.get("<|startoftext|>").copied().unwrap_or(0) as u64;
            if let Some(obj) = value.as_object_mut() {
                obj.insert("vocab_size".into(), n.into());
                obj.insert("eos_token_id".into(), eos.into());
                obj.insert("bos_token_id".into(), bos.into());
                obj.insert("pad_token_id".into(), eos.into());
            }
        }
        serde_json::from_value(value).map_err(|e| {
            ModelError::invalid_file(format!("builtin {component}.json"), e.to_string())
        })
    }

    fn scheduler_json(&self) -> &'static str {
        self.files
            .iter()
            .find(|(name, _)| *name == "scheduler")
            .map(|(_, text)| *text)
            .unwrap_or_default()
    }

    pub fn scheduler_config(&self) -> Result<SchedulerConfig> {
        SchedulerConfig::from_json(self.scheduler_json())
            .map_err(|e| ModelError::invalid_file("builtin scheduler.json", e.to_string()))
    }

    pub fn flow_match_config(&self) -> Result<FlowMatchConfig> {
        FlowMatchConfig::from_json(self.scheduler_json())
            .map_err(|e| ModelError::invalid_file("builtin scheduler.json", e.to_string()))
    }

    /// Weights drawn from a seed that depends on the model and the component, so each component
    /// differs and every run gets the same bytes.
    pub fn var_builder(
        &self,
        component: &str,
        dtype: DType,
        device: &Device,
    ) -> VarBuilder<'static> {
        let seed = fnv1a(format!("{}/{component}", self.model).as_bytes());
        deterministic_var_builder(seed, dtype, device)
    }

    /// The built-in T5 tokenizer (`tokenizer_2`): a small unigram vocabulary of T5's shape.
    pub fn t5_tokenizer(&self) -> Result<T5Tokenizer> {
        let text = self
            .files
            .iter()
            .find(|(name, _)| *name == "tokenizer_2")
            .map(|(_, text)| *text)
            .ok_or_else(|| ModelError::MissingFile {
                what: format!("T5 tokenizer of built-in model {}", self.model),
                path: format!("builtin/{}/tokenizer_2.json", self.model).into(),
            })?;
        T5Tokenizer::from_json_bytes(text.as_bytes())
    }

    pub fn clip_tokenizer(&self) -> Result<ClipTokenizer> {
        ClipTokenizer::from_parts(
            self.vocab.clone(),
            self.merges.clone(),
            "<|endoftext|>",
            MODEL_MAX_LENGTH,
        )
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
