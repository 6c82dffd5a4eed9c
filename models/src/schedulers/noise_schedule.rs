//! The training noise schedule (betas, cumulative alphas) in float32, rounded as torch rounds it.
use super::config::{BetaSchedule, CommonParams, TimestepSpacing};

/// `torch.linspace(start, end, steps, dtype=float32)` on the CPU: the ends are cast to float32,
/// `step = (end - start) / (steps - 1)` in float32, the first half counts up from `start` and the
/// second half down from `end`, each as one fused multiply-add (as torch's compiled kernel does).
pub(crate) fn torch_linspace_f32(start: f64, end: f64, steps: usize) -> Vec<f32> {
    let (start, end) = (start as f32, end as f32);
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| {
            if i < halfway {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((steps - i - 1) as f32, end)
            }
        })
        .collect()
}

/// `torch.cumprod` of a float32 vector: torch accumulates in double and stores float32.
pub(crate) fn torch_cumprod_f32(values: &[f32]) -> Vec<f32> {
    let mut acc = 1.0f64;
    values
        .iter()
        .map(|&v| {
            acc *= v as f64;
            acc as f32
        })
        .collect()
}

/// diffusers' `betas_for_alpha_bar` with the cosine transform (Python floats, then float32).
fn squaredcos_cap_v2(num_train_timesteps: usize) -> Vec<f32> {
    const MAX_BETA: f64 = 0.999;
    let alpha_bar = |t: f64| {
        ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
            .cos()
            .powi(2)
    };
    (0..num_train_timesteps)
        .map(|i| {
            let t1 = i as f64 / num_train_timesteps as f64;
            let t2 = (i + 1) as f64 / num_train_timesteps as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(MAX_BETA) as f32
        })
        .collect()
}

/// diffusers' `rescale_zero_terminal_snr` (arXiv 2305.08891, algorithm 1) on float32 tensors.
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
    let mut sqrt_bar: Vec<f32> = torch_cumprod_f32(&alphas)
        .iter()
        .map(|a| a.sqrt())
        .collect();
    let first = sqrt_bar[0];
    let last = sqrt_bar[sqrt_bar.len() - 1];
    let scale = first / (first - last);
    for v in sqrt_bar.iter_mut() {
        *v = (*v - last) * scale;
    }
    let bar: Vec<f32> = sqrt_bar.iter().map(|v| v * v).collect();
    let mut rescaled = Vec::with_capacity(bar.len());
    rescaled.push(1.0 - bar[0]);
    for w in bar.windows(2) {
        rescaled.push(1.0 - w[1] / w[0]);
    }
    rescaled
}

/// `alphas_cumprod` (float32, indexed by training timestep) as the scheduler's `__init__` builds it.
/// `pin_terminal` applies Euler/Euler-a/DPM's `alphas_cumprod[-1] = 2**-24` after a zero-SNR
/// rescale (DDIM does not), which keeps the last sigma finite.
pub(crate) fn alphas_cumprod(params: &CommonParams, pin_terminal: bool) -> Vec<f32> {
    let n = params.num_train_timesteps;
    let mut betas: Vec<f32> = match (&params.trained_betas, params.beta_schedule) {
        (Some(trained), _) => trained.iter().map(|&b| b as f32).collect(),
        (None, BetaSchedule::Linear) => torch_linspace_f32(params.beta_start, params.beta_end, n),
        (None, BetaSchedule::ScaledLinear) => {
            torch_linspace_f32(params.beta_start.sqrt(), params.beta_end.sqrt(), n)
                .into_iter()
                .map(|b| b * b)
                .collect()
        }
        (None, BetaSchedule::SquaredCosCapV2) => squaredcos_cap_v2(n),
    };
    if params.rescale_betas_zero_snr {
        betas = rescale_zero_terminal_snr(&betas);
    }
    let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
    let mut cumprod = torch_cumprod_f32(&alphas);
    if params.rescale_betas_zero_snr && pin_terminal {
        if let Some(last) = cumprod.last_mut() {
            *last = 2f32.powi(-24);
        }
    }
    cumprod
}

/// `((1 - alphas_cumprod) / alphas_cumprod) ** 0.5` in float32, indexed by training timestep.
pub(crate) fn train_sigmas(alphas_cumprod: &[f32]) -> Vec<f32> {
    alphas_cumprod
        .iter()
        .map(|a| ((1.0 - a) / a).sqrt())
        .collect()
}

/// The Euler schedulers' `init_noise_sigma`: the largest sigma, or `sqrt(max^2 + 1)` for
/// `leading` spacing, as diffusers computes it.
pub(crate) fn init_noise_sigma(sigmas: &[f32], spacing: TimestepSpacing) -> f32 {
    let max_sigma = sigmas.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    match spacing {
        TimestepSpacing::Linspace | TimestepSpacing::Trailing => max_sigma,
        TimestepSpacing::Leading => (max_sigma * max_sigma + 1.0).sqrt(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linspace_hits_both_ends_exactly() {
        let v = torch_linspace_f32(0.1, 0.9, 7);
        assert_eq!(v.len(), 7);
        assert_eq!(v[0], 0.1f32);
        assert_eq!(v[6], 0.9f32);
        assert_eq!(torch_linspace_f32(0.5, 2.0, 1), vec![0.5f32]);
    }

    #[test]
    fn zero_snr_rescale_ends_at_zero_alpha() {
        let betas = torch_linspace_f32(0.0001, 0.02, 1000);
        let rescaled = rescale_zero_terminal_snr(&betas);
        let alphas: Vec<f32> = rescaled.iter().map(|b| 1.0 - b).collect();
        let cumprod = torch_cumprod_f32(&alphas);
        assert_eq!(cumprod[999], 0.0);
        assert!((cumprod[0] - (1.0 - betas[0])).abs() < 1e-6);
    }
}
