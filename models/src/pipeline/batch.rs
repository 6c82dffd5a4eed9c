//! Several compatible requests in one run: each keeps its own seed, prompt, `n`, scheduler state
//! and observer; they share one step loop, and at each step one UNet call evaluates all their rows
//! (see [`denoise_step`] for why that keeps each request's bits). Small images are decoded
//! together too ([`decode_groups`]), with the same guarantee: every request gets the bytes it
//! would get alone (checked by `tests::batched_images_equal_solo_runs`).
//!
//! Batched: Stable Diffusion / SDXL text-to-image requests with the same size, steps, guidance,
//! scheduler and `max_sequence_length` ([`batch_key`]). Anything else (image-to-image, FLUX) runs
//! one request after the other through [`LoadedModel::generate`], with the same results.
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use candle_core::{DType, Tensor};

use super::observer::{StepObserver, StepProgress};
use super::request::GenerationRequest;
use super::stable_diffusion::{apply_guidance, PromptEmbeddings, StableDiffusionPipeline};
use super::{image_io, DiffusionPipeline, Generation, LoadedModel, Timings};
use crate::error::{ModelError, Result};
use crate::rng::TorchGenerator;
use crate::schedulers::Scheduler;
use crate::unet::AddedConditions;

/// What must be equal for two requests to share a denoiser call; `None`: never batched.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchKey {
    pub width: usize,
    pub height: usize,
    pub steps: usize,
    /// Bits of the guidance scale (equal values, equal bits).
    pub guidance_bits: u64,
    pub scheduler: Option<crate::schedulers::SchedulerChoice>,
    pub max_sequence_length: Option<usize>,
}

/// The key under which `request` may be batched on `model`, or `None` when it runs alone
/// (image-to-image, FLUX).
pub fn batch_key(model: &LoadedModel, request: &GenerationRequest) -> Option<BatchKey> {
    if !matches!(model.pipeline, DiffusionPipeline::StableDiffusion(_))
        || request.init_image.is_some()
    {
        return None;
    }
    Some(BatchKey {
        width: request.width,
        height: request.height,
        steps: request.steps,
        guidance_bits: request.guidance_scale.to_bits(),
        scheduler: request.scheduler,
        max_sequence_length: request.max_sequence_length,
    })
}

impl LoadedModel {
    /// Runs `requests` together, `observers[i]` watching request i; one result per request, in
    /// order. A request whose observer breaks gets `Cancelled` and leaves the batch; the others go
    /// on. Requests that do not share one [`batch_key`] run one after the other.
    pub fn generate_batch(
        &self,
        requests: &[GenerationRequest],
        observers: &mut [&mut dyn StepObserver],
    ) -> Vec<Result<Generation>> {
        assert_eq!(requests.len(), observers.len(), "one observer per request");
        let first_key = requests.first().and_then(|r| batch_key(self, r));
        let shared = first_key.is_some()
            && requests.len() > 1
            && requests.iter().all(|r| batch_key(self, r) == first_key);
        match &self.pipeline {
            DiffusionPipeline::StableDiffusion(sd) if shared => {
                run_sd_batch(sd, requests, observers)
            }
            _ => requests
                .iter()
                .zip(observers.iter_mut())
                .map(|(request, observer)| self.generate(request, &mut **observer))
                .collect(),
        }
    }
}

/// One request's part of a batch.
struct Member {
    index: usize,
    scheduler: Scheduler,
    rng: TorchGenerator,
    latents: Tensor,
    prompt: PromptEmbeddings,
    added: Option<AddedConditions>,
    prompt_tokens: usize,
    text_encode: Duration,
}

