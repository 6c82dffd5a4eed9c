//! The local provider's async face: one OS thread per device owns the loaded models and runs
//! one job at a time; async code reaches it through a bounded queue of messages, each carrying a
//! tracing span and a channel for the job's events. No forward pass ever runs on a tokio worker.
mod caps;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use image::RgbImage;
use imago_models::device::{DTypeChoice, DeviceChoice};
use imago_models::pipeline::{GenerationRequest, Timings};
use tokio::sync::{mpsc, oneshot};

use crate::domain::caps::ModelCaps;
use crate::domain::request::PreviewMode;
use crate::metrics::Metrics;

pub use caps::caps_for;

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
    pub submitted: std::time::Instant,
}

/// Handle to the engine thread; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    /// Shared by every clone; `shutdown` takes it out, which closes the queue for all of them.
    jobs: Arc<Mutex<Option<mpsc::Sender<Job>>>>,
    waiting: Arc<AtomicUsize>,
    running: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    max_queue: usize,
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
        // The channel holds the waiting jobs; the running one has already been taken out.
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>(config.max_queue.max(1));
        let (ready_tx, ready_rx) = oneshot::channel();
        let waiting = Arc::new(AtomicUsize::new(0));
        let running = Arc::new(AtomicUsize::new(0));
        let shared = worker::Shared {
            waiting: waiting.clone(),
            running: running.clone(),
            metrics: metrics.clone(),
        };
        let worker_config = config.clone();
        let handle = std::thread::Builder::new()
            .name("imago-engine".into())
            .spawn(move || worker::run(worker_config, models, jobs_rx, shared, ready_tx))
            .map_err(|e| EngineError::Failed(format!("cannot start the engine thread: {e}")))?;
        let caps = ready_rx.await.map_err(|_| EngineError::Stopped)??;
        Ok((
            Self {
                jobs: Arc::new(Mutex::new(Some(jobs_tx))),
                waiting,
                running,
                metrics,
                max_queue: config.max_queue.max(1),
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
        let (events_tx, events_rx) = mpsc::channel(EVENT_CAPACITY);
        let cancel = Arc::new(AtomicBool::new(false));
        let job = Job {
            model: model.to_string(),
            request,
            partial_images,
            preview,
            span: tracing::Span::current(),
            events: events_tx,
            cancel: cancel.clone(),
            submitted: std::time::Instant::now(),
        };
        let Some(sender) = self.jobs.lock().ok().and_then(|jobs| jobs.clone()) else {
            return Err(EngineError::Stopped);
        };
        self.waiting.fetch_add(1, Ordering::SeqCst);
        match sender.try_send(job) {
            Ok(()) => Ok(JobHandle {
                events: events_rx,
                cancel,
            }),
            Err(err) => {
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                match err {
                    mpsc::error::TrySendError::Full(_) => Err(EngineError::QueueFull {
                        depth: self.queue_depth(),
                    }),
                    mpsc::error::TrySendError::Closed(_) => Err(EngineError::Stopped),
                }
            }
        }
    }

    /// Jobs submitted and not yet started.
    pub fn queue_depth(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// The metrics the engine records into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Jobs running now (0 or 1 per device).
    pub fn in_flight(&self) -> usize {
        self.running.load(Ordering::SeqCst)
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
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.take();
        }
        let worker = self.worker.lock().ok().and_then(|mut w| w.take());
        if let Some(handle) = worker {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}
