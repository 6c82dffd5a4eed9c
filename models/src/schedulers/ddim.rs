//! diffusers' `DDIMScheduler` with eta = 0 (the pipelines' default): deterministic, no noise drawn.
use candle_core::Tensor;

use super::config::{DdimParams, PredictionType};
use super::noise_schedule::alphas_cumprod;
use super::spacing::ddim_timesteps;
use super::tensor_ops::{div, mul, to_f32};
use super::StepOutput;
use crate::error::{ModelError, Result};

#[derive(Debug, Clone)]
pub struct Ddim {
    prediction: PredictionType,
    timesteps: Vec<f64>,
    train_timesteps: Vec<usize>,
    alphas_cumprod: Vec<f32>,
    /// `alphas_cumprod` "before" timestep 0: 1, or `alphas_cumprod[0]` without `set_alpha_to_one`.
    final_alpha_cumprod: f32,
    /// diffusers' `num_train_timesteps // num_inference_steps`: the previous timestep is always
    /// this far back, whatever the spacing.
    step_ratio: usize,
    clip_range: Option<f32>,
}

impl Ddim {
    pub(crate) fn new(params: &DdimParams, num_inference_steps: usize) -> Result<Self> {
        let common = &params.common;
        let cumprod = alphas_cumprod(common, false);
        let spaced = ddim_timesteps(
            common.timestep_spacing,
            common.num_train_timesteps,
            num_inference_steps,
            common.steps_offset,
        );
        let train_timesteps = spaced
            .iter()
            .map(|&t| {
                usize::try_from(t)
                    .ok()
                    .filter(|&t| t < common.num_train_timesteps)
                    .ok_or_else(|| {
                        ModelError::Unsupported(format!(
                            "DDIMScheduler: timestep {t} (steps_offset {} with {num_inference_steps} steps) is outside the {} training timesteps",
                            common.steps_offset, common.num_train_timesteps
                        ))
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            prediction: common.prediction_type,
            timesteps: spaced.iter().map(|&t| t as f64).collect(),
            train_timesteps,
            final_alpha_cumprod: if params.set_alpha_to_one {
                1.0
            } else {
                cumprod[0]
            },
            alphas_cumprod: cumprod,
            step_ratio: common.num_train_timesteps / num_inference_steps,
            clip_range: params
                .clip_sample
                .then_some(params.clip_sample_range as f32),
        })
    }

    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
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
        let t = self.train_timesteps[step_index];
        let alpha_prod_t = self.alphas_cumprod[t];
        let alpha_prod_prev = match t.checked_sub(self.step_ratio) {
            Some(prev) => self.alphas_cumprod[prev],
            None => self.final_alpha_cumprod,
        };
        let beta_prod_t = 1.0 - alpha_prod_t;
        let (sqrt_alpha, sqrt_beta) = (alpha_prod_t.sqrt(), beta_prod_t.sqrt());
        let (mut pred_original, pred_epsilon) = match self.prediction {
            PredictionType::Epsilon => (
                div(&(&sample - mul(&model_output, sqrt_beta)?)?, sqrt_alpha)?,
                model_output.clone(),
            ),
            PredictionType::Sample => (
                model_output.clone(),
                div(&(&sample - mul(&model_output, sqrt_alpha)?)?, sqrt_beta)?,
            ),
            PredictionType::VPrediction => (
                (mul(&sample, sqrt_alpha)? - mul(&model_output, sqrt_beta)?)?,
                (mul(&model_output, sqrt_alpha)? + mul(&sample, sqrt_beta)?)?,
            ),
        };
        if let Some(range) = self.clip_range {
            pred_original = pred_original.clamp(-range, range)?;
        }
        // eta = 0: no variance term, the direction keeps all of 1 - alpha_prev.
        let direction = mul(&pred_epsilon, (1.0 - alpha_prod_prev).sqrt())?;
        let prev_sample = (mul(&pred_original, alpha_prod_prev.sqrt())? + direction)?;
        Ok(StepOutput {
            prev_sample: prev_sample.to_dtype(dtype)?,
            pred_original_sample: pred_original.to_dtype(dtype)?,
        })
    }

    /// `sqrt(alpha_t) * original + sqrt(1 - alpha_t) * noise` at `timesteps()[step_index]`.
    pub(crate) fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        step_index: usize,
    ) -> Result<Tensor> {
        let alpha = self.alphas_cumprod[self.train_timesteps[step_index]];
        let noisy =
            (mul(&to_f32(original)?, alpha.sqrt())? + mul(&to_f32(noise)?, (1.0 - alpha).sqrt())?)?;
        Ok(noisy.to_dtype(original.dtype())?)
    }
}
