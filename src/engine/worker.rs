//! The engine thread: loads the models, then runs jobs until the queue closes, taking compatible
//! waiting jobs together (up to `max_batch`) as one engine batch.
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use imago_models::pipeline::{batch_key, Generation, LoadedModel, StepObserver, StepProgress};
use imago_models::taesd::TinyAutoencoder;
use imago_models::ModelError;
use tokio::sync::{mpsc, oneshot};

use super::{
    caps_for, pixel_limit, EngineConfig, EngineError, EngineState, Job, JobEvent, JobOutput,
    ModelToLoad,
};
use crate::domain::caps::ModelCaps;
use crate::domain::request::PreviewMode;
use crate::metrics::Metrics;

/// A model as the engine reports it once loaded.
pub(super) struct Ready {
    pub caps: ModelCaps,
    pub pixel_limit: Option<(u64, String)>,
}

pub(super) fn run(
    config: EngineConfig,
    models: Vec<ModelToLoad>,
    jobs: mpsc::UnboundedReceiver<Job>,
    state: Arc<EngineState>,
    ready: oneshot::Sender<Result<Vec<Ready>, EngineError>>,
) {
    let loaded = match load_all(&config, &models) {
        Ok(loaded) => loaded,
        Err(err) => {
            let _ = ready.send(Err(err));
            return;
        }
    };
    let max_pixels = config.scheduling.max_pixels;
    let report = models
        .iter()
        .filter_map(|m| {
            loaded.get(&m.id).map(|served| Ready {
                caps: caps_for(&m.id, &served.model, served.tiny.is_some()),
                pixel_limit: pixel_limit(&served.model, max_pixels),
            })
        })
        .collect();
    if ready.send(Ok(report)).is_err() {
        return;
    }
    let max_batch = config.scheduling.max_batch.max(1);
    let limit_s = config.scheduling.request_timeout.as_secs();
    let queue = RefCell::new(Waiting {
        held: VecDeque::new(),
        jobs,
    });
    loop {
        let next = {
            let mut waiting = queue.borrow_mut();
            match waiting.held.pop_front() {
                Some(job) => Some(job),
                None => waiting.jobs.blocking_recv(),
            }
        };
        let Some(first) = next else {
            break;
        };
        let batch = {
            let mut waiting = queue.borrow_mut();
            waiting.drain_channel();
            take_batch(first, &mut waiting.held, &loaded, max_batch)
        };
        state.waiting.fetch_sub(batch.len(), Ordering::SeqCst);
        let runnable = triage(batch, &state, limit_s);
        if runnable.is_empty() {
            continue;
        }
        // Between steps of this batch, waiting jobs whose client left or whose deadline passed
        // are answered at once instead of when their turn comes.
        let sweep = || queue.borrow_mut().sweep(&state, limit_s);
        run_batch(&loaded, runnable, &state, limit_s, &sweep);
    }
    tracing::info!("engine queue closed; engine thread exits");
}

/// The jobs not yet started: the channel, and those taken from it but held back (not batchable
/// with the batch that ran).
struct Waiting {
    held: VecDeque<Job>,
    jobs: mpsc::UnboundedReceiver<Job>,
}

impl Waiting {
    fn drain_channel(&mut self) {
        while let Ok(job) = self.jobs.try_recv() {
            self.held.push_back(job);
        }
    }

    /// Answers (and forgets) the waiting jobs whose client left or whose deadline passed, so
    /// their queue places free up while a long batch runs.
    fn sweep(&mut self, state: &EngineState, limit_s: u64) {
        self.drain_channel();
        let now = Instant::now();
        let before = self.held.len();
        self.held.retain(|job| {
            if job.cancel.load(Ordering::SeqCst) {
                state.metrics.cancelled.inc();
                return false;
            }
            if now >= job.deadline {
                let _entered = job.span.clone().entered();
                state.metrics.timeouts.inc();
                tracing::warn!(limit_s, "request timed out while queued");
                let _ = job
                    .events
                    .try_send(JobEvent::Finished(Err(EngineError::TimedOut { limit_s })));
                return false;
            }
            true
        });
        state
            .waiting
            .fetch_sub(before - self.held.len(), Ordering::SeqCst);
    }
}

