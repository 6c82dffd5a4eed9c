//! The hook into every denoising loop: progress, previews and cancellation.
use std::ops::ControlFlow;

use candle_core::Tensor;

/// What the loop knows after one denoising step.
pub struct StepProgress<'a> {
    /// 0-based index of the step just finished, counted over the steps this run executes.
    pub step: usize,
    /// Number of steps this run executes (after img2img's strength cut).
    pub total: usize,
    /// The scheduler timestep of this step.
    pub timestep: f64,
    /// The scheduler's latents after this step (f32).
    pub latents: &'a Tensor,
    /// The predicted clean latents (x0) at this step (f32), for previews.
    pub predicted_x0: &'a Tensor,
}

/// Called by the pipeline from its own thread; returning `Break` stops the run at this step
/// boundary with `ModelError::Cancelled`.
pub trait StepObserver {
    /// The seeded starting noise as drawn (before any scaling), once per run.
    fn on_noise(&mut self, _noise: &Tensor) {}

    fn on_step(&mut self, progress: &StepProgress<'_>) -> ControlFlow<()>;
}

/// An observer that watches nothing and never cancels.
pub struct NoObserver;

impl StepObserver for NoObserver {
    fn on_step(&mut self, _progress: &StepProgress<'_>) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
}
