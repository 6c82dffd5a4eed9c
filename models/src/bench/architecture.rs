//! The real architectures `imago bench` builds: the component configs of SD 1.5, SD 2.1-base,
//! SDXL base 1.0 and FLUX.1-schnell, embedded from `builtin/arch/<family>/` (their repos'
//! `config.json` files), or read from a folder of configs.
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use crate::builtin::{BuiltInComponents, ComponentFiles, BUILTIN_T5_TOKENIZER_JSON};
use crate::error::{ModelError, Result};
use crate::loader::read_config_text;
use crate::pipeline::ComponentStore;
use crate::specs::{self, ModelSpec};

/// A model family at its real size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Architecture {
    /// Stable Diffusion 1.5 (CLIP ViT-L, 860M-parameter UNet).
    Sd1,
    /// Stable Diffusion 2.1-base (OpenCLIP ViT-H, 866M-parameter UNet).
    Sd2,
    /// Stable Diffusion XL base 1.0 (CLIP ViT-L + OpenCLIP bigG, 2.6B-parameter UNet).
    Sdxl,
    /// FLUX.1-schnell (CLIP ViT-L + T5-XXL, 12B-parameter transformer).
    Flux,
}

macro_rules! arch_files {
    ($dir:literal, [$($name:literal),*]) => {
        &[$(($name, include_str!(concat!("../../builtin/arch/", $dir, "/", $name, ".json")))),*]
    };
}

const SD1: &[(&str, &str)] = arch_files!(
    "sd1",
    ["model_index", "scheduler", "text_encoder", "unet", "vae"]
);
const SD2: &[(&str, &str)] = arch_files!(
    "sd2",
    ["model_index", "scheduler", "text_encoder", "unet", "vae"]
);
const SDXL: &[(&str, &str)] = arch_files!(
    "sdxl",
    [
        "model_index",
        "scheduler",
        "text_encoder",
        "text_encoder_2",
        "unet",
        "vae"
    ]
);
const FLUX: &[(&str, &str)] = arch_files!(
    "flux",
    [
        "model_index",
        "scheduler",
        "text_encoder",
        "text_encoder_2",
        "transformer",
        "vae"
    ]
);

impl Architecture {
    pub const ALL: [Architecture; 4] = [Self::Sd1, Self::Sd2, Self::Sdxl, Self::Flux];

    pub fn name(self) -> &'static str {
        match self {
            Self::Sd1 => "sd1",
            Self::Sd2 => "sd2",
            Self::Sdxl => "sdxl",
            Self::Flux => "flux",
        }
    }

    /// The catalog model whose configs these are (its spec gives the generation defaults).
    pub fn spec_id(self) -> &'static str {
        match self {
            Self::Sd1 => "stable-diffusion-v1-5/stable-diffusion-v1-5",
            Self::Sd2 => "stabilityai/stable-diffusion-2-1-base",
            Self::Sdxl => "stabilityai/stable-diffusion-xl-base-1.0",
            Self::Flux => "black-forest-labs/FLUX.1-schnell",
        }
    }

    pub fn spec(self) -> Option<&'static ModelSpec> {
        specs::find(self.spec_id())
    }

    fn embedded(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Self::Sd1 => SD1,
            Self::Sd2 => SD2,
            Self::Sdxl => SDXL,
            Self::Flux => FLUX,
        }
    }

    /// The weighted components, in the order the pipeline loads them.
    pub fn components(self) -> &'static [&'static str] {
        match self {
            Self::Sd1 | Self::Sd2 => &["text_encoder", "unet", "vae"],
            Self::Sdxl => &["text_encoder", "text_encoder_2", "unet", "vae"],
            Self::Flux => &["text_encoder", "text_encoder_2", "transformer", "vae"],
        }
    }

    /// The configs of this architecture: the embedded ones, or with `config_dir`, each weighted
    /// component's from that folder (`<component>.json`, or a diffusers folder's
    /// `<component>/config.json`); `model_index` and `scheduler` are read there when present
    /// and embedded otherwise. FLUX gets the built-in T5 tokenizer.
    pub fn files(self, config_dir: Option<&Path>) -> Result<ComponentFiles> {
        let embedded = |name: &str| {
            self.embedded()
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, text)| text.to_string())
        };
        let mut files = Vec::new();
        for &(name, _) in self.embedded() {
            let from_dir = match config_dir {
                Some(dir) => read_from_dir(dir, name)?,
                None => None,
            };
            let text = match (from_dir, config_dir) {
                (Some(text), _) => text,
                (None, Some(dir)) if self.components().contains(&name) => {
                    return Err(ModelError::MissingFile {
                        what: format!(
                            "the {name} config of the {} architecture ({name}.json or {name}/config.json)",
                            self.name()
                        ),
                        path: dir.join(format!("{name}.json")),
                    })
                }
                (None, _) => embedded(name).unwrap_or_default(),
            };
            files.push((name.to_string(), text));
        }
        if self == Self::Flux {
            files.push(("tokenizer_2".into(), BUILTIN_T5_TOKENIZER_JSON.into()));
        }
        Ok(files.into())
    }

    /// A component store of these configs with deterministic random weights.
    pub fn store(self, config_dir: Option<&Path>) -> Result<ComponentStore> {
        let name = format!("bench/{}", self.name());
        Ok(ComponentStore::BuiltIn(BuiltInComponents::random_weights(
            &name,
            self.files(config_dir)?,
        )?))
    }
}

/// `dir/<name>.json`, else `dir/<name>/config.json` (`scheduler_config.json` for the scheduler,
/// `model_index.json` at the root); `None` when neither exists.
fn read_from_dir(dir: &Path, name: &str) -> Result<Option<String>> {
    let inner = if name == "scheduler" {
        "scheduler_config.json"
    } else {
        "config.json"
    };
    for path in [dir.join(format!("{name}.json")), dir.join(name).join(inner)] {
        if path.is_file() {
            return read_config_text(&path, "component config").map(Some);
        }
    }
    Ok(None)
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Architecture {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                ModelError::invalid(
                    "family",
                    format!("`{s}` is not one of sd1, sd2, sdxl, flux"),
                )
            })
    }
}