/// `first` and the held jobs that may run with it (same model and batch key), oldest first, up
/// to `max_batch`; the others stay held in order.
fn take_batch(
    first: Job,
    held: &mut VecDeque<Job>,
    loaded: &HashMap<String, Served>,
    max_batch: usize,
) -> Vec<Job> {
    let key = loaded
        .get(&first.model)
        .and_then(|served| batch_key(&served.model, &first.request));
    let mut batch = vec![first];
    let Some(key) = key else {
        return batch;
    };
    let mut rest = VecDeque::with_capacity(held.len());
    while let Some(job) = held.pop_front() {
        let joins = batch.len() < max_batch
            && job.model == batch[0].model
            && loaded
                .get(&job.model)
                .and_then(|served| batch_key(&served.model, &job.request))
                .as_ref()
                == Some(&key);
        if joins {
            batch.push(job);
        } else {
            rest.push_back(job);
        }
    }
    *held = rest;
    batch
}

/// Answers the jobs that must not run (client gone, deadline passed, shutting down) and returns
/// the others.
fn triage(batch: Vec<Job>, state: &EngineState, limit_s: u64) -> Vec<Job> {
    let metrics = &state.metrics;
    let now = Instant::now();
    let mut runnable = Vec::with_capacity(batch.len());
    for job in batch {
        let _entered = job.span.clone().entered();
        if job.cancel.load(Ordering::SeqCst) {
            metrics.cancelled.inc();
            tracing::info!("client left before its job started; dropped");
        } else if state.abort.load(Ordering::SeqCst) {
            tracing::info!("shutdown grace period over; queued job not run");
            let _ = job
                .events
                .blocking_send(JobEvent::Finished(Err(EngineError::Stopped)));
        } else if now >= job.deadline {
            metrics.timeouts.inc();
            tracing::warn!(limit_s, "request timed out while queued");
            let _ = job
                .events
                .blocking_send(JobEvent::Finished(Err(EngineError::TimedOut { limit_s })));
        } else {
            metrics.queue_wait.observe_duration(job.submitted.elapsed());
            metrics.batch_size.observe(job.request.batch_size as f64);
            runnable.push(job);
        }
    }
    runnable
}

/// Runs `batch` (jobs for one model) as one engine batch and answers each job.
fn run_batch(
    loaded: &HashMap<String, Served>,
    batch: Vec<Job>,
    state: &EngineState,
    limit_s: u64,
    between_steps: &dyn Fn(),
) {
    let metrics = &state.metrics;
    let started = Instant::now();
    metrics.engine_batch_requests.observe(batch.len() as f64);
    state.running.fetch_add(batch.len(), Ordering::SeqCst);
    // A lone job runs inside its request's span, so every line logged while it runs carries the
    // request id; in a batch each job's observer enters its own span (see `JobObserver::on_step`).
    let lone_span = (batch.len() == 1).then(|| batch[0].span.clone().entered());
    let results: Vec<Result<JobOutput, EngineError>> = match loaded.get(&batch[0].model) {
        None => batch
            .iter()
            .map(|job| Err(EngineError::UnknownModel(job.model.clone())))
            .collect(),
        Some(served) => generate(served, &batch, state, started, limit_s, between_steps),
    };
    drop(lone_span);
    state.running.fetch_sub(batch.len(), Ordering::SeqCst);
    state.record_job_time(started.elapsed() / batch.len() as u32);
    let batch_ms = started.elapsed().as_millis() as u64;
    for (job, result) in batch.iter().zip(results) {
        let _entered = job.span.clone().entered();
        match &result {
            Ok(output) => {
                tracing::info!(
                    images = output.images.len(),
                    batch = batch.len(),
                    ms = batch_ms,
                    "job finished"
                );
                metrics.images_generated.add(output.images.len() as u64);
                metrics.decode_time.observe_duration(output.timings.decode);
            }
            Err(EngineError::Cancelled) => {
                metrics.cancelled.inc();
                tracing::info!("job cancelled by its client");
            }
            Err(EngineError::TimedOut { .. }) => {
                metrics.timeouts.inc();
                tracing::warn!(limit_s, "request timed out while running");
            }
            Err(EngineError::Stopped) => {
                metrics.cancelled.inc();
                tracing::info!("job stopped: shutdown grace period over");
            }
            Err(other) => {
                metrics.engine_failures.inc();
                tracing::error!(error = %other, "generation failed");
            }
        }
        // `Finished` must arrive even when previews filled the channel.
        let _ = job.events.blocking_send(JobEvent::Finished(result));
    }
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

/// Runs the jobs through the model, one observer each, and turns the model's results into answers.
fn generate(
    served: &Served,
    batch: &[Job],
    state: &EngineState,
    started: Instant,
    limit_s: u64,
    between_steps: &dyn Fn(),
) -> Vec<Result<JobOutput, EngineError>> {
    let model = &served.model;
    let mut observers: Vec<JobObserver<'_>> = batch
        .iter()
        .enumerate()
        .map(|(i, job)| JobObserver {
            cancel: &job.cancel,
            abort: &state.abort,
            deadline: job.deadline,
            limit_s,
            stop: None,
            events: &job.events,
            span: &job.span,
            renderer: PreviewRenderer::choose(served, job.preview),
            partial_images: job.partial_images,
            sent: 0,
            metrics: &state.metrics,
            // One step of a batch is one step: timed once.
            times_steps: i == 0,
            between_steps,
            started,
            last_step: started,
        })
        .collect();
    let requests: Vec<_> = batch.iter().map(|job| job.request.clone()).collect();
    // A panic inside candle must fail these jobs, not the thread that serves everyone.
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let mut dyns: Vec<&mut dyn StepObserver> = observers
            .iter_mut()
            .map(|o| o as &mut dyn StepObserver)
            .collect();
        model.generate_batch(&requests, &mut dyns)
    }));
    match outcome {
        Ok(results) => results
            .into_iter()
            .zip(batch)
            .zip(&observers)
            .map(|((result, job), observer)| answer(result, job.submitted, started, observer.stop))
            .collect(),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            batch
                .iter()
                .map(|_| {
                    Err(EngineError::Failed(format!(
                        "panic in the engine: {message}"
                    )))
                })
                .collect()
        }
    }
}

