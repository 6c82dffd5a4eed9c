//! Stable Diffusion 1.x/2.x and SDXL (text-to-image and image-to-image), step for step as
//! diffusers' StableDiffusion(XL)(Img2Img)Pipeline.
use std::ops::ControlFlow;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use super::components::ComponentStore;
use super::image_io;
use super::latents::{decode_with_vae, encode_init_image};
use super::observer::{StepObserver, StepProgress};
use super::request::{img2img_steps, GenerationRequest};
use super::{Generation, Timings};
use crate::error::{ModelError, Result};
use crate::preview::LatentPreview;
use crate::rng::TorchGenerator;
use crate::schedulers::{Scheduler, SchedulerConfig, SchedulerKind};
use crate::specs::Family;
use crate::text::{ClipTextConfig, ClipTextModel, ClipTokenizer};
use crate::unet::{AddedConditions, UNet2DConditionModel, UNetConfig};
use crate::vae::{AutoencoderKL, VaeConfig};

/// Used when a model ships a scheduler class this engine does not implement (e.g. PNDM) and the
/// request names none.
pub const FALLBACK_SCHEDULER: &str = "euler";

/// What diffusers' StableDiffusionPipeline (and its img2img sibling, not the SDXL ones) does to the
/// model's own scheduler config when it is built: deprecated `steps_offset != 1` becomes 1 and a
/// `clip_sample` that is on (DDIM's default) is turned off. A scheduler chosen later with
/// `from_config` sees the patched `steps_offset`, and `clip_sample` only if the model's class has it.
fn sd_scheduler_fixups(config: &mut SchedulerConfig) {
    if config.steps_offset.unwrap_or(0) != 1 {
        config.steps_offset = Some(1);
    }
    if matches!(config.kind(), Ok(SchedulerKind::Ddim)) && config.clip_sample.unwrap_or(true) {
        config.clip_sample = Some(false);
    }
}

/// One CLIP tokenizer and its encoder.
struct TextTower {
    tokenizer: ClipTokenizer,
    encoder: ClipTextModel,
    projection_dim: usize,
}

/// Prompt conditioning ready for the UNet: for classifier-free guidance the unconditional rows come
/// first (`[negative x n, positive x n]`), as diffusers concatenates them.
pub struct PromptEmbeddings {
    pub embeds: Tensor,
    /// SDXL's pooled embeddings from `text_encoder_2`, same row order.
    pub pooled: Option<Tensor>,
    /// Whether the prompt was cut to the tokenizer's window.
    pub truncated: bool,
}

pub struct StableDiffusionPipeline {
    family: Family,
    device: Device,
    dtype: DType,
    text: TextTower,
    /// SDXL's second tokenizer/encoder (`text_encoder_2`, with projection).
    text_2: Option<TextTower>,
    force_zeros_for_empty_prompt: bool,
    unet: UNet2DConditionModel,
    unet_config: UNetConfig,
    vae: AutoencoderKL,
    vae_dtype: DType,
    scheduler_config: SchedulerConfig,
    vae_scale_factor: usize,
    preview: LatentPreview,
}

