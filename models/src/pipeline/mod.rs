//! Pipelines: from a model source to images. `DiffusionPipeline` is the one entry point the
//! server and the CLI use; each family has its own module.
mod batch;
mod components;
mod flux;
mod flux_loading;
pub mod image_io;
mod latents;
mod observer;
mod request;
mod stable_diffusion;

use std::path::{Path, PathBuf};
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use image::RgbImage;

pub use batch::{batch_key, BatchKey};
pub use components::ComponentStore;
pub use flux::{FluxPipeline, FluxPromptEmbeddings, LoadOptions, MAX_SEQUENCE_LENGTH};
pub use observer::{NoObserver, StepObserver, StepProgress};
pub use request::{img2img_steps, GenerationRequest, InitImage, DEFAULT_STRENGTH, MAX_BATCH};
pub use stable_diffusion::{PromptEmbeddings, StableDiffusionPipeline};

use crate::builtin::BuiltInComponents;
use crate::device::{DTypeChoice, DeviceChoice};
use crate::error::{ModelError, Result};
use crate::loader::{
    cached_snapshot, find_flux_single_files, hub_cache_dir, ModelFolder, ModelSource,
};
use crate::specs::{self, Defaults, Family, ModelSpec};

/// Time spent in each stage of one generation.
#[derive(Clone, Copy, Debug, Default)]
pub struct Timings {
    pub text_encode: Duration,
    pub denoise: Duration,
    pub decode: Duration,
}

/// The result of one request: `images[i]` is image i of the batch.
pub struct Generation {
    pub images: Vec<RgbImage>,
    /// The decoded batch in [0, 1], NCHW f32 (before 8-bit rounding).
    pub decoded: Tensor,
    pub seed: u64,
    pub width: usize,
    pub height: usize,
    pub steps_run: usize,
    pub prompt_truncated: bool,
    /// CLIP tokens of the prompt, bos and eos included, at most the window (77).
    pub prompt_tokens: usize,
    pub timings: Timings,
}

/// A loaded model of any family.
pub enum DiffusionPipeline {
    StableDiffusion(Box<StableDiffusionPipeline>),
    Flux(Box<FluxPipeline>),
}

/// A loaded model with what is known about it.
pub struct LoadedModel {
    /// The id clients use: the repo id, the built-in id, or the folder's name.
    pub id: String,
    /// Where the weights came from (folder path or built-in id).
    pub location: String,
    pub spec: Option<&'static ModelSpec>,
    pub pipeline: DiffusionPipeline,
}

impl LoadedModel {
    /// Loads a model from a source string: a diffusers folder, a Hugging Face repo id present in the
    /// local HF cache (`org/name` or `org/name@revision`), or a built-in id (`imago/tiny-sd`).
    pub fn load(source: &str, device: DeviceChoice, dtype: DTypeChoice) -> Result<Self> {
        Self::load_on(source, &device.open()?, dtype, LoadOptions::default())
    }

    /// As [`Self::load`], on a device already opened (one device shared by several models).
    pub fn load_on(
        source: &str,
        device: &Device,
        dtype: DTypeChoice,
        options: LoadOptions,
    ) -> Result<Self> {
        let parsed = ModelSource::parse(source)?;
        let (id, spec, store) = match parsed {
            ModelSource::BuiltIn(builtin) => {
                let id = builtin.to_string();
                let spec = specs::find(&id);
                (
                    id,
                    spec,
                    ComponentStore::BuiltIn(BuiltInComponents::new(builtin)?),
                )
            }
            ModelSource::Folder(path) => {
                let folder = open_folder(&path)?;
                let name = folder_name(&path);
                (
                    name.clone(),
                    specs::find_by_folder_name(&name),
                    ComponentStore::Folder(folder),
                )
            }
            ModelSource::HubRepo { repo_id, revision } => {
                let cache = hub_cache_dir();
                let Some(snapshot) = cached_snapshot(&cache, &repo_id, revision.as_deref())? else {
                    return Err(not_cached(&repo_id, revision.as_deref(), &cache));
                };
                let folder = open_folder(&snapshot)?;
                (
                    repo_id.clone(),
                    specs::find(&repo_id),
                    ComponentStore::Folder(folder),
                )
            }
        };
        Self::from_store(id, spec, store, device, dtype, options)
    }

    /// Builds the pipeline of `store` (a folder or built-in components), named `id`, with the
    /// defaults of `spec`.
    pub fn from_store(
        id: String,
        spec: Option<&'static ModelSpec>,
        store: ComponentStore,
        device: &Device,
        dtype: DTypeChoice,
        options: LoadOptions,
    ) -> Result<Self> {
        let family = family_of(store.pipeline_class())?;
        let dtype = dtype.resolve(device, DType::F16);
        tracing::info!(model = %id, from = %store.describe(), family = family.as_str(), ?dtype, "loading model");
        let pipeline = match family {
            Family::Flux => DiffusionPipeline::Flux(Box::new(FluxPipeline::load(
                &store,
                device,
                dtype,
                options,
                spec.and_then(|s| s.defaults.max_sequence_length),
            )?)),
            _ => DiffusionPipeline::StableDiffusion(Box::new(StableDiffusionPipeline::load(
                &store, family, device, dtype,
            )?)),
        };
        Ok(Self {
            id,
            location: store.describe(),
            spec,
            pipeline,
        })
    }

