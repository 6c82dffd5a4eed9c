//! diffusers' `DPMSolverMultistepScheduler` with `algorithm_type = "dpmsolver++"` (DPM-Solver++
//! 2M by default; orders 1 to 3, midpoint or Heun second-order corrections).
use std::collections::VecDeque;

use candle_core::Tensor;

use super::config::{DpmParams, FinalSigmas, PredictionType, SolverType};
use super::noise_schedule::{alphas_cumprod, train_sigmas};
use super::spacing::{
    dpm_timesteps, karras_sigmas, log_f32, np_interp_unit_grid, np_round, sigma_to_t,
};
use super::tensor_ops::{div, mul, to_f32};
use super::StepOutput;
use crate::error::Result;

#[derive(Debug, Clone)]
pub struct DpmSolverMultistep {
    prediction: PredictionType,
    solver_order: usize,
    solver_type: SolverType,
    lower_order_final: bool,
    euler_at_final: bool,
    final_sigmas_zero: bool,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    /// The data predictions (x_0) of the last `solver_order` steps, oldest first, in float32.
    model_outputs: VecDeque<Tensor>,
    lower_order_nums: usize,
    /// The step index the history above expects next.
    next_step_index: Option<usize>,
}

/// `(alpha_t, sigma_t)` of the VP process at k-diffusion `sigma`, in float32.
fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// The half log-SNR `ln(alpha_t) - ln(sigma_t)`; infinite at sigma = 0.
fn lambda(alpha: f32, sigma: f32) -> f32 {
    alpha.ln() - sigma.ln()
}

impl DpmSolverMultistep {
    pub(crate) fn new(params: &DpmParams, num_inference_steps: usize) -> Self {
        let common = &params.common;
        let cumprod = alphas_cumprod(common, true);
        let train = train_sigmas(&cumprod);
        let last_timestep =
            common.num_train_timesteps - clipped_count(&cumprod, params.lambda_min_clipped);
        let spaced = dpm_timesteps(
            common.timestep_spacing,
            common.num_train_timesteps,
            last_timestep,
            num_inference_steps,
            common.steps_offset,
        );
        let (sigmas, timesteps): (Vec<f64>, Vec<f64>) = if params.karras {
            // The full training range (flipped: in_sigmas[0] is the largest), unless pinned.
            let sigma_min = params.sigma_min.unwrap_or(train[0] as f64);
            let sigma_max = params.sigma_max.unwrap_or(train[train.len() - 1] as f64);
            let sigmas = karras_sigmas(sigma_min, sigma_max, num_inference_steps);
            let log_sigmas = log_f32(&train);
            let round = common.beta_schedule != super::config::BetaSchedule::SquaredCosCapV2;
            let timesteps = sigmas
                .iter()
                .map(|&s| {
                    let t = sigma_to_t(s, &log_sigmas);
                    if round {
                        np_round(t)
                    } else {
                        t
                    }
                })
                .collect();
            (sigmas, timesteps)
        } else {
            let sigmas = spaced
                .iter()
                .map(|&t| np_interp_unit_grid(t as f64, &train))
                .collect();
            (sigmas, spaced.iter().map(|&t| t as f64).collect())
        };
        let sigma_last = match params.final_sigmas {
            FinalSigmas::Zero => 0.0,
            FinalSigmas::SigmaMin => ((1.0 - cumprod[0]) / cumprod[0]).sqrt(),
        };
        Self {
            prediction: common.prediction_type,
            solver_order: params.solver_order,
            solver_type: params.solver_type,
            lower_order_final: params.lower_order_final,
            euler_at_final: params.euler_at_final,
            final_sigmas_zero: params.final_sigmas == FinalSigmas::Zero,
            // diffusers casts the timesteps to int64 (truncation, after rounding unless cosine).
            timesteps: timesteps.iter().map(|&t| (t as i64) as f64).collect(),
            sigmas: sigmas
                .iter()
                .map(|&s| s as f32)
                .chain(std::iter::once(sigma_last))
                .collect(),
            model_outputs: VecDeque::with_capacity(params.solver_order),
            lower_order_nums: 0,
            next_step_index: None,
        }
    }

    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    pub(crate) fn step(
        &mut self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
    ) -> Result<StepOutput> {
        if self.next_step_index != Some(step_index) {
            // A fresh run (diffusers' set_timesteps + set_begin_index): no history yet.
            self.model_outputs.clear();
            self.lower_order_nums = 0;
        }
        let dtype = model_output.dtype();
        let n = self.timesteps.len();
        let lower_order_final = step_index == n - 1
            && (self.euler_at_final
                || (self.lower_order_final && n < 15)
                || self.final_sigmas_zero);
        let lower_order_second = step_index + 2 == n && self.lower_order_final && n < 15;

        let sample = to_f32(sample)?;
        let x0 = self.convert_model_output(&to_f32(model_output)?, step_index, &sample)?;
        if self.model_outputs.len() == self.solver_order {
            self.model_outputs.pop_front();
        }
        self.model_outputs.push_back(x0.clone());

        let prev_sample =
            if self.solver_order == 1 || self.lower_order_nums < 1 || lower_order_final {
                self.first_order(&x0, step_index, &sample)?
            } else if self.solver_order == 2 || self.lower_order_nums < 2 || lower_order_second {
                self.second_order(step_index, &sample)?
            } else {
                self.third_order(step_index, &sample)?
            };
        if self.lower_order_nums < self.solver_order {
            self.lower_order_nums += 1;
        }
        self.next_step_index = Some(step_index + 1);
        Ok(StepOutput {
            prev_sample: prev_sample.to_dtype(dtype)?,
            pred_original_sample: x0.to_dtype(dtype)?,
        })
    }

