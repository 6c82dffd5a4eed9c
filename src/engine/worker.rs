//! The engine thread: loads the models, then runs jobs one at a time until the queue closes.
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use imago_models::pipeline::{LoadedModel, StepObserver, StepProgress};
use imago_models::taesd::TinyAutoencoder;
use imago_models::ModelError;
use tokio::sync::{mpsc, oneshot};

use super::{caps_for, EngineConfig, EngineError, Job, JobEvent, JobOutput, ModelToLoad};
use crate::domain::caps::ModelCaps;
use crate::domain::request::PreviewMode;
use crate::metrics::Metrics;

/// Counters the worker shares with the async side.
pub(super) struct Shared {
    pub waiting: Arc<AtomicUsize>,
    pub running: Arc<AtomicUsize>,
    pub metrics: Arc<Metrics>,
}

pub(super) fn run(
    config: EngineConfig,
    models: Vec<ModelToLoad>,
    mut jobs: mpsc::Receiver<Job>,
    shared: Shared,
    ready: oneshot::Sender<Result<Vec<ModelCaps>, EngineError>>,
) {
    let metrics = &shared.metrics;
    let loaded = match load_all(&config, &models) {
        Ok(loaded) => loaded,
        Err(err) => {
            let _ = ready.send(Err(err));
            return;
        }
    };
    let caps = models
        .iter()
        .filter_map(|m| {
            loaded
                .get(&m.id)
                .map(|served| caps_for(&m.id, &served.model, served.tiny.is_some()))
        })
        .collect();
    if ready.send(Ok(caps)).is_err() {
        return;
    }
    while let Some(job) = jobs.blocking_recv() {
        shared.waiting.fetch_sub(1, Ordering::SeqCst);
        let _entered = job.span.clone().entered();
        if job.cancel.load(Ordering::SeqCst) {
            metrics.cancelled.inc();
            tracing::info!("client left before its job started; dropped");
            continue;
        }
        let queue_time = job.submitted.elapsed();
        metrics.queue_wait.observe_duration(queue_time);
        metrics.batch_size.observe(job.request.batch_size as f64);
        shared.running.fetch_add(1, Ordering::SeqCst);
        let result = match loaded.get(&job.model) {
            None => Err(EngineError::UnknownModel(job.model.clone())),
            Some(served) => run_job(served, &job, queue_time, metrics),
        };
        shared.running.fetch_sub(1, Ordering::SeqCst);
        match &result {
            Ok(output) => {
                metrics.images_generated.add(output.images.len() as u64);
                metrics.decode_time.observe_duration(output.timings.decode);
            }
            Err(EngineError::Cancelled) => {
                metrics.cancelled.inc();
                tracing::info!("job cancelled by its client");
            }
            Err(other) => {
                metrics.engine_failures.inc();
                tracing::error!(error = %other, "generation failed");
            }
        }
        // `Finished` must arrive even when previews filled the channel.
        let _ = job.events.blocking_send(JobEvent::Finished(result));
    }
    tracing::info!("engine queue closed; engine thread exits");
}

/// A loaded model and the tiny autoencoder that previews it, if one was configured.
struct Served {
    model: LoadedModel,
    tiny: Option<Arc<TinyAutoencoder>>,
}

