//! Where a pipeline's components come from: a diffusers folder on disk, or a built-in tiny model.
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::de::DeserializeOwned;

use crate::builtin::BuiltInComponents;
use crate::error::Result;
use crate::loader::ModelFolder;
use crate::schedulers::SchedulerConfig;
use crate::text::ClipTokenizer;

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

    /// A label for logs: the folder path or the built-in id.
    pub fn describe(&self) -> String {
        match self {
            Self::Folder(folder) => folder.root().display().to_string(),
            Self::BuiltIn(builtin) => builtin.id().to_string(),
        }
    }
}
