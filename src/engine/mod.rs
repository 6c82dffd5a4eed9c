//! The local provider's async face: one OS thread per device owns the loaded models and runs
//! one job at a time; async code reaches it through a bounded queue of messages, each carrying a
//! tracing span and a channel for the job's events. No forward pass ever runs on a tokio worker.
//! Admission is counted here (`max_queue` waiting jobs, then 429); the thread batches compatible
//! waiting jobs (`max_batch`) and enforces each job's deadline (`request_timeout`).
mod caps;
mod memory;
mod worker;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use image::RgbImage;
use imago_models::device::{DTypeChoice, DeviceChoice};
use imago_models::pipeline::{GenerationRequest, Timings};
use tokio::sync::{mpsc, oneshot};

use crate::domain::caps::ModelCaps;
use crate::domain::request::PreviewMode;
use crate::metrics::Metrics;

pub use caps::caps_for;
pub use memory::{bytes_per_pixel, pixel_limit, MEMORY_SHARE};

/// How the engine is set up.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub device: DeviceChoice,
    pub dtype: DTypeChoice,
    /// Jobs waiting beyond the running one; more are refused (the caller answers 429).
    pub max_queue: usize,
    /// Tiny autoencoders for previews (`--preview-decoder`).
    pub preview_decoders: Vec<PreviewDecoderToLoad>,
    /// How models are kept in memory (`--low-memory`).
    pub load_options: imago_models::pipeline::LoadOptions,
    /// Batching, deadlines and size limits.
    pub scheduling: Scheduling,
}

/// How the engine thread takes jobs.
#[derive(Clone, Debug)]
pub struct Scheduling {
    /// Compatible waiting requests run together, up to this many (`--max-batch`; 1: no batching).
    pub max_batch: usize,
    /// A job waiting plus running longer than this is stopped and answered 504 (`--request-timeout`).
    pub request_timeout: Duration,
    /// Most pixels (n x width x height) one request may ask for (`--max-pixels`); `None`: the
    /// memory estimate of [`pixel_limit`] for the device.
    pub max_pixels: Option<u64>,
}

impl Default for Scheduling {
    fn default() -> Self {
        Self {
            max_batch: 4,
            request_timeout: Duration::from_secs(600),
            max_pixels: None,
        }
    }
}

/// `--preview-decoder [MODEL_ID=]SOURCE`: a TAESD-family folder (or HF repo id in the cache) for
/// one model, or, without an id, for every model whose latents have its channel count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreviewDecoderToLoad {
    pub model: Option<String>,
    pub source: String,
}

/// A model to load at start-up: the id clients use and where it comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelToLoad {
    pub id: String,
    pub source: String,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot load model {id} from {source_desc}: {message}")]
    Load {
        id: String,
        source_desc: String,
        message: String,
    },
    #[error("the queue is full ({depth} jobs waiting)")]
    QueueFull { depth: usize },
    #[error("no model {0} is loaded")]
    UnknownModel(String),
    /// The request is invalid for this model (caught by the engine's own checks).
    #[error("{0}")]
    Invalid(imago_models::ModelError),
    #[error("generation failed: {0}")]
    Failed(String),
    #[error("the job was cancelled")]
    Cancelled,
    #[error(
        "the generation took longer than the request timeout of {limit_s} s (--request-timeout)"
    )]
    TimedOut { limit_s: u64 },
    #[error(
        "n x width x height = {pixels} pixels is more than the {limit} pixels this server can generate \
         at once for model {model} ({why})"
    )]
    TooLarge {
        model: String,
        pixels: u64,
        limit: u64,
        why: String,
    },
    #[error("the engine has stopped")]
    Stopped,
}

/// What a finished job produced.
#[derive(Debug)]
pub struct JobOutput {
    pub images: Vec<RgbImage>,
    pub seed: u64,
    pub width: usize,
    pub height: usize,
    pub steps_run: usize,
    pub prompt_truncated: bool,
    pub prompt_tokens: usize,
    pub timings: Timings,
    /// Time from submission to the start of the job.
    pub queue_time: Duration,
}

/// What a job reports, in order: `Preview`s (lossy: dropped when the caller is slow), then
/// exactly one `Finished`.
#[derive(Debug)]
pub enum JobEvent {
    /// The predicted clean image after a step, one small picture per batch item.
    Preview {
        partial_image_index: u32,
        images: Vec<RgbImage>,
    },
    Finished(Result<JobOutput, EngineError>),
}

