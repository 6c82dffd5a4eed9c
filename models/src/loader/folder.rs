//! A diffusers pipeline folder: `model_index.json` plus one subfolder per component, exactly as
//! the Hugging Face repos ship it (e.g. `stabilityai/sdxl-turbo`).
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::json_file::read_json;
use super::weights;
use crate::error::{ModelError, Result};

const MODEL_INDEX: &str = "model_index.json";

/// An opened diffusers folder; `model_index.json` has been read and checked.
#[derive(Debug, Clone)]
pub struct ModelFolder {
    root: PathBuf,
    index_path: PathBuf,
    class_name: String,
    index: Map<String, Value>,
}

impl ModelFolder {
    /// Opens `root`, reading its `model_index.json`.
    pub fn open(root: &Path) -> Result<Self> {
        if !root.exists() {
            return Err(ModelError::MissingFile {
                what: "model folder".into(),
                path: root.to_path_buf(),
            });
        }
        let index_path = root.join(MODEL_INDEX);
        if !index_path.is_file() {
            return Err(ModelError::MissingFile {
                what: format!(
                    "{MODEL_INDEX} (not a diffusers pipeline folder: expected {MODEL_INDEX} and one \
                     subfolder per component, such as unet/, vae/, text_encoder/, tokenizer/, scheduler/)"
                ),
                path: index_path,
            });
        }
        let text =
            std::fs::read_to_string(&index_path).map_err(|e| ModelError::io(&index_path, e))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::invalid_file(&index_path, e.to_string()))?;
        let Value::Object(index) = value else {
            return Err(ModelError::invalid_file(
                &index_path,
                "expected a JSON object",
            ));
        };
        let class_name = match index.get("_class_name") {
            Some(Value::String(s)) => s.clone(),
            _ => {
                return Err(ModelError::invalid_file(
                    &index_path,
                    "missing string field `_class_name` (the pipeline class)",
                ))
            }
        };
        Ok(Self {
            root: root.to_path_buf(),
            index_path,
            class_name,
            index,
        })
    }

    /// A Black Forest Labs FLUX folder without `model_index.json`: the index FluxPipeline would
    /// have, listing the component folders that exist (the transformer and autoencoder may be
    /// single files at the root instead).
    pub fn flux_single_file(root: &Path) -> Result<Self> {
        const COMPONENTS: [(&str, &str, &str); 7] = [
            ("scheduler", "diffusers", "FlowMatchEulerDiscreteScheduler"),
            ("text_encoder", "transformers", "CLIPTextModel"),
            ("text_encoder_2", "transformers", "T5EncoderModel"),
            ("tokenizer", "transformers", "CLIPTokenizer"),
            ("tokenizer_2", "transformers", "T5TokenizerFast"),
            ("transformer", "diffusers", "FluxTransformer2DModel"),
            ("vae", "diffusers", "AutoencoderKL"),
        ];
        let mut index = Map::new();
        index.insert("_class_name".into(), Value::from("FluxPipeline"));
        for (name, library, class) in COMPONENTS {
            if root.join(name).is_dir() {
                index.insert(name.into(), Value::from(vec![library, class]));
            }
        }
        Ok(Self {
            root: root.to_path_buf(),
            index_path: root.join(MODEL_INDEX),
            class_name: "FluxPipeline".into(),
            index,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The pipeline class named by `_class_name`, e.g. `StableDiffusionXLPipeline`.
    pub fn pipeline_class(&self) -> &str {
        &self.class_name
    }

    /// A non-component entry of `model_index.json`, e.g. `force_zeros_for_empty_prompt`;
    /// `None` when absent or null.
    pub fn index_value<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.index.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => serde_json::from_value(v.clone()).map(Some).map_err(|e| {
                ModelError::invalid_file(&self.index_path, format!("field `{key}`: {e}"))
            }),
        }
    }

    /// Whether `name` is listed as a component with a non-null class.
    pub fn has_component(&self, name: &str) -> bool {
        matches!(self.entry(name), Some(Entry::Class { .. }))
    }

    /// Names of all components listed with a non-null class, sorted.
    pub fn component_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .index
            .keys()
            .filter(|k| self.has_component(k))
            .cloned()
            .collect();
        names.sort();
        names
    }

    /// The component `name`; an error when it is not listed, listed as null, or its folder is absent.
    pub fn component(&self, name: &str) -> Result<Component> {
        let (library, class_name) = match self.entry(name) {
            Some(Entry::Class { library, class }) => (library, class),
            Some(Entry::Null) => {
                return Err(ModelError::invalid_file(
                    &self.index_path,
                    format!("component `{name}` is null (this pipeline has none)"),
                ))
            }
            None => {
                return Err(ModelError::invalid_file(
                    &self.index_path,
                    format!(
                        "component `{name}` is not listed (listed: {})",
                        self.component_names().join(", ")
                    ),
                ))
            }
        };
        let dir = self.root.join(name);
        if !dir.is_dir() {
            return Err(ModelError::MissingFile {
                what: format!("component {name}"),
                path: dir,
            });
        }
        Ok(Component {
            name: name.to_string(),
            dir,
            library,
            class_name,
        })
    }

    fn entry(&self, name: &str) -> Option<Entry> {
        if name.starts_with('_') {
            return None;
        }
        // Components are `[library, class]` pairs; `[null, null]` marks an absent optional one.
        let Value::Array(pair) = self.index.get(name)? else {
            return None;
        };
        match pair.as_slice() {
            [library, Value::String(class)] => Some(Entry::Class {
                library: library.as_str().map(str::to_string),
                class: class.clone(),
            }),
            [_, Value::Null] => Some(Entry::Null),
            _ => None,
        }
    }
}