impl StableDiffusionPipeline {
    pub fn load(
        store: &ComponentStore,
        family: Family,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let load_text = |tok: &str, enc: &str| -> Result<TextTower> {
            let tokenizer = store.clip_tokenizer(tok)?;
            let config: ClipTextConfig = store.config(enc)?;
            let encoder = ClipTextModel::new(store.var_builder(enc, dtype, device)?, &config)?;
            Ok(TextTower {
                tokenizer,
                encoder,
                projection_dim: config.projection_dim,
            })
        };
        let (text, text_2) = match family {
            Family::StableDiffusion => (load_text("tokenizer", "text_encoder")?, None),
            Family::StableDiffusionXl => {
                if !store.has_component("text_encoder") {
                    return Err(ModelError::Unsupported(
                        "SDXL pipelines without `text_encoder` (the refiner) are not supported"
                            .into(),
                    ));
                }
                (
                    load_text("tokenizer", "text_encoder")?,
                    Some(load_text("tokenizer_2", "text_encoder_2")?),
                )
            }
            Family::Flux => {
                return Err(ModelError::Unsupported(
                    "FLUX models are not served by the Stable Diffusion pipeline".into(),
                ))
            }
        };
        let requires_aesthetics: Option<bool> = store.index_value("requires_aesthetics_score")?;
        if requires_aesthetics == Some(true) {
            return Err(ModelError::Unsupported(
                "SDXL refiner models (requires_aesthetics_score = true) are not supported".into(),
            ));
        }
        let force_zeros_for_empty_prompt = match family {
            // diffusers' SDXL pipelines default it to true.
            Family::StableDiffusionXl => store
                .index_value("force_zeros_for_empty_prompt")?
                .unwrap_or(true),
            _ => false,
        };
        let unet_config: UNetConfig = store.config("unet")?;
        let unet =
            UNet2DConditionModel::new(store.var_builder("unet", dtype, device)?, &unet_config)?;
        let vae_config: VaeConfig = store.config("vae")?;
        // diffusers upcasts a float16 VAE whose config asks for it (SD/SDXL VAEs overflow in f16).
        let vae_dtype = if dtype == DType::F16 && vae_config.force_upcast {
            DType::F32
        } else {
            dtype
        };
        let vae_scale_factor = 1 << vae_config.block_out_channels.len().saturating_sub(1);
        let vae = AutoencoderKL::new(store.var_builder("vae", vae_dtype, device)?, &vae_config)?;
        let mut scheduler_config = store.scheduler_config()?;
        if family == Family::StableDiffusion {
            sd_scheduler_fixups(&mut scheduler_config);
        }
        if let Err(err) = scheduler_config.kind() {
            tracing::warn!(
                "{err}; requests that name no scheduler use {FALLBACK_SCHEDULER} (built from the model's scheduler config)"
            );
        }
        // Fitted before `Self` exists: it only needs the VAE.
        let preview = LatentPreview::fit(unet_config.in_channels, device, |z| {
            decode_with_vae(&vae, vae_dtype, device, z)
        })?;
        Ok(Self {
            family,
            device: device.clone(),
            dtype,
            text,
            text_2,
            force_zeros_for_empty_prompt,
            unet,
            unet_config,
            vae,
            vae_dtype,
            scheduler_config,
            vae_scale_factor,
            preview,
        })
    }

    pub fn latent_channels(&self) -> usize {
        self.unet_config.in_channels
    }

    /// The cheap latent-to-RGB map fitted to this model's VAE.
    pub fn preview(&self) -> &LatentPreview {
        &self.preview
    }

