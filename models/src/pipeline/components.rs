//! Where a pipeline's components come from: a diffusers folder on disk, or a built-in tiny model.
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::de::DeserializeOwned;

use crate::builtin::BuiltInComponents;
use crate::error::Result;
use crate::loader::ModelFolder;
use crate::schedulers::{FlowMatchConfig, SchedulerConfig};
use crate::text::{ClipTokenizer, T5Tokenizer};

#[derive(Clone)]
pub enum ComponentStore {
    Folder(ModelFolder),
    BuiltIn(BuiltInComponents),
}

impl ComponentStore {
    pub fn pipeline_class(&self) -> &str {
        match self {
            Self::Folder(folder) => folder.pipeline_class(),
            Self::BuiltIn(builtin) => builtin.pipeline_class(),
        }
    }

    pub fn has_component(&self, name: &str) -> bool {
        match self {
            Self::Folder(folder) => folder.has_component(name),
            Self::BuiltIn(builtin) => builtin.has_component(name),
        }
    }

    /// A model_index.json entry such as `force_zeros_for_empty_prompt`.
    pub fn index_value<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self {
            Self::Folder(folder) => folder.index_value(key),
            Self::BuiltIn(builtin) => builtin.index_value(key),
        }
    }

    /// The component's config.json (scheduler_config.json for the scheduler).
    pub fn config<T: DeserializeOwned>(&self, component: &str) -> Result<T> {
        match self {
            Self::Folder(folder) => folder.component(component)?.config(),
            Self::BuiltIn(builtin) => builtin.config(component),
        }
    }

    /// `scheduler/scheduler_config.json`, read with Python's non-finite float tokens allowed.
    pub fn scheduler_config(&self) -> Result<SchedulerConfig> {
        match self {
            Self::Folder(folder) => {
                SchedulerConfig::from_file(&folder.component("scheduler")?.config_path())
            }
            Self::BuiltIn(builtin) => builtin.scheduler_config(),
        }
    }

    /// The flow-matching scheduler's `scheduler/scheduler_config.json` (FLUX).
    pub fn flow_match_config(&self) -> Result<FlowMatchConfig> {
        match self {
            Self::Folder(folder) => {
                FlowMatchConfig::from_file(&folder.component("scheduler")?.config_path())
            }
            Self::BuiltIn(builtin) => builtin.flow_match_config(),
        }
    }

    pub fn var_builder(
        &self,
        component: &str,
        dtype: DType,
        device: &Device,
    ) -> Result<VarBuilder<'static>> {
        match self {
            Self::Folder(folder) => folder.component(component)?.var_builder(dtype, device),
            Self::BuiltIn(builtin) => Ok(builtin.var_builder(component, dtype, device)),
        }
    }

    pub fn clip_tokenizer(&self, component: &str) -> Result<ClipTokenizer> {
        match self {
            Self::Folder(folder) => ClipTokenizer::from_dir(folder.component(component)?.dir()),
            Self::BuiltIn(builtin) => builtin.clip_tokenizer(),
        }
    }

    /// A T5 tokenizer: the component's `tokenizer.json` (transformers' fast-tokenizer file).
    pub fn t5_tokenizer(&self, component: &str) -> Result<T5Tokenizer> {
        match self {
            Self::Folder(folder) => {
                let dir = folder.component(component)?.dir().to_path_buf();
                let path = dir.join("tokenizer.json");
                if !path.is_file() {
                    let what = if dir.join("spiece.model").is_file() {
                        format!("{component}/tokenizer.json (only the SentencePiece spiece.model is there; imago reads the fast-tokenizer file the FLUX repos ship)")
                    } else {
                        format!("{component}/tokenizer.json (the T5 tokenizer)")
                    };
                    return Err(crate::error::ModelError::MissingFile { what, path });
                }
                T5Tokenizer::from_file(&path)
            }
            Self::BuiltIn(builtin) => builtin.t5_tokenizer(),
        }
    }

    /// A label for logs: the folder path or the built-in id.
    pub fn describe(&self) -> String {
        match self {
            Self::Folder(folder) => folder.root().display().to_string(),
            Self::BuiltIn(builtin) => builtin.id().to_string(),
        }
    }
}
