//! diffusers' `EulerAncestralDiscreteScheduler`: an Euler step to `sigma_down` plus fresh noise
//! of scale `sigma_up`, drawn from the caller's generator on every step (the last one included,
//! where `sigma_up` is 0), so the RNG stream stays in step with diffusers.
use candle_core::Tensor;

use super::config::{CommonParams, PredictionType};
use super::euler::{add_noise_by_sigma, predict_original, scale_by_sigma};
use super::noise_schedule::{alphas_cumprod, init_noise_sigma, train_sigmas};
use super::spacing::{euler_timesteps, np_interp_unit_grid};
use super::tensor_ops::{div, mul, to_f32};
use super::StepOutput;
use crate::error::Result;
use crate::rng::TorchGenerator;

#[derive(Debug, Clone)]
pub struct EulerAncestralDiscrete {
    prediction: PredictionType,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    init_noise_sigma: f64,
}

impl EulerAncestralDiscrete {
    pub(crate) fn new(params: &CommonParams, num_inference_steps: usize) -> Self {
        let cumprod = alphas_cumprod(params, true);
        let train = train_sigmas(&cumprod);
        let spaced = euler_timesteps(
            params.timestep_spacing,
            params.num_train_timesteps,
            num_inference_steps,
            params.steps_offset,
        );
        let sigmas: Vec<f32> = spaced
            .iter()
            .map(|&t| np_interp_unit_grid(t as f64, &train) as f32)
            .chain(std::iter::once(0.0))
            .collect();
        let init_noise_sigma = init_noise_sigma(&sigmas, params.timestep_spacing);
        Self {
            prediction: params.prediction_type,
            timesteps: spaced.iter().map(|&t| t as f64).collect(),
            sigmas,
            init_noise_sigma: init_noise_sigma as f64,
        }
    }

    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    pub fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }

    pub(crate) fn scale_model_input(&self, sample: &Tensor, step_index: usize) -> Result<Tensor> {
        Ok(scale_by_sigma(sample, self.sigmas[step_index])?)
    }

    pub(crate) fn step(
        &self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
        rng: &mut TorchGenerator,
    ) -> Result<StepOutput> {
        let dtype = model_output.dtype();
        let device = model_output.device();
        let model_output = to_f32(model_output)?;
        let sample = to_f32(sample)?;
        let sigma_from = self.sigmas[step_index];
        let sigma_to = self.sigmas[step_index + 1];
        let pred_original = predict_original(self.prediction, &model_output, &sample, sigma_from)?;
        let (from_sq, to_sq) = (sigma_from * sigma_from, sigma_to * sigma_to);
        let sigma_up = (to_sq * (from_sq - to_sq) / from_sq).sqrt();
        let sigma_down = (to_sq - sigma_up * sigma_up).sqrt();
        let derivative = div(&(&sample - &pred_original)?, sigma_from)?;
        let dt = sigma_down - sigma_from;
        let prev_sample = (&sample + mul(&derivative, dt)?)?;
        // diffusers draws the noise in the model output's dtype, on the CPU generator.
        let noise = to_f32(&rng.randn_tensor(model_output.dims(), device, dtype)?)?;
        let prev_sample = (prev_sample + mul(&noise, sigma_up)?)?;
        Ok(StepOutput {
            prev_sample: prev_sample.to_dtype(dtype)?,
            pred_original_sample: pred_original.to_dtype(dtype)?,
        })
    }

    pub(crate) fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        step_index: usize,
    ) -> Result<Tensor> {
        add_noise_by_sigma(original, noise, self.sigmas[step_index])
    }
}
