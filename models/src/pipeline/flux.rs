//! FLUX.1 (schnell and dev; text-to-image and image-to-image), step for step as diffusers'
//! FluxPipeline / FluxImg2ImgPipeline: CLIP's pooled output and T5's sequence condition a flow
//! transformer on 2x2-packed latents, integrated by the flow-matching Euler scheduler.
use std::ops::ControlFlow;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use super::components::ComponentStore;
use super::flux_loading::{load_transformer, load_vae};
use super::image_io;
use super::latents::{decode_with_vae, encode_init_image};
use super::observer::{StepObserver, StepProgress};
use super::request::GenerationRequest;
use super::{Generation, Timings};
use crate::error::{ModelError, Result};
use crate::flux::{
    latent_image_ids, pack_latents, text_ids, unpack_latents, FluxTransformer2DModel,
    FluxTransformerConfig,
};
use crate::preview::LatentPreview;
use crate::rng::TorchGenerator;
use crate::schedulers::{FlowMatchConfig, FlowMatchEulerScheduler};
use crate::text::{
    ClipTextConfig, ClipTextModel, ClipTokenizer, T5Config, T5EncoderModel, T5Tokenizer,
};
use crate::vae::AutoencoderKL;

/// T5 tokens a prompt is padded to when neither the request nor the spec says: what Black Forest
/// Labs use, 256 for schnell-like models (no guidance embedding) and 512 for dev-like ones.
const SCHNELL_MAX_SEQUENCE_LENGTH: usize = 256;
const DEV_MAX_SEQUENCE_LENGTH: usize = 512;
/// The longest T5 sequence: diffusers refuses `max_sequence_length > 512` for FLUX (T5's trained
/// window).
pub const MAX_SEQUENCE_LENGTH: usize = 512;

/// How a loaded model is kept in memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Release the T5 encoder after each prompt is encoded and load it again (memory-mapped) for
    /// the next one: T5-XXL is about 9.5 GB in f16, more than the transformer needs while denoising.
    pub low_memory: bool,
}

/// The T5 encoder, resident or loaded for each prompt.
enum T5Slot {
    Resident(T5EncoderModel),
    OnDemand {
        store: Box<ComponentStore>,
        config: T5Config,
    },
}

pub struct FluxPipeline {
    device: Device,
    dtype: DType,
    clip_tokenizer: ClipTokenizer,
    clip: ClipTextModel,
    t5_tokenizer: T5Tokenizer,
    t5: T5Slot,
    transformer: FluxTransformer2DModel,
    transformer_config: FluxTransformerConfig,
    vae: AutoencoderKL,
    vae_dtype: DType,
    scheduler_config: FlowMatchConfig,
    vae_scale_factor: usize,
    preview: LatentPreview,
    default_max_sequence_length: usize,
}

/// The conditioning of one prompt for `batch` images.
pub struct FluxPromptEmbeddings {
    /// T5's last hidden state, `(batch, max_sequence_length, d_model)`.
    pub embeds: Tensor,
    /// CLIP's pooled output, `(batch, hidden)`.
    pub pooled: Tensor,
    /// Whether either tokenizer cut the prompt.
    pub truncated: bool,
    /// CLIP tokens of the prompt, bos and eos included, at most the window.
    pub clip_tokens: usize,
}

