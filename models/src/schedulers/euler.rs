//! diffusers' `EulerDiscreteScheduler` (Karras et al. 2022, algorithm 2) without churn.
use candle_core::Tensor;

use super::config::{EulerParams, FinalSigmas, PredictionType};
use super::noise_schedule::{alphas_cumprod, init_noise_sigma, train_sigmas};
use super::spacing::{euler_timesteps, karras_sigmas, log_f32, np_interp_unit_grid, sigma_to_t};
use super::tensor_ops::{div, mul, to_f32};
use super::StepOutput;
use crate::error::Result;

#[derive(Debug, Clone)]
pub struct EulerDiscrete {
    prediction: PredictionType,
    timesteps: Vec<f64>,
    /// One sigma per timestep plus the final one (float32, as diffusers keeps them).
    sigmas: Vec<f32>,
    init_noise_sigma: f64,
}

impl EulerDiscrete {
    pub(crate) fn new(params: &EulerParams, num_inference_steps: usize) -> Self {
        let common = &params.common;
        let cumprod = alphas_cumprod(common, true);
        let train = train_sigmas(&cumprod);
        let spaced = euler_timesteps(
            common.timestep_spacing,
            common.num_train_timesteps,
            num_inference_steps,
            common.steps_offset,
        );
        let mut sigmas: Vec<f64> = spaced
            .iter()
            .map(|&t| np_interp_unit_grid(t as f64, &train))
            .collect();
        let mut timesteps: Vec<f64> = spaced.iter().map(|&t| t as f64).collect();
        if params.karras {
            // The range is that of the spaced sigmas unless the config pins it.
            let sigma_min = params.sigma_min.unwrap_or(sigmas[sigmas.len() - 1]);
            let sigma_max = params.sigma_max.unwrap_or(sigmas[0]);
            sigmas = karras_sigmas(sigma_min, sigma_max, num_inference_steps);
            let log_sigmas = log_f32(&train);
            timesteps = sigmas.iter().map(|&s| sigma_to_t(s, &log_sigmas)).collect();
        }
        let sigma_last = match params.final_sigmas {
            FinalSigmas::Zero => 0.0,
            FinalSigmas::SigmaMin => ((1.0 - cumprod[0]) / cumprod[0]).sqrt(),
        };
        let sigmas: Vec<f32> = sigmas
            .iter()
            .map(|&s| s as f32)
            .chain(std::iter::once(sigma_last))
            .collect();
        let init_noise_sigma = init_noise_sigma(&sigmas, common.timestep_spacing);
        Self {
            prediction: common.prediction_type,
            // diffusers hands the UNet float32 timesteps.
            timesteps: timesteps.iter().map(|&t| t as f32 as f64).collect(),
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

    /// `sample / sqrt(sigma^2 + 1)`.
    pub(crate) fn scale_model_input(&self, sample: &Tensor, step_index: usize) -> Result<Tensor> {
        Ok(scale_by_sigma(sample, self.sigmas[step_index])?)
    }

    pub(crate) fn step(
        &self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
    ) -> Result<StepOutput> {
        let dtype = model_output.dtype();
        let model_output = to_f32(model_output)?;
        let sample = to_f32(sample)?;
        // No churn (s_churn = 0), so sigma_hat = sigma.
        let sigma = self.sigmas[step_index];
        let pred_original = predict_original(self.prediction, &model_output, &sample, sigma)?;
        let derivative = div(&(&sample - &pred_original)?, sigma)?;
        let dt = self.sigmas[step_index + 1] - sigma;
        let prev_sample = (&sample + mul(&derivative, dt)?)?;
        Ok(StepOutput {
            prev_sample: prev_sample.to_dtype(dtype)?,
            pred_original_sample: pred_original.to_dtype(dtype)?,
        })
    }

    /// `original + noise * sigma`.
    pub(crate) fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        step_index: usize,
    ) -> Result<Tensor> {
        add_noise_by_sigma(original, noise, self.sigmas[step_index])
    }
}

/// `sample / ((sigma**2 + 1) ** 0.5)`, in float32 and back to the sample's dtype.
pub(crate) fn scale_by_sigma(sample: &Tensor, sigma: f32) -> candle_core::Result<Tensor> {
    div(&to_f32(sample)?, (sigma * sigma + 1.0).sqrt())?.to_dtype(sample.dtype())
}

/// The k-diffusion `x_0` estimate shared by Euler and Euler-ancestral.
pub(crate) fn predict_original(
    prediction: PredictionType,
    model_output: &Tensor,
    sample: &Tensor,
    sigma: f32,
) -> candle_core::Result<Tensor> {
    match prediction {
        PredictionType::Epsilon => sample - mul(model_output, sigma)?,
        PredictionType::VPrediction => {
            let sigma_sq_plus_one = sigma * sigma + 1.0;
            let c_out = -sigma / sigma_sq_plus_one.sqrt();
            mul(model_output, c_out)? + div(sample, sigma_sq_plus_one)?
        }
        PredictionType::Sample => Ok(model_output.clone()),
    }
}

/// Sigma-space `add_noise`: `original + noise * sigma`, in float32 and back to `original`'s dtype.
pub(crate) fn add_noise_by_sigma(original: &Tensor, noise: &Tensor, sigma: f32) -> Result<Tensor> {
    let noisy = (to_f32(original)? + mul(&to_f32(noise)?, sigma)?)?;
    Ok(noisy.to_dtype(original.dtype())?)
}