fn run_sd_batch(
    sd: &StableDiffusionPipeline,
    requests: &[GenerationRequest],
    observers: &mut [&mut dyn StepObserver],
) -> Vec<Result<Generation>> {
    let mut results: Vec<Option<Result<Generation>>> = requests.iter().map(|_| None).collect();
    let mut members = Vec::with_capacity(requests.len());
    for (index, request) in requests.iter().enumerate() {
        match prepare(sd, index, request, &mut *observers[index]) {
            Ok(member) => members.push(member),
            Err(err) => results[index] = Some(Err(err)),
        }
    }
    // Every request shares the key: one cfg, one schedule.
    let Some(reference) = members.first().map(|m| &requests[m.index]) else {
        return results.into_iter().flatten().collect();
    };
    let cfg = reference.uses_cfg();
    let guidance = reference.guidance_scale;
    let timesteps = members[0].scheduler.timesteps().to_vec();
    let total = timesteps.len();
    let denoise_started = Instant::now();
    for (index, &timestep) in timesteps.iter().enumerate() {
        if members.is_empty() {
            break;
        }
        match denoise_step(sd, &mut members, index, timestep, cfg, guidance) {
            Ok(x0) => {
                let mut kept = Vec::with_capacity(members.len());
                for (member, x0) in members.drain(..).zip(x0) {
                    let progress = StepProgress {
                        step: index,
                        total,
                        timestep,
                        latents: &member.latents,
                        predicted_x0: &x0,
                    };
                    if let ControlFlow::Break(()) = observers[member.index].on_step(&progress) {
                        results[member.index] = Some(Err(ModelError::Cancelled));
                    } else {
                        kept.push(member);
                    }
                }
                members = kept;
            }
            Err(err) => {
                // A failure of the shared call fails every member still running.
                let message = err.to_string();
                for member in members.drain(..) {
                    results[member.index] = Some(Err(ModelError::Candle(candle_core::Error::Msg(
                        message.clone(),
                    ))));
                }
            }
        }
    }
    let denoise = denoise_started.elapsed();
    let pixels_per_member = reference.width * reference.height;
    let images = members.iter().map(|m| m.latents.dims()[0]);
    for group in decode_groups(images, pixels_per_member) {
        let group_members: Vec<Member> = members.drain(..group).collect();
        let indices: Vec<usize> = group_members.iter().map(|m| m.index).collect();
        let finished = finish_group(sd, group_members, requests, total, denoise);
        for (index, result) in indices.into_iter().zip(finished) {
            results[index] = Some(result);
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or(Err(ModelError::Cancelled)))
        .collect()
}

/// Checks, conditioning and seeded noise of one request, as `StableDiffusionPipeline::generate`.
fn prepare(
    sd: &StableDiffusionPipeline,
    index: usize,
    request: &GenerationRequest,
    observer: &mut dyn StepObserver,
) -> Result<Member> {
    sd.check_request(request)?;
    let started = Instant::now();
    let scheduler = sd.scheduler_for(request)?;
    let (prompt, added, prompt_tokens) = sd.conditioning(request)?;
    let text_encode = started.elapsed();
    let mut rng = TorchGenerator::new(request.seed);
    let shape = sd.latent_shape(request.batch_size, request.width, request.height);
    let noise = rng.randn_tensor(&shape, sd.device(), DType::F32)?;
    observer.on_noise(&noise);
    let latents = (noise * scheduler.init_noise_sigma())?;
    Ok(Member {
        index,
        scheduler,
        rng,
        latents,
        prompt,
        added,
        prompt_tokens,
        text_encode,
    })
}

/// One denoising step of every member: one UNet call over all members' rows (each member's
/// `[uncond; cond]` block, as its solo run lays it out, one after the other), then each member's
/// own scheduler step; returns each member's predicted x0.
///
/// The joined call gives every row the bits of its solo run because every CPU kernel the UNet
/// runs computes a row (or a sample) the same way whatever the number of rows: imago-kernels'
/// GEMM, convolution, attention and GroupNorm fix their reduction order independently of the
/// batch (see `kernels/src/gemm`), and the rest is element-wise or per row.
fn denoise_step(
    sd: &StableDiffusionPipeline,
    members: &mut [Member],
    index: usize,
    timestep: f64,
    cfg: bool,
    guidance: f64,
) -> Result<Vec<Tensor>> {
    let mut inputs = Vec::with_capacity(members.len());
    for m in members.iter() {
        let input = if cfg {
            Tensor::cat(&[&m.latents, &m.latents], 0)?
        } else {
            m.latents.clone()
        };
        inputs.push(m.scheduler.scale_model_input(&input, index)?);
    }
    let rows: Vec<usize> = inputs.iter().map(|t| t.dims()[0]).collect();
    let input = Tensor::cat(&inputs, 0)?;
    let embeds: Vec<&Tensor> = members.iter().map(|m| &m.prompt.embeds).collect();
    let embeds = Tensor::cat(&embeds, 0)?;
    let added = joined_added_conditions(members)?;
    let prediction = sd.predict_noise(&input, timestep, &embeds, added.as_ref())?;
    let mut x0 = Vec::with_capacity(members.len());
    let mut offset = 0;
    for (m, rows) in members.iter_mut().zip(rows) {
        let own = prediction.narrow(0, offset, rows)?;
        offset += rows;
        let own = apply_guidance(own, m.latents.dims()[0], cfg, guidance)?;
        let out = m.scheduler.step(&own, index, &m.latents, &mut m.rng)?;
        m.latents = out.prev_sample;
        x0.push(out.pred_original_sample);
    }
    Ok(x0)
}

/// SDXL's added conditions of every member, rows in member order; `None` for SD 1.x/2.x.
fn joined_added_conditions(members: &[Member]) -> Result<Option<AddedConditions>> {
    let added: Option<Vec<&AddedConditions>> = members.iter().map(|m| m.added.as_ref()).collect();
    let Some(added) = added else {
        return Ok(None);
    };
    let text_embeds: Vec<&Tensor> = added.iter().map(|a| &a.text_embeds).collect();
    let time_ids: Vec<&Tensor> = added.iter().map(|a| &a.time_ids).collect();
    Ok(Some(AddedConditions {
        text_embeds: Tensor::cat(&text_embeds, 0)?,
        time_ids: Tensor::cat(&time_ids, 0)?,
    }))
}

/// Decoded output pixels (images x width x height) up to which members share one VAE call: one
/// 512x512 image's worth. Below it a decode is dominated by per-layer overhead, which a joined
/// call pays once; above it joining gains nothing and would multiply the decode's memory.
const JOINED_DECODE_PIXELS: usize = 512 * 512;

/// Sizes of the consecutive groups of members (given by their image counts) decoded together:
/// each group's images fit in [`JOINED_DECODE_PIXELS`], or it is a single member.
fn decode_groups(images: impl Iterator<Item = usize>, pixels_per_image: usize) -> Vec<usize> {
    let mut groups = Vec::new();
    let (mut size, mut pixels) = (0usize, 0usize);
    for count in images {
        let own = count * pixels_per_image;
        if size > 0 && pixels + own > JOINED_DECODE_PIXELS {
            groups.push(size);
            (size, pixels) = (0, 0);
        }
        size += 1;
        pixels += own;
    }
    if size > 0 {
        groups.push(size);
    }
    groups
}

/// Decodes a group of members in one VAE call and gives each its images. Every decoder kernel
/// treats samples independently (as the UNet's, see [`denoise_step`]), so each member's rows
/// come out with the bits of its solo decode.
fn finish_group(
    sd: &StableDiffusionPipeline,
    members: Vec<Member>,
    requests: &[GenerationRequest],
    total: usize,
    denoise: Duration,
) -> Vec<Result<Generation>> {
    let decode_started = Instant::now();
    let latents: Vec<&Tensor> = members.iter().map(|m| &m.latents).collect();
    let decoded = match Tensor::cat(&latents, 0)
        .map_err(ModelError::from)
        .and_then(|joined| sd.decode_latents(&joined))
    {
        Ok(decoded) => decoded,
        Err(err) => {
            let message = err.to_string();
            return members
                .iter()
                .map(|_| Err(ModelError::Candle(candle_core::Error::Msg(message.clone()))))
                .collect();
        }
    };
    let decode = decode_started.elapsed();
    let mut offset = 0;
    members
        .into_iter()
        .map(|member| -> Result<Generation> {
            let rows = member.latents.dims()[0];
            let own = decoded.narrow(0, offset, rows)?.contiguous()?;
            offset += rows;
            let request = &requests[member.index];
            Ok(Generation {
                images: image_io::to_rgb_images(&own)?,
                decoded: own,
                seed: request.seed,
                width: request.width,
                height: request.height,
                steps_run: total,
                prompt_truncated: member.prompt.truncated,
                prompt_tokens: member.prompt_tokens,
                timings: Timings {
                    text_encode: member.text_encode,
                    denoise,
                    decode,
                },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{DTypeChoice, DeviceChoice};
    use crate::pipeline::NoObserver;

    fn request(prompt: &str, seed: u64, n: usize, guidance: f64) -> GenerationRequest {
        GenerationRequest {
            prompt: prompt.into(),
            negative_prompt: None,
            seed,
            steps: 3,
            guidance_scale: guidance,
            width: 64,
            height: 64,
            batch_size: n,
            scheduler: None,
            init_image: None,
            max_sequence_length: None,
        }
    }

    fn solo_and_batched(model: &LoadedModel, requests: &[GenerationRequest]) {
        let solo: Vec<Generation> = requests
            .iter()
            .map(|r| model.generate(r, &mut NoObserver).unwrap())
            .collect();
        let mut observers: Vec<NoObserver> = requests.iter().map(|_| NoObserver).collect();
        let mut refs: Vec<&mut dyn StepObserver> = observers
            .iter_mut()
            .map(|o| o as &mut dyn StepObserver)
            .collect();
        let batched = model.generate_batch(requests, &mut refs);
        for (i, (alone, together)) in solo.iter().zip(batched).enumerate() {
            let together = together.unwrap();
            assert_eq!(alone.images.len(), together.images.len());
            for (a, b) in alone.images.iter().zip(&together.images) {
                assert!(
                    a.as_raw() == b.as_raw(),
                    "request {i}: batched image differs from the solo run"
                );
            }
            let diff = (&alone.decoded - &together.decoded)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(diff, 0.0, "request {i}: decoded values differ by {diff}");
        }
    }

    #[test]
    fn batched_images_equal_solo_runs() {
        let model = LoadedModel::load("imago/tiny-sd", DeviceChoice::Cpu, DTypeChoice::F32)
            .expect("built-in model");
        // Different prompts, seeds and n; with and without guidance.
        for guidance in [0.0, 7.5] {
            let requests = [
                request("a red fox", 1, 1, guidance),
                request("a lighthouse at dusk", 2, 2, guidance),
                request("", 3, 1, guidance),
            ];
            solo_and_batched(&model, &requests);
        }
        // An ancestral scheduler draws per-step noise from each request's own generator.
        let mut requests = [request("a cat", 10, 1, 0.0), request("a dog", 11, 1, 0.0)];
        for r in &mut requests {
            r.scheduler = Some("euler_a".parse().unwrap());
        }
        solo_and_batched(&model, &requests);
    }

    #[test]
    fn sdxl_batches_keep_their_bytes() {
        let model = LoadedModel::load("imago/tiny-sdxl", DeviceChoice::Cpu, DTypeChoice::F32)
            .expect("built-in model");
        let requests = [
            request("a red fox", 1, 1, 5.0),
            request("a boat", 2, 1, 5.0),
        ];
        solo_and_batched(&model, &requests);
    }

    #[test]
    fn a_cancelled_member_leaves_the_others_running() {
        struct StopAt(usize);
        impl StepObserver for StopAt {
            fn on_step(&mut self, p: &StepProgress<'_>) -> ControlFlow<()> {
                if p.step == self.0 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            }
        }
        let model = LoadedModel::load("imago/tiny-sd", DeviceChoice::Cpu, DTypeChoice::F32)
            .expect("built-in model");
        let requests = [request("a", 1, 1, 0.0), request("b", 2, 1, 0.0)];
        let alone = model.generate(&requests[1], &mut NoObserver).unwrap();
        let (mut stop, mut go) = (StopAt(0), NoObserver);
        let mut observers: [&mut dyn StepObserver; 2] = [&mut stop, &mut go];
        let results = model.generate_batch(&requests, &mut observers);
        assert!(matches!(results[0], Err(ModelError::Cancelled)));
        let kept = results[1].as_ref().unwrap();
        assert!(kept.images[0].as_raw() == alone.images[0].as_raw());
    }

    #[test]
    fn small_images_share_decodes_up_to_one_512_image() {
        let groups = |counts: &[usize], pixels| decode_groups(counts.iter().copied(), pixels);
        // Eight 128x128 single images: 131072 pixels, one call.
        assert_eq!(groups(&[1; 8], 128 * 128), vec![8]);
        // 256x256: four per call.
        assert_eq!(groups(&[1; 8], 256 * 256), vec![4, 4]);
        // Members of n = 3 at 256x256: one member (3 images) fits, a second does not.
        assert_eq!(groups(&[3, 3, 1], 256 * 256), vec![1, 2]);
        // At 512x512 and above every member decodes alone, even one larger than the budget.
        assert_eq!(groups(&[1, 2, 1], 512 * 512), vec![1, 1, 1]);
        assert!(groups(&[], 64).is_empty());
    }

    #[test]
    fn only_compatible_txt2img_requests_share_a_key() {
        let model = LoadedModel::load("imago/tiny-sd", DeviceChoice::Cpu, DTypeChoice::F32)
            .expect("built-in model");
        let a = request("a", 1, 1, 0.0);
        let mut b = request("b", 9, 3, 0.0);
        assert_eq!(batch_key(&model, &a), batch_key(&model, &b));
        b.steps = 4;
        assert_ne!(batch_key(&model, &a), batch_key(&model, &b));
        let mut c = request("c", 1, 1, 0.0);
        c.init_image = Some(crate::pipeline::InitImage {
            image: image::RgbImage::new(64, 64),
            strength: 0.5,
        });
        assert_eq!(batch_key(&model, &c), None);
    }
}
