//! The engine thread: loads the models, then runs jobs one at a time until the queue closes.
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use imago_models::pipeline::{LoadedModel, StepObserver, StepProgress};
use imago_models::ModelError;
use tokio::sync::{mpsc, oneshot};

use super::{caps_for, EngineConfig, EngineError, Job, JobEvent, JobOutput, ModelToLoad};
use crate::domain::caps::ModelCaps;

pub(super) fn run(
    config: EngineConfig,
    models: Vec<ModelToLoad>,
    mut jobs: mpsc::Receiver<Job>,
    waiting: Arc<AtomicUsize>,
    ready: oneshot::Sender<Result<Vec<ModelCaps>, EngineError>>,
) {
    let loaded = match load_all(&config, &models) {
        Ok(loaded) => loaded,
        Err(err) => {
            let _ = ready.send(Err(err));
            return;
        }
    };
    let caps = models.iter().filter_map(|m| loaded.get(&m.id).map(|model| caps_for(&m.id, model))).collect();
    if ready.send(Ok(caps)).is_err() {
        return;
    }
    while let Some(job) = jobs.blocking_recv() {
        waiting.fetch_sub(1, Ordering::SeqCst);
        let _entered = job.span.clone().entered();
        if job.cancel.load(Ordering::SeqCst) {
            tracing::info!("client left before its job started; dropped");
            continue;
        }
        let queue_time = job.submitted.elapsed();
        let _ = job.events.try_send(JobEvent::Started { queue_time });
        let result = match loaded.get(&job.model) {
            None => Err(EngineError::UnknownModel(job.model.clone())),
            Some(model) => run_job(model, &job, queue_time),
        };
        if let Err(err) = &result {
            match err {
                EngineError::Cancelled => tracing::info!("job cancelled by its client"),
                other => tracing::error!(error = %other, "generation failed"),
            }
        }
        // `Finished` must arrive even when progress events filled the channel.
        let _ = job.events.blocking_send(JobEvent::Finished(result));
    }
    tracing::info!("engine queue closed; engine thread exits");
}

fn load_all(config: &EngineConfig, models: &[ModelToLoad]) -> Result<HashMap<String, LoadedModel>, EngineError> {
    let device = config.device.open().map_err(|e| EngineError::Load {
        id: "*".into(),
        source_desc: format!("device {}", config.device),
        message: e.to_string(),
    })?;
    let mut loaded = HashMap::new();
    for m in models {
        let started = std::time::Instant::now();
        let model = LoadedModel::load_on(&m.source, &device, config.dtype).map_err(|e| EngineError::Load {
            id: m.id.clone(),
            source_desc: m.source.clone(),
            message: e.to_string(),
        })?;
        tracing::info!(model = %m.id, from = %model.location, ms = started.elapsed().as_millis() as u64, "model loaded");
        loaded.insert(m.id.clone(), model);
    }
    Ok(loaded)
}

fn run_job(model: &LoadedModel, job: &Job, queue_time: std::time::Duration) -> Result<JobOutput, EngineError> {
    let mut observer = JobObserver { cancel: &job.cancel, events: &job.events };
    // A panic inside candle must fail this job, not the thread that serves everyone.
    let outcome = catch_unwind(AssertUnwindSafe(|| model.generate(&job.request, &mut observer)));
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
            Err(EngineError::Failed(format!("panic in the engine: {message}")))
        }
    }
}

struct JobObserver<'a> {
    cancel: &'a AtomicBool,
    events: &'a mpsc::Sender<JobEvent>,
}

impl StepObserver for JobObserver<'_> {
    fn on_step(&mut self, progress: &StepProgress<'_>) -> ControlFlow<()> {
        let _ = self.events.try_send(JobEvent::Step { step: progress.step, total: progress.total });
        if self.cancel.load(Ordering::SeqCst) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}