    /// dpmsolver++ works on data predictions: turn the model output into x_0.
    fn convert_model_output(
        &self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[step_index]);
        match self.prediction {
            PredictionType::Epsilon => div(&(sample - mul(model_output, sigma_t)?)?, alpha_t),
            PredictionType::VPrediction => mul(sample, alpha_t)? - mul(model_output, sigma_t)?,
            PredictionType::Sample => Ok(model_output.clone()),
        }
    }

    /// The most recent data prediction `back` steps ago (0 = this step's).
    fn history(&self, back: usize) -> &Tensor {
        &self.model_outputs[self.model_outputs.len() - 1 - back]
    }

    /// `(alpha, sigma, lambda)` at `sigmas[index]`.
    fn point(&self, index: usize) -> (f32, f32, f32) {
        let (alpha, sigma) = alpha_sigma(self.sigmas[index]);
        (alpha, sigma, lambda(alpha, sigma))
    }

    fn first_order(&self, x0: &Tensor, i: usize, sample: &Tensor) -> candle_core::Result<Tensor> {
        let (alpha_t, sigma_t, lambda_t) = self.point(i + 1);
        let (_, sigma_s, lambda_s) = self.point(i);
        let h = lambda_t - lambda_s;
        mul(sample, sigma_t / sigma_s)? - mul(x0, alpha_t * ((-h).exp() - 1.0))?
    }

    fn second_order(&self, i: usize, sample: &Tensor) -> candle_core::Result<Tensor> {
        let (alpha_t, sigma_t, lambda_t) = self.point(i + 1);
        let (_, sigma_s0, lambda_s0) = self.point(i);
        let (_, _, lambda_s1) = self.point(i - 1);
        let (m0, m1) = (self.history(0), self.history(1));
        let (h, h_0) = (lambda_t - lambda_s0, lambda_s0 - lambda_s1);
        let r0 = h_0 / h;
        let d1 = mul(&(m0 - m1)?, 1.0 / r0)?;
        let exp_m1 = (-h).exp() - 1.0;
        let base = (mul(sample, sigma_t / sigma_s0)? - mul(m0, alpha_t * exp_m1)?)?;
        match self.solver_type {
            SolverType::Midpoint => base - mul(&d1, 0.5 * (alpha_t * exp_m1))?,
            SolverType::Heun => base + mul(&d1, alpha_t * (exp_m1 / h + 1.0))?,
        }
    }

    fn third_order(&self, i: usize, sample: &Tensor) -> candle_core::Result<Tensor> {
        let (alpha_t, sigma_t, lambda_t) = self.point(i + 1);
        let (_, sigma_s0, lambda_s0) = self.point(i);
        let (_, _, lambda_s1) = self.point(i - 1);
        let (_, _, lambda_s2) = self.point(i - 2);
        let (m0, m1, m2) = (self.history(0), self.history(1), self.history(2));
        let (h, h_0, h_1) = (
            lambda_t - lambda_s0,
            lambda_s0 - lambda_s1,
            lambda_s1 - lambda_s2,
        );
        let (r0, r1) = (h_0 / h, h_1 / h);
        let d1_0 = mul(&(m0 - m1)?, 1.0 / r0)?;
        let d1_1 = mul(&(m1 - m2)?, 1.0 / r1)?;
        let d1_diff = (&d1_0 - &d1_1)?;
        let d1 = (&d1_0 + mul(&d1_diff, r0 / (r0 + r1))?)?;
        let d2 = mul(&d1_diff, 1.0 / (r0 + r1))?;
        let exp_m1 = (-h).exp() - 1.0;
        let x = (mul(sample, sigma_t / sigma_s0)? - mul(m0, alpha_t * exp_m1)?)?;
        let x = (x + mul(&d1, alpha_t * (exp_m1 / h + 1.0))?)?;
        x - mul(&d2, alpha_t * ((exp_m1 + h) / (h * h) - 0.5))?
    }

    /// `alpha_t * original + sigma_t * noise` at `sigmas[step_index]`.
    pub(crate) fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        step_index: usize,
    ) -> Result<Tensor> {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[step_index]);
        let noisy = (mul(&to_f32(original)?, alpha_t)? + mul(&to_f32(noise)?, sigma_t)?)?;
        Ok(noisy.to_dtype(original.dtype())?)
    }
}

/// diffusers' `searchsorted(flip(lambda_t), lambda_min_clipped)`: how many of the highest-noise
/// training timesteps fall below the clipped log-SNR (0 for the default -inf).
fn clipped_count(alphas_cumprod: &[f32], lambda_min_clipped: f64) -> usize {
    alphas_cumprod
        .iter()
        .rev()
        .map(|&a| a.sqrt().ln() - (1.0 - a).sqrt().ln())
        .take_while(|&l| (l as f64) < lambda_min_clipped)
        .count()
}