fn load_all(
    config: &EngineConfig,
    models: &[ModelToLoad],
) -> Result<HashMap<String, Served>, EngineError> {
    let device = config.device.open().map_err(|e| EngineError::Load {
        id: "*".into(),
        source_desc: format!("device {}", config.device),
        message: e.to_string(),
    })?;
    let mut loaded = HashMap::new();
    for m in models {
        let started = Instant::now();
        let model = LoadedModel::load_on(&m.source, &device, config.dtype, config.load_options)
            .map_err(|e| EngineError::Load {
                id: m.id.clone(),
                source_desc: m.source.clone(),
                message: e.to_string(),
            })?;
        tracing::info!(model = %m.id, from = %model.location, ms = started.elapsed().as_millis() as u64, "model loaded");
        loaded.insert(m.id.clone(), Served { model, tiny: None });
    }
    for spec in &config.preview_decoders {
        let load_error = |message: String| EngineError::Load {
            id: spec
                .model
                .clone()
                .unwrap_or_else(|| "preview decoder".into()),
            source_desc: spec.source.clone(),
            message,
        };
        let dir = resolve_folder(&spec.source).map_err(|e| load_error(e.to_string()))?;
        let dtype = loaded
            .values()
            .next()
            .map(|s| s.model.dtype())
            .unwrap_or(imago_models::DType::F32);
        let tiny = Arc::new(
            TinyAutoencoder::load(&dir, dtype, &device).map_err(|e| load_error(e.to_string()))?,
        );
        let mut attached = 0;
        for (id, served) in loaded.iter_mut() {
            let wanted = match &spec.model {
                Some(model) => model == id,
                None => served.model.latent_channels() == tiny.latent_channels(),
            };
            if wanted {
                if served.model.latent_channels() != tiny.latent_channels() {
                    return Err(load_error(format!(
                        "the decoder takes {} latent channels, model {id} has {}",
                        tiny.latent_channels(),
                        served.model.latent_channels()
                    )));
                }
                served.tiny = Some(tiny.clone());
                attached += 1;
            }
        }
        if attached == 0 {
            return Err(load_error(
                "no served model matches this preview decoder (id or latent channels)".into(),
            ));
        }
        tracing::info!(source = %spec.source, models = attached, "preview decoder loaded");
    }
    Ok(loaded)
}

/// A folder, or a repo id in the local Hugging Face cache.
fn resolve_folder(source: &str) -> Result<std::path::PathBuf, ModelError> {
    use imago_models::loader::{cached_snapshot, hub_cache_dir, ModelSource};
    match ModelSource::parse(source)? {
        ModelSource::Folder(path) => Ok(path),
        ModelSource::HubRepo { repo_id, revision } => {
            let cache = hub_cache_dir();
            cached_snapshot(&cache, &repo_id, revision.as_deref())?.ok_or_else(|| ModelError::MissingFile {
                what: format!("{repo_id} in the local Hugging Face cache (download it with `hf download {repo_id}`)"),
                path: cache.join(format!("models--{}", repo_id.replace('/', "--"))),
            })
        }
        ModelSource::BuiltIn(b) => Err(ModelError::Unsupported(format!(
            "{b} is a diffusion model, not a preview decoder"
        ))),
    }
}

/// How this job's previews are drawn.
enum PreviewRenderer<'a> {
    Latent(&'a LoadedModel),
    Tiny(&'a TinyAutoencoder),
}

impl PreviewRenderer<'_> {
    /// `auto`: the tiny autoencoder on a GPU; on the CPU it costs seconds per preview, so the linear map.
    fn choose<'a>(served: &'a Served, mode: PreviewMode) -> PreviewRenderer<'a> {
        match (mode, served.tiny.as_deref()) {
            (PreviewMode::Taesd, Some(tiny)) => PreviewRenderer::Tiny(tiny),
            (PreviewMode::Auto, Some(tiny)) if !served.model.device().is_cpu() => {
                PreviewRenderer::Tiny(tiny)
            }
            _ => PreviewRenderer::Latent(&served.model),
        }
    }

    fn render(&self, x0: &imago_models::Tensor) -> imago_models::Result<Vec<image::RgbImage>> {
        match self {
            Self::Latent(model) => model.preview().render(x0),
            Self::Tiny(tiny) => imago_models::preview::render_with_tiny_autoencoder(tiny, x0),
        }
    }
}