enum Entry {
    Class {
        library: Option<String>,
        class: String,
    },
    Null,
}

/// One component folder of a pipeline (unet, vae, text_encoder, tokenizer, scheduler, ...).
#[derive(Debug, Clone)]
pub struct Component {
    name: String,
    dir: PathBuf,
    library: Option<String>,
    class_name: String,
}

impl Component {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The class from `model_index.json`, e.g. `UNet2DConditionModel`, `CLIPTokenizer`.
    pub fn class_name(&self) -> &str {
        &self.class_name
    }

    /// The library from `model_index.json`: `diffusers` or `transformers`.
    pub fn library(&self) -> Option<&str> {
        self.library.as_deref()
    }

    /// The component's configuration file: `scheduler_config.json` for schedulers,
    /// `tokenizer_config.json` for tokenizers, `config.json` for models. When the expected file
    /// is absent but one of the others exists, that one is used.
    pub fn config_path(&self) -> PathBuf {
        let preferred = if self.class_name.contains("Scheduler") {
            "scheduler_config.json"
        } else if self.class_name.contains("Tokenizer") {
            "tokenizer_config.json"
        } else {
            "config.json"
        };
        let candidates = [
            preferred,
            "config.json",
            "scheduler_config.json",
            "tokenizer_config.json",
        ];
        candidates
            .iter()
            .map(|f| self.dir.join(f))
            .find(|p| p.is_file())
            .unwrap_or_else(|| self.dir.join(preferred))
    }

    /// Parses the configuration file (see [`Component::config_path`]) into `T`; absent keys take
    /// the defaults `T` declares.
    pub fn config<T: DeserializeOwned>(&self) -> Result<T> {
        read_json(
            &self.config_path(),
            &format!("configuration of component {}", self.name),
        )
    }

    /// The safetensors files holding this component's weights (see [`weights::find_weight_files`]).
    pub fn weight_files(&self) -> Result<Vec<PathBuf>> {
        weights::find_weight_files(&self.name, &self.dir, self.library.as_deref())
    }

    /// A VarBuilder over the component's weights: every file is validated, then memory-mapped;
    /// tensors are converted to `dtype` as they are fetched.
    pub fn var_builder(
        &self,
        dtype: DType,
        device: &Device,
    ) -> Result<candle_nn::VarBuilder<'static>> {
        weights::mmap_var_builder(&self.weight_files()?, dtype, device)
    }
}
