//! One benchmark run: the architecture built with random weights, its stages timed.
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use super::architecture::Architecture;
use super::memory::{available_memory_bytes, peak_rss_bytes, MemoryEstimate};
use crate::device::{device_name, DTypeChoice};
use crate::error::ModelError;
use crate::pipeline::{
    GenerationRequest, LoadOptions, LoadedModel, NoObserver, StepObserver, StepProgress,
};

const PROMPT: &str = "a lighthouse at dusk, oil painting";
/// The batch sizes `--throughput` runs whole generations at.
pub const THROUGHPUT_BATCHES: [usize; 2] = [1, 4];

/// What to benchmark, and how.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub architecture: Architecture,
    /// Component configs from this folder instead of the embedded real ones.
    pub config_dir: Option<PathBuf>,
    pub width: usize,
    pub height: usize,
    pub dtype: DTypeChoice,
    /// Timed repetitions of each stage, after one warm-up run (at least 1).
    pub iters: usize,
    /// Also time whole generations at the model's default steps and guidance, batches 1 and 4.
    pub throughput: bool,
    /// Refuse a configuration estimated above this many bytes; default: the memory available.
    pub memory_limit: Option<u64>,
}

/// What `imago bench` prints: milliseconds are medians over the timed repetitions.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub family: String,
    pub width: usize,
    pub height: usize,
    pub dtype: String,
    pub device: String,
    /// The prompt through the text encoder(s), no negative prompt.
    pub text_encode_ms: f64,
    /// One denoiser evaluation for one image without classifier-free guidance, with the
    /// scheduler step (a guided step runs the denoiser on two rows).
    pub denoise_step_ms: f64,
    /// One image's latents through the VAE decoder to 8-bit RGB.
    pub vae_decode_ms: f64,
    /// The process's peak resident memory, weights included; `None` where the OS does not say.
    pub peak_rss_mb: Option<f64>,
    /// Whole generations per second at the default steps, by batch size (`--throughput`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub images_per_s: Option<BTreeMap<String, f64>>,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(
        "{what} needs about {} (weights {}, activations {}) but {} {}; try a smaller tier, \
         another dtype or device",
        gigabytes(estimate.total()), gigabytes(estimate.weights), gigabytes(estimate.activations), gigabytes(*limit),
        if *from_option { "is the limit (--memory-limit)" } else { "is available" }
    )]
    DoesNotFit {
        what: String,
        estimate: MemoryEstimate,
        limit: u64,
        from_option: bool,
    },
    #[error(transparent)]
    Model(#[from] ModelError),
}

fn gigabytes(bytes: u64) -> String {
    format!("{:.1} GB", bytes as f64 / 1e9)
}

/// Builds the architecture on `device` with random weights, after refusing it when its
/// estimated memory exceeds the limit (CPU only: candle reports no free GPU memory).
pub fn load(options: &BenchOptions, device: &Device) -> Result<LoadedModel, BenchError> {
    let arch = options.architecture;
    let store = arch.store(options.config_dir.as_deref())?;
    let spec = arch.spec();
    let dtype = options.dtype.resolve(device, DType::F16);
    let (width, height) = (options.width, options.height);
    if device.is_cpu() {
        // With --throughput the largest run is the biggest batch at the default guidance.
        let (batch, cfg) = if options.throughput {
            let guided = spec.is_some_and(|s| s.defaults.guidance > 1.0);
            (THROUGHPUT_BATCHES[THROUGHPUT_BATCHES.len() - 1], guided)
        } else {
            (1, false)
        };
        let estimate = MemoryEstimate::new(&store, arch, dtype, width, height, batch, cfg)?;
        let (limit, from_option) = match options.memory_limit {
            Some(limit) => (Some(limit), true),
            None => (available_memory_bytes(), false),
        };
        if let Some(limit) = limit.filter(|&l| estimate.total() > l) {
            return Err(BenchError::DoesNotFit {
                what: format!(
                    "{arch} at {width}x{height} in {} (batch {batch})",
                    dtype_name(dtype)
                ),
                estimate,
                limit,
                from_option,
            });
        }
    }
    Ok(LoadedModel::from_store(
        format!("bench/{arch}"),
        spec,
        store,
        device,
        options.dtype,
        LoadOptions::default(),
    )?)
}