    pub fn family(&self) -> Family {
        self.family
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Pixels per latent cell (8 for every SD/SDXL VAE).
    pub fn vae_scale_factor(&self) -> usize {
        self.vae_scale_factor
    }

    /// The (width, height) the UNet was trained at (`sample_size` x VAE factor): diffusers'
    /// default size; 512 when the config has no `sample_size`.
    pub fn native_size(&self) -> (usize, usize) {
        let (h, w) = self
            .unet_config
            .sample_size
            .map(|s| s.height_width())
            .unwrap_or((512 / self.vae_scale_factor, 512 / self.vae_scale_factor));
        (w * self.vae_scale_factor, h * self.vae_scale_factor)
    }

    pub fn scheduler_config(&self) -> &SchedulerConfig {
        &self.scheduler_config
    }

    /// Token ids for one text, padded to the window; `truncated` tells whether text was cut.
    fn encode_text(
        &self,
        tower: &TextTower,
        text: &str,
        batch: usize,
    ) -> Result<(crate::text::ClipTextOutput, bool)> {
        let tokens = tower.tokenizer.encode(text);
        let len = tokens.ids.len();
        let ids = Tensor::from_vec(tokens.ids, (1, len), &self.device)?;
        let ids = if batch > 1 {
            ids.repeat((batch, 1))?
        } else {
            ids
        };
        Ok((tower.encoder.forward(&ids)?, tokens.truncated))
    }

    /// Embeddings for `text` repeated `batch` times: SD uses the final hidden state; SDXL the
    /// penultimate hidden states of both encoders concatenated, and `text_encoder_2`'s pooled output.
    fn embed(&self, text: &str, batch: usize) -> Result<(Tensor, Option<Tensor>, bool)> {
        let (out, truncated) = self.encode_text(&self.text, text, batch)?;
        match &self.text_2 {
            None => Ok((out.last_hidden_state, None, truncated)),
            Some(tower_2) => {
                let (out_2, truncated_2) = self.encode_text(tower_2, text, batch)?;
                let embeds = Tensor::cat(
                    &[
                        &out.penultimate_hidden_state,
                        &out_2.penultimate_hidden_state,
                    ],
                    2,
                )?;
                Ok((embeds, Some(out_2.pooled), truncated || truncated_2))
            }
        }
    }

    /// The conditioning diffusers builds in `encode_prompt` for `batch` images.
    pub fn encode_prompt(
        &self,
        prompt: &str,
        negative_prompt: Option<&str>,
        batch: usize,
        cfg: bool,
    ) -> Result<PromptEmbeddings> {
        let (embeds, pooled, truncated) = self.embed(prompt, batch)?;
        if !cfg {
            return Ok(PromptEmbeddings {
                embeds,
                pooled,
                truncated,
            });
        }
        let zero_negative = negative_prompt.is_none() && self.force_zeros_for_empty_prompt;
        let (neg_embeds, neg_pooled) = if zero_negative {
            (
                embeds.zeros_like()?,
                pooled.as_ref().map(Tensor::zeros_like).transpose()?,
            )
        } else {
            let (e, p, _) = self.embed(negative_prompt.unwrap_or(""), batch)?;
            (e, p)
        };
        let embeds = Tensor::cat(&[&neg_embeds, &embeds], 0)?;
        let pooled = match (neg_pooled, pooled) {
            (Some(n), Some(p)) => Some(Tensor::cat(&[&n, &p], 0)?),
            _ => None,
        };
        Ok(PromptEmbeddings {
            embeds,
            pooled,
            truncated,
        })
    }

    /// SDXL's micro-conditioning: (original h, w, crop top, left, target h, w) with original =
    /// target = the output size and no crop, as the pipelines default.
    fn added_conditions(
        &self,
        prompt: &PromptEmbeddings,
        width: usize,
        height: usize,
    ) -> Result<Option<AddedConditions>> {
        let Some(pooled) = &prompt.pooled else {
            return Ok(None);
        };
        let rows = pooled.dim(0)?;
        let (h, w) = (height as f32, width as f32);
        let ids = Tensor::from_vec(vec![h, w, 0.0, 0.0, h, w], (1, 6), &self.device)?
            .to_dtype(self.dtype)?
            .repeat((rows, 1))?;
        if let (Some(time_dim), Some(expected)) = (
            self.unet_config.addition_time_embed_dim,
            self.unet_config.projection_class_embeddings_input_dim,
        ) {
            let passed = time_dim * 6 + self.text_2.as_ref().map_or(0, |t| t.projection_dim);
            if passed != expected {
                return Err(ModelError::Unsupported(format!(
                    "the UNet expects an added embedding of {expected} values but the text encoder and time ids give {passed}; the model's configs disagree"
                )));
            }
        }
        Ok(Some(AddedConditions {
            text_embeds: pooled.clone(),
            time_ids: ids,
        }))
    }

    /// The request checks every run makes before any work.
    pub(super) fn check_request(&self, request: &GenerationRequest) -> Result<()> {
        request.validate(self.vae_scale_factor)?;
        request.validate_sd_img2img_steps()?;
        if let Some(len) = request.max_sequence_length {
            return Err(ModelError::invalid(
                "max_sequence_length",
                format!(
                    "applies to FLUX models (T5 tokens) only; this is a {} model, got {len}",
                    self.family.as_str()
                ),
            ));
        }
        Ok(())
    }

    /// The request's scheduler: the one it names, else the model's (or the fallback).
    pub(super) fn scheduler_for(&self, request: &GenerationRequest) -> Result<Scheduler> {
        let choice = match request.scheduler {
            Some(choice) => Some(choice),
            // The model's own scheduler class is not implemented: use the fallback.
            None if self.scheduler_config.kind().is_err() => Some(FALLBACK_SCHEDULER.parse()?),
            None => None,
        };
        Scheduler::new(&self.scheduler_config, choice, request.steps)
    }

    /// The request's prompt conditioning, SDXL's added conditions, and its CLIP token count.
    pub(super) fn conditioning(
        &self,
        request: &GenerationRequest,
    ) -> Result<(PromptEmbeddings, Option<AddedConditions>, usize)> {
        let prompt = self.encode_prompt(
            &request.prompt,
            request.negative_prompt.as_deref(),
            request.batch_size,
            request.uses_cfg(),
        )?;
        let tokenizer = &self.text.tokenizer;
        let prompt_tokens =
            (tokenizer.token_ids(&request.prompt).len() + 2).min(tokenizer.model_max_length());
        let added = self.added_conditions(&prompt, request.width, request.height)?;
        Ok((prompt, added, prompt_tokens))
    }

    /// Latents of `n` images at this size, as the UNet takes them.
    pub(super) fn latent_shape(&self, n: usize, width: usize, height: usize) -> [usize; 4] {
        [
            n,
            self.unet_config.in_channels,
            height / self.vae_scale_factor,
            width / self.vae_scale_factor,
        ]
    }

    /// One UNet evaluation in the model's dtype; the noise prediction in f32.
    pub(super) fn predict_noise(
        &self,
        model_input: &Tensor,
        timestep: f64,
        embeds: &Tensor,
        added: Option<&AddedConditions>,
    ) -> Result<Tensor> {
        Ok(self
            .unet
            .forward(&model_input.to_dtype(self.dtype)?, timestep, embeds, added)?
            .to_dtype(DType::F32)?)
    }

    pub fn generate(
        &self,
        request: &GenerationRequest,
        observer: &mut dyn StepObserver,
    ) -> Result<Generation> {
        self.check_request(request)?;
        let started = Instant::now();
        let n = request.batch_size;
        let cfg = request.uses_cfg();
        let mut scheduler = self.scheduler_for(request)?;
        let timesteps = scheduler.timesteps().to_vec();
        let (prompt, added, prompt_tokens) = self.conditioning(request)?;
        let text_encode = started.elapsed();

        let denoise_started = Instant::now();
        let mut rng = TorchGenerator::new(request.seed);
        let latent_shape = self.latent_shape(n, request.width, request.height);
        let (first_step, mut latents) = match &request.init_image {
            None => {
                let noise = rng.randn_tensor(&latent_shape, &self.device, DType::F32)?;
                observer.on_noise(&noise);
                (0, (noise * scheduler.init_noise_sigma())?)
            }
            Some(init) => {
                let run = img2img_steps(request.steps, init.strength);
                let t_start = (request.steps - run) * scheduler.order();
                let init_latents = encode_init_image(
                    &self.vae,
                    self.vae_dtype,
                    &self.device,
                    &init.image,
                    request.width,
                    request.height,
                    n,
                    &mut rng,
                )?;
                let noise = rng.randn_tensor(init_latents.dims(), &self.device, DType::F32)?;
                observer.on_noise(&noise);
                (
                    t_start,
                    scheduler.add_noise(&init_latents, &noise, t_start)?,
                )
            }
        };

        let total = timesteps.len() - first_step;
        for (index, &timestep) in timesteps.iter().enumerate().skip(first_step) {
            let model_input = if cfg {
                Tensor::cat(&[&latents, &latents], 0)?
            } else {
                latents.clone()
            };
            let model_input = scheduler.scale_model_input(&model_input, index)?;
            let noise_pred =
                self.predict_noise(&model_input, timestep, &prompt.embeds, added.as_ref())?;
            let noise_pred = apply_guidance(noise_pred, n, cfg, request.guidance_scale)?;
            let out = scheduler.step(&noise_pred, index, &latents, &mut rng)?;
            latents = out.prev_sample;
            let progress = StepProgress {
                step: index - first_step,
                total,
                timestep,
                latents: &latents,
                predicted_x0: &out.pred_original_sample,
            };
            if let ControlFlow::Break(()) = observer.on_step(&progress) {
                return Err(ModelError::Cancelled);
            }
        }
        let denoise = denoise_started.elapsed();

        let decode_started = Instant::now();
        let decoded = self.decode_latents(&latents)?;
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
            prompt_tokens,
            timings: Timings {
                text_encode,
                denoise,
                decode,
            },
        })
    }

    /// The inverse of [`scale_latents`], then the VAE decoder; images in [0, 1], NCHW f32.
    pub fn decode_latents(&self, latents: &Tensor) -> Result<Tensor> {
        decode_with_vae(&self.vae, self.vae_dtype, &self.device, latents)
    }
}

/// Classifier-free guidance on a UNet output of `[uncond x n, text x n]` rows (`n` rows without CFG).
pub(super) fn apply_guidance(
    noise_pred: Tensor,
    n: usize,
    cfg: bool,
    scale: f64,
) -> Result<Tensor> {
    if !cfg {
        return Ok(noise_pred);
    }
    let uncond = noise_pred.narrow(0, 0, n)?;
    let text = noise_pred.narrow(0, n, n)?;
    Ok((&uncond + ((&text - &uncond)? * scale)?)?)
}