/// Why an observer stopped its job.
#[derive(Clone, Copy, Debug)]
enum Stop {
    Client,
    Deadline { limit_s: u64 },
    Shutdown,
}

fn answer(
    result: imago_models::Result<Generation>,
    submitted: Instant,
    started: Instant,
    stop: Option<Stop>,
) -> Result<JobOutput, EngineError> {
    match result {
        Ok(generation) => Ok(JobOutput {
            images: generation.images,
            seed: generation.seed,
            width: generation.width,
            height: generation.height,
            steps_run: generation.steps_run,
            prompt_truncated: generation.prompt_truncated,
            prompt_tokens: generation.prompt_tokens,
            timings: generation.timings,
            queue_time: started.saturating_duration_since(submitted),
        }),
        Err(ModelError::Cancelled) => Err(match stop {
            Some(Stop::Deadline { limit_s }) => EngineError::TimedOut { limit_s },
            Some(Stop::Shutdown) => EngineError::Stopped,
            _ => EngineError::Cancelled,
        }),
        Err(err @ ModelError::InvalidInput { .. }) => Err(EngineError::Invalid(err)),
        Err(err) => Err(EngineError::Failed(err.to_string())),
    }
}

struct JobObserver<'a> {
    cancel: &'a AtomicBool,
    /// The engine's shutdown abort flag.
    abort: &'a AtomicBool,
    deadline: Instant,
    /// The request timeout, for the answer.
    limit_s: u64,
    /// Set when this observer stopped the job, and why.
    stop: Option<Stop>,
    events: &'a mpsc::Sender<JobEvent>,
    /// The job's request span, entered while this observer logs.
    span: &'a tracing::Span,
    renderer: PreviewRenderer<'a>,
    partial_images: usize,
    sent: u32,
    metrics: &'a Metrics,
    /// Whether this observer records step times (the first of a batch does).
    times_steps: bool,
    /// Answers waiting jobs that expired or were left (cheap; called after every step).
    between_steps: &'a dyn Fn(),
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
        let _entered = self.span.enter();
        let now = Instant::now();
        if self.times_steps {
            self.metrics
                .step_time
                .observe_duration(now - self.last_step);
        }
        (self.between_steps)();
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
        self.stop = if self.cancel.load(Ordering::SeqCst) {
            Some(Stop::Client)
        } else if self.abort.load(Ordering::SeqCst) {
            Some(Stop::Shutdown)
        } else if now >= self.deadline {
            Some(Stop::Deadline {
                limit_s: self.limit_s,
            })
        } else {
            None
        };
        if self.stop.is_some() {
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
