//! The built-in tiny models (`imago/tiny-sd`, `imago/tiny-sdxl`, `imago/tiny-flux`): real architectures at toy size,
//! configs embedded from `models/builtin/`, weights generated deterministically in memory.
//! They run without any download, for demos and tests; their pictures are noise-like.
//! The same store also serves real-size architectures with random weights (`imago bench`).
use std::collections::HashMap;
use std::sync::Arc;

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
    ("tokenizer_2", BUILTIN_T5_TOKENIZER_JSON),
    (
        "transformer",
        include_str!("../builtin/tiny-flux/transformer.json"),
    ),
    ("vae", include_str!("../builtin/tiny-flux/vae.json")),
];

/// The built-in T5 tokenizer (`tokenizer_2` of `imago/tiny-flux`), for stores of other configs.
pub const BUILTIN_T5_TOKENIZER_JSON: &str = include_str!("../builtin/tiny-flux/tokenizer_2.json");

/// The CLIP window of the built-in tokenizers, as the real ones.
const MODEL_MAX_LENGTH: usize = 77;

/// A component's file name (`unet`, `scheduler`, `tokenizer_2`...) and its JSON text.
pub type ComponentFiles = Arc<[(String, String)]>;

#[derive(Clone)]
pub struct BuiltInComponents {
    /// The id in labels, and the prefix of every weight seed.
    name: String,
    files: ComponentFiles,
    /// Keep the CLIP configs' own vocabulary size (a real-size embedding table) instead of the
    /// built-in tokenizer's; the built-in tokenizer's ids are below either.
    real_vocab_size: bool,
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
        let files = files
            .iter()
            .map(|(name, text)| (name.to_string(), text.to_string()))
            .collect();
        Self::with_files(model.id(), files, false)
    }

    /// Components of any size from their configs, with deterministic random weights seeded by
    /// `name`, the built-in CLIP tokenizer and the CLIP configs' own vocabulary size: a real
    /// architecture without its weights, for benchmarks. `files` must hold `model_index` and the
    /// pipeline's component configs (and `tokenizer_2` for FLUX's T5).
    pub fn random_weights(name: &str, files: ComponentFiles) -> Result<Self> {
        Self::with_files(name, files, true)
    }

    fn with_files(name: &str, files: ComponentFiles, real_vocab_size: bool) -> Result<Self> {
        let (vocab, merges) = tiny_clip_vocab();
        let mut this = Self {
            name: name.to_string(),
            files,
            real_vocab_size,
            index: Value::Null,
            vocab,
            merges,
        };
        this.index = this.json("model_index")?;
        Ok(this)
    }

    pub fn id(&self) -> String {
        self.name.clone()
    }

    /// The text of file `component`, if the model has it.
    fn file(&self, component: &str) -> Option<&str> {
        self.files
            .iter()
            .find(|(name, _)| name == component)
            .map(|(_, text)| text.as_str())
    }

    fn json(&self, component: &str) -> Result<Value> {
        let text = self
            .file(component)
            .ok_or_else(|| ModelError::MissingFile {
                what: format!("component {component} of built-in model {}", self.name),
                path: format!("builtin/{}/{component}.json", self.name).into(),
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
        let listed = |n: &str| self.file(n).is_some();
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
                let own = obj.get("vocab_size").and_then(Value::as_u64).unwrap_or(0);
                let size = if self.real_vocab_size { own.max(n) } else { n };
                obj.insert("vocab_size".into(), size.into());
                obj.insert("eos_token_id".into(), eos.into());
                obj.insert("bos_token_id".into(), bos.into());
                obj.insert("pad_token_id".into(), eos.into());
            }
        }
        serde_json::from_value(value).map_err(|e| {
            ModelError::invalid_file(format!("builtin {component}.json"), e.to_string())
        })
    }

    fn scheduler_json(&self) -> &str {
        self.file("scheduler").unwrap_or_default()
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
        let seed = fnv1a(format!("{}/{component}", self.name).as_bytes());
        deterministic_var_builder(seed, dtype, device)
    }

    /// The built-in T5 tokenizer (`tokenizer_2`): a small unigram vocabulary of T5's shape.
    pub fn t5_tokenizer(&self) -> Result<T5Tokenizer> {
        let text = self
            .file("tokenizer_2")
            .ok_or_else(|| ModelError::MissingFile {
                what: format!("T5 tokenizer of built-in model {}", self.name),
                path: format!("builtin/{}/tokenizer_2.json", self.name).into(),
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