impl FluxPipeline {
    /// `spec_max_sequence_length`: the model spec's T5 length, the default for requests that name
    /// none (else 512 for dev-like models, 256 for the others).
    pub fn load(
        store: &ComponentStore,
        device: &Device,
        dtype: DType,
        options: LoadOptions,
        spec_max_sequence_length: Option<usize>,
    ) -> Result<Self> {
        for (component, what) in [
            ("text_encoder", "the CLIP text encoder"),
            ("text_encoder_2", "the T5 encoder"),
            ("tokenizer", "the CLIP tokenizer"),
            ("tokenizer_2", "the T5 tokenizer"),
            ("scheduler", "the scheduler config"),
        ] {
            if !store.has_component(component) {
                return Err(ModelError::Unsupported(format!(
                    "a FLUX model needs {component}/ ({what}) beside the transformer, as the \
                     black-forest-labs/FLUX.1-* repos ship it; {} has none",
                    store.describe()
                )));
            }
        }
        let clip_tokenizer = store.clip_tokenizer("tokenizer")?;
        let clip_config: ClipTextConfig = store.config("text_encoder")?;
        let clip = ClipTextModel::new(
            store.var_builder("text_encoder", dtype, device)?,
            &clip_config,
        )?;
        let t5_tokenizer = store.t5_tokenizer("tokenizer_2")?;
        let t5_config: T5Config = store.config("text_encoder_2")?;
        let (transformer_config, transformer_vb) = load_transformer(store, dtype, device)?;
        let default_max_sequence_length =
            spec_max_sequence_length.unwrap_or(if transformer_config.guidance_embeds {
                DEV_MAX_SEQUENCE_LENGTH
            } else {
                SCHNELL_MAX_SEQUENCE_LENGTH
            });
        if transformer_config.joint_attention_dim != t5_config.d_model {
            return Err(ModelError::Unsupported(format!(
                "the transformer's joint_attention_dim is {} but the T5 encoder's d_model is {}; \
                 the text_encoder_2 does not belong to this transformer",
                transformer_config.joint_attention_dim, t5_config.d_model
            )));
        }
        if transformer_config.pooled_projection_dim != clip_config.hidden_size {
            return Err(ModelError::Unsupported(format!(
                "the transformer's pooled_projection_dim is {} but the CLIP encoder's hidden_size \
                 is {}; the text_encoder does not belong to this transformer",
                transformer_config.pooled_projection_dim, clip_config.hidden_size
            )));
        }
        let t5 = if options.low_memory {
            T5Slot::OnDemand {
                store: Box::new(store.clone()),
                config: t5_config,
            }
        } else {
            T5Slot::Resident(T5EncoderModel::new(
                store.var_builder("text_encoder_2", dtype, device)?,
                &t5_config,
            )?)
        };
        let transformer = FluxTransformer2DModel::new(transformer_vb, &transformer_config)?;
        let (vae_config, vae_weights) = load_vae(store)?;
        let in_channels = transformer_config.in_channels;
        if in_channels != 4 * vae_config.latent_channels {
            return Err(ModelError::Unsupported(format!(
                "the transformer takes {in_channels} packed channels but the VAE has {} latent \
                 channels (FLUX packs 2x2 patches: in_channels must be 4 x latent_channels)",
                vae_config.latent_channels
            )));
        }
        // diffusers upcasts a float16 VAE whose config asks for it.
        let vae_dtype = if dtype == DType::F16 && vae_config.force_upcast {
            DType::F32
        } else {
            dtype
        };
        let vae = AutoencoderKL::new(
            vae_weights.var_builder(store, vae_dtype, device)?,
            &vae_config,
        )?;
        let vae_scale_factor = 1 << vae_config.block_out_channels.len().saturating_sub(1);
        let scheduler_config = store.flow_match_config()?;
        let preview = LatentPreview::fit(vae_config.latent_channels, device, |z| {
            decode_with_vae(&vae, vae_dtype, device, z)
        })?;
        Ok(Self {
            device: device.clone(),
            dtype,
            clip_tokenizer,
            clip,
            t5_tokenizer,
            t5,
            transformer,
            transformer_config,
            vae,
            vae_dtype,
            scheduler_config,
            vae_scale_factor,
            preview,
            default_max_sequence_length,
        })
    }
}

