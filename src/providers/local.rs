//! The local engine as a provider: turns a validated request into an engine job.
use image::RgbImage;
use imago_models::pipeline::{GenerationRequest, InitImage};

use crate::domain::request::ValidatedRequest;
use crate::engine::{Engine, EngineError, JobHandle};
use crate::error::ApiError;

#[derive(Clone)]
pub struct LocalProvider {
    engine: Engine,
}

impl LocalProvider {
    pub const SLUG: &'static str = "local";

    pub fn new(engine: Engine) -> Self {
        Self { engine }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Queues the generation; `seed` is the request's or one drawn for it.
    pub fn submit(
        &self,
        request: &ValidatedRequest,
        reference: Option<RgbImage>,
        seed: u64,
    ) -> Result<JobHandle, ApiError> {
        let job = GenerationRequest {
            prompt: request.prompt.clone(),
            negative_prompt: request.negative_prompt.clone(),
            seed,
            steps: request.steps,
            guidance_scale: request.guidance_scale,
            width: request.width,
            height: request.height,
            batch_size: request.n,
            scheduler: request.scheduler,
            max_sequence_length: request.max_sequence_length,
            init_image: reference.map(|image| InitImage {
                image,
                strength: request.strength,
            }),
        };
        // Previews exist only on streams.
        let partial_images = if request.stream {
            request.partial_images as usize
        } else {
            0
        };
        self.engine
            .submit(&request.model, job, partial_images, request.preview)
            .map_err(|err| match err {
                EngineError::QueueFull { depth } => ApiError::QueueFull {
                    depth,
                    // The jobs ahead times the measured recent time per job.
                    retry_after_s: self.engine.retry_after_s(),
                },
                err @ EngineError::TooLarge { .. } => {
                    self.engine.metrics().refused_too_large.inc();
                    ApiError::field("n", err.to_string())
                }
                EngineError::Stopped => ApiError::NotReady("the engine has stopped".into()),
                other => ApiError::Internal(other.to_string()),
            })
    }
}