/// Builds the architecture ([`load`]) and times its stages.
pub fn run(options: &BenchOptions, device: &Device) -> Result<BenchReport, BenchError> {
    let arch = options.architecture;
    let (width, height) = (options.width, options.height);
    let model = load(options, device)?;
    let dtype_name = dtype_name(model.dtype());
    let one_step = one_step_request(width, height);
    let mut samples: Vec<StageTimes> = Vec::new();
    for _ in 0..=options.iters.max(1) {
        samples.push(time_stages(&model, &one_step, true)?);
    }
    samples.remove(0); // the warm-up
    let median_ms = |stage: fn(&StageTimes) -> Duration| {
        round(
            median(
                samples
                    .iter()
                    .map(|s| stage(s).as_secs_f64() * 1000.0)
                    .collect(),
            ),
            2,
        )
    };
    let images_per_s = if options.throughput {
        let defaults = model.defaults();
        let mut rates = BTreeMap::new();
        for batch in THROUGHPUT_BATCHES {
            let request = GenerationRequest {
                steps: defaults.steps,
                guidance_scale: defaults.guidance,
                batch_size: batch,
                ..one_step.clone()
            };
            let started = Instant::now();
            model.generate(&request, &mut NoObserver)?;
            rates.insert(
                batch.to_string(),
                batch as f64 / started.elapsed().as_secs_f64(),
            );
        }
        Some(rates)
    } else {
        None
    };
    Ok(BenchReport {
        family: arch.to_string(),
        width,
        height,
        dtype: dtype_name.into(),
        device: device_name(device),
        text_encode_ms: median_ms(|s| s.text_encode),
        denoise_step_ms: median_ms(|s| s.denoise_step),
        vae_decode_ms: median_ms(|s| s.vae_decode),
        peak_rss_mb: peak_rss_bytes().map(|b| round(b as f64 / (1024.0 * 1024.0), 1)),
        images_per_s,
    })
}

/// A text-to-image request of one image and one unguided step.
fn one_step_request(width: usize, height: usize) -> GenerationRequest {
    GenerationRequest {
        prompt: PROMPT.into(),
        negative_prompt: None,
        seed: 0,
        steps: 1,
        guidance_scale: 0.0,
        width,
        height,
        batch_size: 1,
        scheduler: None,
        init_image: None,
        max_sequence_length: None,
    }
}

/// The time of one unguided denoising step of one `width` x `height` image (the denoiser and
/// the scheduler step): a one-step generation stopped before its decode.
pub fn time_denoise_step(
    model: &LoadedModel,
    width: usize,
    height: usize,
) -> Result<Duration, ModelError> {
    let times = time_stages(model, &one_step_request(width, height), false)?;
    Ok(times.denoise_step)
}

pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        _ => "other",
    }
}

struct StageTimes {
    text_encode: Duration,
    denoise_step: Duration,
    vae_decode: Duration,
}

/// One one-step generation, cut into stages where the pipeline hands over: the noise (text
/// encoded) and the step (denoised). The device is synchronised at each cut so that queued GPU
/// work is counted in its own stage. Without `decode` the run stops after the step (its
/// `vae_decode` is then zero).
fn time_stages(
    model: &LoadedModel,
    request: &GenerationRequest,
    decode: bool,
) -> Result<StageTimes, ModelError> {
    struct Cuts<'a> {
        device: &'a Device,
        decode: bool,
        noise: Option<Instant>,
        step: Option<Instant>,
        error: Option<candle_core::Error>,
    }
    impl Cuts<'_> {
        fn cut(&mut self) -> Instant {
            if let Err(err) = self.device.synchronize() {
                self.error.get_or_insert(err);
            }
            Instant::now()
        }
    }
    impl StepObserver for Cuts<'_> {
        fn on_noise(&mut self, _noise: &Tensor) {
            self.noise = Some(self.cut());
        }
        fn on_step(&mut self, _progress: &StepProgress<'_>) -> ControlFlow<()> {
            self.step = Some(self.cut());
            if self.decode {
                ControlFlow::Continue(())
            } else {
                ControlFlow::Break(())
            }
        }
    }
    let mut cuts = Cuts {
        device: model.device(),
        decode,
        noise: None,
        step: None,
        error: None,
    };
    let started = Instant::now();
    match model.generate(request, &mut cuts) {
        Ok(_) => {}
        Err(ModelError::Cancelled) if !decode => {}
        Err(err) => return Err(err),
    }
    let finished = Instant::now();
    if let Some(err) = cuts.error {
        return Err(err.into());
    }
    let (Some(noise), Some(step)) = (cuts.noise, cuts.step) else {
        return Err(ModelError::Unsupported(
            "the pipeline reported no noise or no step to time".into(),
        ));
    };
    Ok(StageTimes {
        text_encode: noise - started,
        denoise_step: step - noise,
        vae_decode: if decode {
            finished - step
        } else {
            Duration::ZERO
        },
    })
}

/// `value` to `decimals` places, so the JSON stays readable.
fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