fn run_job(
    served: &Served,
    job: &Job,
    queue_time: std::time::Duration,
    metrics: &Metrics,
) -> Result<JobOutput, EngineError> {
    let model = &served.model;
    let started = Instant::now();
    let mut observer = JobObserver {
        cancel: &job.cancel,
        events: &job.events,
        renderer: PreviewRenderer::choose(served, job.preview),
        partial_images: job.partial_images,
        sent: 0,
        metrics,
        started,
        last_step: started,
    };
    // A panic inside candle must fail this job, not the thread that serves everyone.
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        model.generate(&job.request, &mut observer)
    }));
    match outcome {
        Ok(Ok(generation)) => Ok(JobOutput {
            images: generation.images,
            seed: generation.seed,
            width: generation.width,
            height: generation.height,
            steps_run: generation.steps_run,
            prompt_truncated: generation.prompt_truncated,
            prompt_tokens: generation.prompt_tokens,
            timings: generation.timings,
            queue_time,
        }),
        Ok(Err(ModelError::Cancelled)) => Err(EngineError::Cancelled),
        Ok(Err(err @ ModelError::InvalidInput { .. })) => Err(EngineError::Invalid(err)),
        Ok(Err(err)) => Err(EngineError::Failed(err.to_string())),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(EngineError::Failed(format!(
                "panic in the engine: {message}"
            )))
        }
    }
}

struct JobObserver<'a> {
    cancel: &'a AtomicBool,
    events: &'a mpsc::Sender<JobEvent>,
    renderer: PreviewRenderer<'a>,
    partial_images: usize,
    sent: u32,
    metrics: &'a Metrics,
    /// When the job left the queue.
    started: Instant,
    /// When the previous step ended (or the noise was drawn).
    last_step: Instant,
}

/// The steps after which previews go out: `n` spread evenly over `total`, the last one after the
/// final step (before the VAE decode); fewer when there are fewer steps than previews.
pub(super) fn preview_steps(total: usize, n: usize) -> Vec<usize> {
    let mut steps: Vec<usize> = (1..=n)
        .map(|k| (k * total).div_ceil(n).saturating_sub(1))
        .collect();
    steps.dedup();
    steps
}

impl StepObserver for JobObserver<'_> {
    fn on_noise(&mut self, _noise: &imago_models::Tensor) {
        // Denoising starts now (text encoding and img2img's VAE encode are done).
        self.last_step = Instant::now();
    }

    fn on_step(&mut self, progress: &StepProgress<'_>) -> ControlFlow<()> {
        let now = Instant::now();
        self.metrics
            .step_time
            .observe_duration(now - self.last_step);
        self.last_step = now;
        if self.partial_images > 0
            && preview_steps(progress.total, self.partial_images).contains(&progress.step)
        {
            // The projection is a few multiply-adds per latent cell; encoding happens off this thread.
            match self.renderer.render(progress.predicted_x0) {
                Ok(images) => {
                    if self
                        .events
                        .try_send(JobEvent::Preview {
                            partial_image_index: self.sent,
                            images,
                        })
                        .is_ok()
                    {
                        if self.sent == 0 {
                            self.metrics
                                .time_to_first_preview
                                .observe_duration(self.started.elapsed());
                        }
                        self.sent += 1;
                        self.metrics.previews_sent.inc();
                    } else {
                        self.metrics.previews_dropped.inc();
                        tracing::debug!("preview dropped: the client is not keeping up");
                    }
                }
                Err(err) => tracing::warn!(error = %err, "preview failed"),
            }
        }
        if self.cancel.load(Ordering::SeqCst) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::preview_steps;

    #[test]
    fn previews_spread_evenly_and_end_on_the_last_step() {
        assert_eq!(preview_steps(4, 2), vec![1, 3]);
        assert_eq!(preview_steps(10, 3), vec![3, 6, 9]);
        assert_eq!(preview_steps(1, 2), vec![0]);
        assert_eq!(preview_steps(2, 3), vec![0, 1]);
        assert_eq!(preview_steps(5, 1), vec![4]);
        assert!(preview_steps(5, 0).is_empty());
    }
}