/// The caller's end of a submitted job. Dropping it (the client went away) cancels the job: a
/// queued job is skipped, a running one stops at its next step boundary.
pub struct JobHandle {
    pub events: mpsc::Receiver<JobEvent>,
    cancel: Arc<AtomicBool>,
}

impl JobHandle {
    /// Waits for the job's result, ignoring progress.
    pub async fn finish(mut self) -> Result<JobOutput, EngineError> {
        while let Some(event) = self.events.recv().await {
            if let JobEvent::Finished(result) = event {
                return result;
            }
        }
        Err(EngineError::Stopped)
    }
}

impl Drop for JobHandle {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::SeqCst);
    }
}

/// One message to the engine thread.
pub(crate) struct Job {
    pub model: String,
    pub request: GenerationRequest,
    /// Previews to send, spread over the steps (0: none).
    pub partial_images: usize,
    pub preview: PreviewMode,
    pub span: tracing::Span,
    pub events: mpsc::Sender<JobEvent>,
    pub cancel: Arc<AtomicBool>,
    pub submitted: Instant,
    /// Past this instant the job is stopped and answered `TimedOut`.
    pub deadline: Instant,
}

/// What the async side and the engine thread share.
pub(crate) struct EngineState {
    /// Jobs submitted and not yet started (in the channel or held back by the batcher).
    pub waiting: AtomicUsize,
    /// Jobs running now (a batch counts each of its jobs).
    pub running: AtomicUsize,
    /// Recent engine time per job in ms (moving average), for Retry-After.
    pub recent_job_ms: AtomicU64,
    /// Set past the shutdown grace period: running jobs stop, waiting ones are answered `Stopped`.
    pub abort: AtomicBool,
    pub metrics: Arc<Metrics>,
}

impl EngineState {
    /// Folds one job's engine time into the moving average (weight 1/4 for the newest).
    pub fn record_job_time(&self, per_job: Duration) {
        let ms = per_job.as_millis().min(u64::MAX as u128) as u64;
        let _ = self
            .recent_job_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if old == 0 {
                    ms.max(1)
                } else {
                    (old * 3 + ms) / 4
                })
            });
    }
}

/// Handle to the engine thread; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    /// Shared by every clone; `shutdown` takes it out, which closes the queue for all of them.
    jobs: Arc<Mutex<Option<mpsc::UnboundedSender<Job>>>>,
    state: Arc<EngineState>,
    metrics: Arc<Metrics>,
    max_queue: usize,
    request_timeout: Duration,
    /// Per model: the most pixels one request may ask for, and why.
    pixel_limits: Arc<HashMap<String, (u64, String)>>,
    worker: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

/// Capacity of a job's event channel; previews beyond it are dropped, never `Finished`.
const EVENT_CAPACITY: usize = 64;

impl Engine {
    /// Starts the engine thread, loads `models` on it, and returns once they are loaded (or the
    /// first one failed) with their capabilities.
    pub async fn start(
        config: EngineConfig,
        models: Vec<ModelToLoad>,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, Vec<ModelCaps>), EngineError> {
        // Unbounded: admission is bounded by `state.waiting` in `submit`, not by the channel.
        let (jobs_tx, jobs_rx) = mpsc::unbounded_channel::<Job>();
        let (ready_tx, ready_rx) = oneshot::channel();
        let state = Arc::new(EngineState {
            waiting: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            recent_job_ms: AtomicU64::new(0),
            abort: AtomicBool::new(false),
            metrics: metrics.clone(),
        });
        let worker_config = config.clone();
        let worker_state = state.clone();
        let handle = std::thread::Builder::new()
            .name("imago-engine".into())
            .spawn(move || worker::run(worker_config, models, jobs_rx, worker_state, ready_tx))
            .map_err(|e| EngineError::Failed(format!("cannot start the engine thread: {e}")))?;
        let loaded = ready_rx.await.map_err(|_| EngineError::Stopped)??;
        let caps = loaded.iter().map(|m| m.caps.clone()).collect();
        let pixel_limits = loaded
            .into_iter()
            .filter_map(|m| m.pixel_limit.map(|limit| (m.caps.id, limit)))
            .collect();
        Ok((
            Self {
                jobs: Arc::new(Mutex::new(Some(jobs_tx))),
                state,
                metrics,
                max_queue: config.max_queue.max(1),
                request_timeout: config.scheduling.request_timeout,
                pixel_limits: Arc::new(pixel_limits),
                worker: Arc::new(Mutex::new(Some(handle))),
            },
            caps,
        ))
    }

