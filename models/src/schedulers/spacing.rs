//! Timestep spacings and sigma conversions as diffusers computes them with numpy (float64 unless
//! the array is float32), including numpy's own rounding (`round` is half-to-even) and `arange`'s
//! length and fill rules.

/// `np.linspace(start, stop, num)` in float64: `i * step + start`, the last value set to `stop`.
pub(crate) fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    v[num - 1] = stop;
    v
}

/// `np.arange(start, stop, step)` in float64: `ceil((stop - start) / step)` values, filled as
/// `start + i * delta` where `delta = (start + step) - start` (numpy's fill for floats).
pub(crate) fn np_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil();
    if len.is_nan() || len <= 0.0 {
        return Vec::new();
    }
    let len = len as usize;
    let delta = (start + step) - start;
    (0..len)
        .map(|i| match i {
            0 => start,
            1 => start + step,
            _ => start + i as f64 * delta,
        })
        .collect()
}

/// `np.round`: round half to even.
pub(crate) fn np_round(x: f64) -> f64 {
    x.round_ties_even()
}

/// `np.interp(x, arange(len(fp)), fp)` for `x` inside `[0, len - 1]`.
pub(crate) fn np_interp_unit_grid(x: f64, fp: &[f32]) -> f64 {
    let last = fp.len() - 1;
    if x <= 0.0 {
        return fp[0] as f64;
    }
    if x >= last as f64 {
        return fp[last] as f64;
    }
    let j = x.floor() as usize;
    if x == j as f64 {
        return fp[j] as f64;
    }
    let slope = (fp[j + 1] as f64 - fp[j] as f64) / 1.0;
    slope * (x - j as f64) + fp[j] as f64
}

/// Karras et al. (2022) sigmas with rho = 7, from `sigma_max` down to `sigma_min` (float64).
pub(crate) fn karras_sigmas(sigma_min: f64, sigma_max: f64, num: usize) -> Vec<f64> {
    const RHO: f64 = 7.0;
    let min_inv_rho = sigma_min.powf(1.0 / RHO);
    let max_inv_rho = sigma_max.powf(1.0 / RHO);
    np_linspace(0.0, 1.0, num)
        .into_iter()
        .map(|ramp| (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)).powf(RHO))
        .collect()
}

/// diffusers' `_sigma_to_t`: the fractional training timestep whose log-sigma matches, by linear
/// interpolation in log-sigma. `log_sigmas` is `np.log` of the float32 training sigmas (float32),
/// so `low - high` is a float32 difference while everything else is float64.
pub(crate) fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    // The last index whose log-sigma is <= log_sigma (0 when there is none), at most len - 2.
    let low_idx = log_sigmas
        .iter()
        .rposition(|&l| log_sigma - l as f64 >= 0.0)
        .unwrap_or(0)
        .min(log_sigmas.len() - 2);
    let high_idx = low_idx + 1;
    let low = log_sigmas[low_idx];
    let high = log_sigmas[high_idx];
    let w = ((low as f64 - log_sigma) / (low - high) as f64).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * high_idx as f64
}

/// `np.log` of float32 values, kept in float32.
pub(crate) fn log_f32(values: &[f32]) -> Vec<f32> {
    values.iter().map(|v| v.ln()).collect()
}

/// Euler and Euler-ancestral timesteps for `timestep_spacing` (numpy, then float32).
pub(crate) fn euler_timesteps(
    spacing: super::config::TimestepSpacing,
    num_train_timesteps: usize,
    num_inference_steps: usize,
    steps_offset: i64,
) -> Vec<f32> {
    use super::config::TimestepSpacing::*;
    let t = num_train_timesteps;
    let n = num_inference_steps;
    match spacing {
        Linspace => np_linspace(0.0, (t - 1) as f64, n)
            .into_iter()
            .rev()
            .map(|v| v as f32)
            .collect(),
        Leading => {
            let ratio = t / n;
            (0..n)
                .rev()
                .map(|i| (i * ratio) as f32 + steps_offset as f32)
                .collect()
        }
        Trailing => np_arange(t as f64, 0.0, -(t as f64 / n as f64))
            .into_iter()
            .map(|v| np_round(v) as f32 - 1.0)
            .collect(),
    }
}

/// DDIM's integer timesteps for `timestep_spacing`.
pub(crate) fn ddim_timesteps(
    spacing: super::config::TimestepSpacing,
    num_train_timesteps: usize,
    num_inference_steps: usize,
    steps_offset: i64,
) -> Vec<i64> {
    use super::config::TimestepSpacing::*;
    let t = num_train_timesteps;
    let n = num_inference_steps;
    match spacing {
        Linspace => np_linspace(0.0, (t - 1) as f64, n)
            .into_iter()
            .rev()
            .map(|v| np_round(v) as i64)
            .collect(),
        Leading => {
            let ratio = t / n;
            (0..n)
                .rev()
                .map(|i| (i * ratio) as i64 + steps_offset)
                .collect()
        }
        Trailing => np_arange(t as f64, 0.0, -(t as f64 / n as f64))
            .into_iter()
            .map(|v| np_round(v) as i64 - 1)
            .collect(),
    }
}

/// DPM-Solver's integer timesteps for `timestep_spacing`; `last_timestep` is the training
/// horizon left after `lambda_min_clipped`.
pub(crate) fn dpm_timesteps(
    spacing: super::config::TimestepSpacing,
    num_train_timesteps: usize,
    last_timestep: usize,
    num_inference_steps: usize,
    steps_offset: i64,
) -> Vec<i64> {
    use super::config::TimestepSpacing::*;
    let n = num_inference_steps;
    match spacing {
        Linspace => {
            let mut v: Vec<i64> = np_linspace(0.0, last_timestep as f64 - 1.0, n + 1)
                .into_iter()
                .rev()
                .map(|v| np_round(v) as i64)
                .collect();
            v.pop();
            v
        }
        Leading => {
            let ratio = last_timestep / (n + 1);
            (1..=n)
                .rev()
                .map(|i| (i * ratio) as i64 + steps_offset)
                .collect()
        }
        Trailing => np_arange(
            last_timestep as f64,
            0.0,
            -(num_train_timesteps as f64 / n as f64),
        )
        .into_iter()
        .map(|v| np_round(v) as i64 - 1)
        .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedulers::config::TimestepSpacing;

    #[test]
    fn arange_matches_numpys_length_quirk() {
        // np.arange(1000, 0, -1000 / 61) has 62 values (the quotient rounds above 61).
        assert_eq!(np_arange(1000.0, 0.0, -1000.0 / 61.0).len(), 62);
        assert_eq!(np_arange(1000.0, 0.0, -1000.0 / 7.0).len(), 7);
    }

    #[test]
    fn spacings_match_diffusers_hand_values() {
        assert_eq!(
            euler_timesteps(TimestepSpacing::Trailing, 1000, 4, 1),
            vec![999.0, 749.0, 499.0, 249.0]
        );
        assert_eq!(
            ddim_timesteps(TimestepSpacing::Leading, 1000, 4, 1),
            vec![751, 501, 251, 1]
        );
        assert_eq!(
            dpm_timesteps(TimestepSpacing::Leading, 1000, 1000, 4, 1),
            vec![801, 601, 401, 201]
        );
        assert_eq!(np_round(2.5), 2.0);
    }
}