    /// Steps, guidance, size (and FLUX's T5 length) to use when the request gives none: the
    /// spec's, else diffusers' defaults for the family at the model's native size.
    pub fn defaults(&self) -> Defaults {
        if let Some(spec) = self.spec {
            return spec.defaults.clone();
        }
        match &self.pipeline {
            DiffusionPipeline::StableDiffusion(sd) => {
                let (width, height) = sd.native_size();
                let guidance = match sd.family() {
                    Family::StableDiffusionXl => 5.0,
                    _ => 7.5,
                };
                Defaults {
                    steps: 50,
                    guidance,
                    width,
                    height,
                    max_sequence_length: None,
                }
            }
            // Black Forest Labs' recipes: dev 28 steps at guidance 3.5, schnell 4 steps unguided;
            // diffusers' default size is 1024x1024.
            DiffusionPipeline::Flux(flux) => {
                let (steps, guidance) = if flux.has_guidance_embeds() {
                    (28, 3.5)
                } else {
                    (4, 0.0)
                };
                Defaults {
                    steps,
                    guidance,
                    width: 1024,
                    height: 1024,
                    max_sequence_length: Some(flux.default_max_sequence_length()),
                }
            }
        }
    }

    /// Channels of the latents the previews see (4 for SD/SDXL, 16 for FLUX, unpacked).
    pub fn latent_channels(&self) -> usize {
        match &self.pipeline {
            DiffusionPipeline::StableDiffusion(sd) => sd.latent_channels(),
            DiffusionPipeline::Flux(flux) => flux.latent_channels(),
        }
    }

    pub fn family(&self) -> Family {
        match &self.pipeline {
            DiffusionPipeline::StableDiffusion(sd) => sd.family(),
            DiffusionPipeline::Flux(_) => Family::Flux,
        }
    }

    pub fn device(&self) -> &Device {
        match &self.pipeline {
            DiffusionPipeline::StableDiffusion(sd) => sd.device(),
            DiffusionPipeline::Flux(flux) => flux.device(),
        }
    }

    pub fn dtype(&self) -> DType {
        match &self.pipeline {
            DiffusionPipeline::StableDiffusion(sd) => sd.dtype(),
            DiffusionPipeline::Flux(flux) => flux.dtype(),
        }
    }

    /// Width and height must be multiples of this (8 for SD/SDXL, 16 for FLUX's packed latents).
    pub fn size_multiple(&self) -> usize {
        match &self.pipeline {
            DiffusionPipeline::StableDiffusion(sd) => sd.vae_scale_factor(),
            DiffusionPipeline::Flux(flux) => flux.size_multiple(),
        }
    }

    /// Whether requests may name a scheduler (FLUX uses its flow-matching one only).
    pub fn accepts_scheduler_override(&self) -> bool {
        matches!(self.pipeline, DiffusionPipeline::StableDiffusion(_))
    }

    /// The cheap latent-to-RGB preview map of this model.
    pub fn preview(&self) -> &crate::preview::LatentPreview {
        match &self.pipeline {
            DiffusionPipeline::StableDiffusion(sd) => sd.preview(),
            DiffusionPipeline::Flux(flux) => flux.preview(),
        }
    }

    /// Decodes latents of this model's latent space (unpacked, NCHW) to images in [0, 1].
    pub fn decode_latents(&self, latents: &Tensor) -> Result<Tensor> {
        match &self.pipeline {
            DiffusionPipeline::StableDiffusion(sd) => sd.decode_latents(latents),
            DiffusionPipeline::Flux(flux) => flux.decode_latents(latents),
        }
    }

    pub fn generate(
        &self,
        request: &GenerationRequest,
        observer: &mut dyn StepObserver,
    ) -> Result<Generation> {
        match &self.pipeline {
            DiffusionPipeline::StableDiffusion(sd) => sd.generate(request, observer),
            DiffusionPipeline::Flux(flux) => flux.generate(request, observer),
        }
    }
}

/// A diffusers folder, or a Black Forest Labs FLUX folder without `model_index.json`
/// (`flux1-*.safetensors` at the root beside the text encoders' folders).
fn open_folder(path: &Path) -> Result<ModelFolder> {
    if !path.join("model_index.json").is_file() && find_flux_single_files(path)?.is_some() {
        return ModelFolder::flux_single_file(path);
    }
    ModelFolder::open(path)
}

/// The family a diffusers pipeline class belongs to.
pub fn family_of(pipeline_class: &str) -> Result<Family> {
    const SD: &[&str] = &["StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"];
    const SDXL: &[&str] = &[
        "StableDiffusionXLPipeline",
        "StableDiffusionXLImg2ImgPipeline",
    ];
    const FLUX: &[&str] = &["FluxPipeline", "FluxImg2ImgPipeline"];
    if SD.contains(&pipeline_class) {
        Ok(Family::StableDiffusion)
    } else if SDXL.contains(&pipeline_class) {
        Ok(Family::StableDiffusionXl)
    } else if FLUX.contains(&pipeline_class) {
        Ok(Family::Flux)
    } else {
        Err(ModelError::Unsupported(format!(
            "pipeline class {pipeline_class:?} in model_index.json; supported: {}",
            SD.iter()
                .chain(SDXL)
                .chain(FLUX)
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

fn folder_name(path: &Path) -> String {
    let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    canonical
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| canonical.display().to_string())
}

fn not_cached(repo_id: &str, revision: Option<&str>, cache: &Path) -> ModelError {
    let repo_dir: PathBuf = cache.join(format!("models--{}", repo_id.replace('/', "--")));
    let rev = revision
        .map(|r| format!(" at revision {r}"))
        .unwrap_or_default();
    let rev_arg = revision
        .map(|r| format!(" --revision {r}"))
        .unwrap_or_default();
    ModelError::MissingFile {
        what: format!(
            "model {repo_id}{rev} in the local Hugging Face cache (HF_HOME / HF_HUB_CACHE; download \
             it with `imago pull {repo_id}{rev_arg}`, or pass a diffusers folder to --model)"
        ),
        path: repo_dir,
    }
}