    /// Queues a job with `partial_images` previews; refused at once when `max_queue` jobs are
    /// already waiting.
    pub fn submit(
        &self,
        model: &str,
        request: GenerationRequest,
        partial_images: usize,
        preview: PreviewMode,
    ) -> Result<JobHandle, EngineError> {
        // Refused before queueing: a request that cannot fit should not wait minutes to fail.
        if let Some((limit, why)) = self.pixel_limits.get(model) {
            let pixels = (request.batch_size as u64)
                .saturating_mul(request.width as u64)
                .saturating_mul(request.height as u64);
            if pixels > *limit {
                return Err(EngineError::TooLarge {
                    model: model.to_string(),
                    pixels,
                    limit: *limit,
                    why: why.clone(),
                });
            }
        }
        let (events_tx, events_rx) = mpsc::channel(EVENT_CAPACITY);
        let cancel = Arc::new(AtomicBool::new(false));
        let submitted = Instant::now();
        let job = Job {
            model: model.to_string(),
            request,
            partial_images,
            preview,
            span: tracing::Span::current(),
            events: events_tx,
            cancel: cancel.clone(),
            submitted,
            deadline: submitted + self.request_timeout,
        };
        let Some(sender) = self.jobs.lock().ok().and_then(|jobs| jobs.clone()) else {
            return Err(EngineError::Stopped);
        };
        // Take a place in the queue, or refuse when `max_queue` are taken.
        let admitted = self
            .state
            .waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                (w < self.max_queue).then_some(w + 1)
            });
        if let Err(depth) = admitted {
            return Err(EngineError::QueueFull { depth });
        }
        match sender.send(job) {
            Ok(()) => Ok(JobHandle {
                events: events_rx,
                cancel,
            }),
            Err(_) => {
                self.state.waiting.fetch_sub(1, Ordering::SeqCst);
                Err(EngineError::Stopped)
            }
        }
    }

    /// Seconds a refused client should wait: the jobs ahead (the waiting ones and one running)
    /// times the recent engine time per job; 1 s before any job has run.
    pub fn retry_after_s(&self) -> u64 {
        let ahead = self.queue_depth() as u64 + 1;
        let per_job_ms = self.state.recent_job_ms.load(Ordering::Relaxed).max(1);
        (ahead * per_job_ms).div_ceil(1000).clamp(1, 3600)
    }

    /// Recent engine time per job (moving average); `None` before the first job.
    pub fn recent_job_time(&self) -> Option<Duration> {
        match self.state.recent_job_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// The most pixels (n x width x height) one request for `model` may ask for.
    pub fn pixel_limit(&self, model: &str) -> Option<u64> {
        self.pixel_limits.get(model).map(|(limit, _)| *limit)
    }

    /// Jobs submitted and not yet started.
    pub fn queue_depth(&self) -> usize {
        self.state.waiting.load(Ordering::SeqCst)
    }

    /// The metrics the engine records into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Jobs running now (0 or 1 per device).
    pub fn in_flight(&self) -> usize {
        self.state.running.load(Ordering::SeqCst)
    }

    pub fn max_queue(&self) -> usize {
        self.max_queue
    }

    pub fn is_saturated(&self) -> bool {
        self.queue_depth() >= self.max_queue
    }

    /// Stops accepting jobs (for every clone of this handle), lets the thread finish the running
    /// and the queued jobs, and joins it.
    pub async fn shutdown(self) {
        self.close();
        let worker = self.worker.lock().ok().and_then(|mut w| w.take());
        if let Some(handle) = worker {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }

    /// Stops accepting jobs; what is queued or running goes on.
    pub fn close(&self) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.take();
        }
    }

    /// Past the shutdown grace period: running jobs stop at their next step and waiting ones are
    /// answered `Stopped`.
    pub fn abort(&self) {
        self.close();
        self.state.abort.store(true, Ordering::SeqCst);
    }
}