impl FluxPipeline {
    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Channels of the unpacked latents (the VAE's latent channels, 16 for FLUX.1).
    pub fn latent_channels(&self) -> usize {
        self.transformer_config.in_channels / 4
    }

    /// Width and height must be multiples of this: the VAE factor times the 2x2 packing.
    pub fn size_multiple(&self) -> usize {
        self.vae_scale_factor * 2
    }

    /// Whether the transformer takes the distilled guidance value (FLUX.1-dev).
    pub fn has_guidance_embeds(&self) -> bool {
        self.transformer_config.guidance_embeds
    }

    /// T5 tokens a prompt is padded to when the request names none: the spec's, else 512 for
    /// dev-like models and 256 for the others.
    pub fn default_max_sequence_length(&self) -> usize {
        self.default_max_sequence_length
    }

    pub fn preview(&self) -> &LatentPreview {
        &self.preview
    }

    pub fn scheduler_config(&self) -> &FlowMatchConfig {
        &self.scheduler_config
    }

    /// diffusers' `encode_prompt` for `batch` images: T5's sequence (padded to
    /// `max_sequence_length`) and CLIP's pooled output, each repeated `batch` times.
    pub fn encode_prompt(
        &self,
        prompt: &str,
        max_sequence_length: usize,
        batch: usize,
    ) -> Result<FluxPromptEmbeddings> {
        let clip_tokens = self.clip_tokenizer.encode(prompt);
        let clip_len = clip_tokens.ids.len();
        let clip_ids = Tensor::from_vec(clip_tokens.ids, (1, clip_len), &self.device)?;
        let pooled = self.clip.forward(&clip_ids)?.pooled;

        let t5_tokens = self.t5_tokenizer.encode(prompt, max_sequence_length)?;
        let t5_len = t5_tokens.ids.len();
        let t5_ids = Tensor::from_vec(t5_tokens.ids, (1, t5_len), &self.device)?;
        let embeds = match &self.t5 {
            T5Slot::Resident(t5) => t5.forward(&t5_ids)?,
            T5Slot::OnDemand { store, config } => {
                // Loaded for this prompt only and dropped at the end of the arm.
                let t5 = T5EncoderModel::new(
                    store.var_builder("text_encoder_2", self.dtype, &self.device)?,
                    config,
                )?;
                t5.forward(&t5_ids)?
            }
        };
        let (embeds, pooled) = if batch > 1 {
            (embeds.repeat((batch, 1, 1))?, pooled.repeat((batch, 1))?)
        } else {
            (embeds, pooled)
        };
        let clip_window = self.clip_tokenizer.model_max_length();
        Ok(FluxPromptEmbeddings {
            embeds: embeds.to_dtype(self.dtype)?,
            pooled: pooled.to_dtype(self.dtype)?,
            truncated: clip_tokens.truncated || t5_tokens.truncated,
            clip_tokens: (self.clip_tokenizer.token_ids(prompt).len() + 2).min(clip_window),
        })
    }

    fn check_request(&self, request: &GenerationRequest) -> Result<usize> {
        request.validate(self.size_multiple())?;
        if request.negative_prompt.is_some() {
            return Err(ModelError::invalid(
                "negative_prompt",
                "FLUX models take no negative prompt (they run one conditional pass per step)",
            ));
        }
        if let Some(choice) = request.scheduler {
            return Err(ModelError::invalid(
                "scheduler",
                format!(
                    "FLUX models use their flow-matching Euler scheduler (scheduler/scheduler_config.json); got {choice}"
                ),
            ));
        }
        let max_sequence_length = request
            .max_sequence_length
            .unwrap_or_else(|| self.default_max_sequence_length());
        if max_sequence_length > MAX_SEQUENCE_LENGTH {
            return Err(ModelError::invalid(
                "max_sequence_length",
                format!(
                    "must be at most {MAX_SEQUENCE_LENGTH} for this model, got {max_sequence_length}"
                ),
            ));
        }
        Ok(max_sequence_length)
    }

    pub fn generate(
        &self,
        request: &GenerationRequest,
        observer: &mut dyn StepObserver,
    ) -> Result<Generation> {
        let max_sequence_length = self.check_request(request)?;
        let started = Instant::now();
        let n = request.batch_size;
        let prompt = self.encode_prompt(&request.prompt, max_sequence_length, n)?;
        let text_encode = started.elapsed();

        let denoise_started = Instant::now();
        // diffusers: height = 2 * (height // (vae_scale_factor * 2)), the unpacked latent grid.
        let latent_h = request.height / self.vae_scale_factor;
        let latent_w = request.width / self.vae_scale_factor;
        let channels = self.latent_channels();
        let image_seq_len = (latent_h / 2) * (latent_w / 2);
        let scheduler =
            FlowMatchEulerScheduler::new(&self.scheduler_config, request.steps, image_seq_len)?;
        let timesteps = scheduler.timesteps().to_vec();
        let img_ids = latent_image_ids(latent_h, latent_w, &self.device)?;
        let txt_ids = text_ids(prompt.embeds.dim(1)?, &self.device)?;
        let guidance = if self.has_guidance_embeds() {
            Some(
                Tensor::full(request.guidance_scale as f32, n, &self.device)?
                    .to_dtype(self.dtype)?,
            )
        } else {
            None
        };

        let mut rng = TorchGenerator::new(request.seed);
        let shape = [n, channels, latent_h, latent_w];
        let (first_step, latents) = match &request.init_image {
            None => {
                let noise = rng.randn_tensor(&shape, &self.device, DType::F32)?;
                observer.on_noise(&noise);
                (0, noise)
            }
            Some(init) => {
                let first_step = scheduler.img2img_start_index(init.strength)?;
                let image_latents = encode_init_image(
                    &self.vae,
                    self.vae_dtype,
                    &self.device,
                    &init.image,
                    request.width,
                    request.height,
                    n,
                    &mut rng,
                )?;
                let noise = rng.randn_tensor(&shape, &self.device, DType::F32)?;
                observer.on_noise(&noise);
                (
                    first_step,
                    scheduler.scale_noise(&image_latents, first_step, &noise)?,
                )
            }
        };
        let mut latents = pack_latents(&latents)?;

        let total = timesteps.len() - first_step;
        let sigmas = scheduler.sigmas().to_vec();
        for (index, &timestep) in timesteps.iter().enumerate().skip(first_step) {
            // diffusers passes `t.expand(batch).to(latents.dtype) / 1000` in f32.
            let t = Tensor::full(timestep as f32 / 1000.0, n, &self.device)?;
            let velocity = self
                .transformer
                .forward(
                    &latents.to_dtype(self.dtype)?,
                    &prompt.embeds,
                    &prompt.pooled,
                    &t.to_dtype(self.dtype)?,
                    &img_ids,
                    &txt_ids,
                    guidance.as_ref(),
                )?
                .to_dtype(DType::F32)?;
            let next = scheduler.step(&velocity, index, &latents)?;
            // Flow matching: x_t = (1 - sigma) x0 + sigma * noise, v = noise - x0.
            let predicted_x0 = (&latents - (&velocity * sigmas[index])?)?;
            latents = next;
            let unpacked = unpack_latents(&latents, latent_h, latent_w)?;
            let unpacked_x0 = unpack_latents(&predicted_x0, latent_h, latent_w)?;
            let progress = StepProgress {
                step: index - first_step,
                total,
                timestep,
                latents: &unpacked,
                predicted_x0: &unpacked_x0,
            };
            if let ControlFlow::Break(()) = observer.on_step(&progress) {
                return Err(ModelError::Cancelled);
            }
        }
        let denoise = denoise_started.elapsed();

        let decode_started = Instant::now();
        let decoded = self.decode_latents(&unpack_latents(&latents, latent_h, latent_w)?)?;
        let images = image_io::to_rgb_images(&decoded)?;
        let decode = decode_started.elapsed();
        Ok(Generation {
            images,
            decoded,
            seed: request.seed,
            width: request.width,
            height: request.height,
            steps_run: total,
            prompt_truncated: prompt.truncated,
            prompt_tokens: prompt.clip_tokens,
            timings: Timings {
                text_encode,
                denoise,
                decode,
            },
        })
    }

    /// Unpacked latents `(B, C, H/8, W/8)` to images in [0, 1], NCHW f32.
    pub fn decode_latents(&self, latents: &Tensor) -> Result<Tensor> {
        decode_with_vae(&self.vae, self.vae_dtype, &self.device, latents)
    }
}
