//! diffusers' `FlowMatchEulerDiscreteScheduler` as `FluxPipeline` and `FluxImg2ImgPipeline` drive
//! it: `set_timesteps(sigmas=linspace(1, 1/steps, steps), mu=calculate_shift(image_seq_len))`,
//! then one Euler step `x + (sigma_next - sigma) * v` per timestep.
//!
//! The schedule follows diffusers' dtypes: the custom sigmas become numpy float32 and every shift
//! runs in float32 (numpy 2 keeps Python scalars "weak", so `exp(mu)`, `shift` and the constants are
//! rounded to float32 first); the Karras and exponential conversions run in float64 and are cast
//! to float32; timesteps are `sigmas * num_train_timesteps` in float32 (torch).
use std::path::Path;

use candle_core::Tensor;
use serde::Deserialize;

use super::tensor_ops::{mul, to_f32};
use crate::error::{ModelError, Result};
use crate::loader::read_config_text;

/// How `use_dynamic_shifting` bends the sigmas with `mu`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeShiftType {
    /// `e^mu / (e^mu + (1/t - 1))` (FLUX).
    Exponential,
    /// `mu / (mu + (1/t - 1))`.
    Linear,
}

/// `scheduler_config.json` of a `FlowMatchEulerDiscreteScheduler`, with diffusers 0.42.1's
/// defaults for absent (or `null`) keys. Keys diffusers does not know are ignored, as diffusers does.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowMatchConfig {
    pub num_train_timesteps: usize,
    /// The static shift; unused when `use_dynamic_shifting` is on.
    pub shift: f64,
    pub use_dynamic_shifting: bool,
    pub base_shift: f64,
    pub max_shift: f64,
    pub base_image_seq_len: usize,
    pub max_image_seq_len: usize,
    pub invert_sigmas: bool,
    /// Stretch the shifted schedule so it ends at this sigma (`None` or 0: off).
    pub shift_terminal: Option<f64>,
    pub use_karras_sigmas: bool,
    pub use_exponential_sigmas: bool,
    /// Not implemented (diffusers needs scipy's beta quantile); refused by `validate`.
    pub use_beta_sigmas: bool,
    pub time_shift_type: TimeShiftType,
    /// Not implemented (a noise draw per step); refused by `validate`.
    pub stochastic_sampling: bool,
}

impl Default for FlowMatchConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            shift: 1.0,
            use_dynamic_shifting: false,
            base_shift: 0.5,
            max_shift: 1.15,
            base_image_seq_len: 256,
            max_image_seq_len: 4096,
            invert_sigmas: false,
            shift_terminal: None,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            time_shift_type: TimeShiftType::Exponential,
            stochastic_sampling: false,
        }
    }
}

/// The file as written: every key optional, so absent and `null` both take the default.
#[derive(Deserialize)]
struct RawFlowMatchConfig {
    num_train_timesteps: Option<usize>,
    shift: Option<f64>,
    use_dynamic_shifting: Option<bool>,
    base_shift: Option<f64>,
    max_shift: Option<f64>,
    base_image_seq_len: Option<usize>,
    max_image_seq_len: Option<usize>,
    invert_sigmas: Option<bool>,
    shift_terminal: Option<f64>,
    use_karras_sigmas: Option<bool>,
    use_exponential_sigmas: Option<bool>,
    use_beta_sigmas: Option<bool>,
    time_shift_type: Option<String>,
    stochastic_sampling: Option<bool>,
}

impl FlowMatchConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = read_config_text(path, "scheduler config")?;
        Self::from_json(&text).map_err(|e| match e {
            ModelError::InvalidInput { message, .. } => ModelError::invalid_file(path, message),
            other => other,
        })
    }

    /// Parses and validates the JSON text of a `scheduler_config.json`.
    pub fn from_json(text: &str) -> Result<Self> {
        let raw: RawFlowMatchConfig = serde_json::from_str(text)
            .map_err(|e| ModelError::invalid("scheduler config", e.to_string()))?;
        let d = Self::default();
        let time_shift_type = match raw.time_shift_type.as_deref() {
            None | Some("exponential") => TimeShiftType::Exponential,
            Some("linear") => TimeShiftType::Linear,
            Some(other) => {
                return Err(ModelError::invalid(
                    "scheduler config",
                    format!(
                        "time_shift_type must be \"exponential\" or \"linear\", got \"{other}\""
                    ),
                ))
            }
        };
        let config = Self {
            num_train_timesteps: raw.num_train_timesteps.unwrap_or(d.num_train_timesteps),
            shift: raw.shift.unwrap_or(d.shift),
            use_dynamic_shifting: raw.use_dynamic_shifting.unwrap_or(d.use_dynamic_shifting),
            base_shift: raw.base_shift.unwrap_or(d.base_shift),
            max_shift: raw.max_shift.unwrap_or(d.max_shift),
            base_image_seq_len: raw.base_image_seq_len.unwrap_or(d.base_image_seq_len),
            max_image_seq_len: raw.max_image_seq_len.unwrap_or(d.max_image_seq_len),
            invert_sigmas: raw.invert_sigmas.unwrap_or(d.invert_sigmas),
            shift_terminal: raw.shift_terminal,
            use_karras_sigmas: raw.use_karras_sigmas.unwrap_or(d.use_karras_sigmas),
            use_exponential_sigmas: raw
                .use_exponential_sigmas
                .unwrap_or(d.use_exponential_sigmas),
            use_beta_sigmas: raw.use_beta_sigmas.unwrap_or(d.use_beta_sigmas),
            time_shift_type,
            stochastic_sampling: raw.stochastic_sampling.unwrap_or(d.stochastic_sampling),
        };
        config.validate()?;
        Ok(config)
    }

    pub fn uses_dynamic_shifting(&self) -> bool {
        self.use_dynamic_shifting
    }

    /// Rejects what diffusers rejects and what this engine does not implement, naming the key.
    pub fn validate(&self) -> Result<()> {
        if self.stochastic_sampling {
            return Err(ModelError::Unsupported(
                "scheduler config: stochastic_sampling = true is not implemented".into(),
            ));
        }
        if self.use_beta_sigmas {
            return Err(ModelError::Unsupported(
                "scheduler config: use_beta_sigmas = true is not implemented".into(),
            ));
        }
        if self.use_karras_sigmas && self.use_exponential_sigmas {
            return Err(ModelError::invalid(
                "scheduler config",
                "only one of use_karras_sigmas and use_exponential_sigmas can be true",
            ));
        }
        if self.num_train_timesteps == 0 {
            return Err(ModelError::invalid(
                "scheduler config",
                "num_train_timesteps must be at least 1",
            ));
        }
        for (key, value) in [
            ("shift", self.shift),
            ("base_shift", self.base_shift),
            ("max_shift", self.max_shift),
        ] {
            if !value.is_finite() {
                return Err(ModelError::invalid(
                    "scheduler config",
                    format!("{key} must be a finite number, got {value}"),
                ));
            }
        }
        if let Some(terminal) = self.shift_terminal {
            if !terminal.is_finite() || terminal >= 1.0 {
                return Err(ModelError::invalid(
                    "scheduler config",
                    format!("shift_terminal must be below 1, got {terminal}"),
                ));
            }
        }
        if self.use_dynamic_shifting && self.max_image_seq_len == self.base_image_seq_len {
            return Err(ModelError::invalid(
                "scheduler config",
                "max_image_seq_len must differ from base_image_seq_len with use_dynamic_shifting",
            ));
        }
        Ok(())
    }
}

/// FluxPipeline's `calculate_shift`: `mu`, linear in the packed image sequence length between
/// (`base_image_seq_len`, `base_shift`) and (`max_image_seq_len`, `max_shift`), in float64.
pub fn calculate_shift(image_seq_len: usize, config: &FlowMatchConfig) -> f64 {
    let base_len = config.base_image_seq_len as f64;
    let m = (config.max_shift - config.base_shift) / (config.max_image_seq_len as f64 - base_len);
    let b = config.base_shift - m * base_len;
    image_seq_len as f64 * m + b
}

#[derive(Debug, Clone)]
pub struct FlowMatchEulerScheduler {
    /// float32 values, one per step.
    timesteps: Vec<f64>,
    /// float32 values: one per step plus the terminal one.
    sigmas: Vec<f64>,
    sigmas_f32: Vec<f32>,
}

impl FlowMatchEulerScheduler {
    /// As FluxPipeline: sigmas = linspace(1, 1/steps, steps), mu from `image_seq_len` (the packed
    /// latent length, `(h/16) * (w/16)`), used when the config shifts dynamically.
    pub fn new(config: &FlowMatchConfig, steps: usize, image_seq_len: usize) -> Result<Self> {
        if steps == 0 {
            return Err(ModelError::invalid("steps", "must be at least 1, got 0"));
        }
        let sigmas = linspace(1.0, 1.0 / steps as f64, steps);
        Self::from_sigmas(
            config,
            &sigmas,
            Some(calculate_shift(image_seq_len, config)),
        )
    }

    /// diffusers' `set_timesteps(sigmas=sigmas, mu=mu)` for custom sigmas (a pipeline's `sigmas=`).
    /// `mu` is needed when the config shifts dynamically and ignored otherwise.
    pub fn from_sigmas(config: &FlowMatchConfig, sigmas: &[f64], mu: Option<f64>) -> Result<Self> {
        config.validate()?;
        if sigmas.is_empty() {
            return Err(ModelError::invalid(
                "sigmas",
                "at least one sigma is needed",
            ));
        }
        let input: Vec<f32> = sigmas.iter().map(|&s| s as f32).collect();
        let mut shifted: Vec<f32> = if config.use_dynamic_shifting {
            let mu = mu.ok_or_else(|| {
                ModelError::invalid("mu", "needed when use_dynamic_shifting is true")
            })?;
            input
                .iter()
                .map(|&t| time_shift(config.time_shift_type, mu, t))
                .collect()
        } else {
            let shift = config.shift as f32;
            let shift_minus_one = (config.shift - 1.0) as f32;
            input
                .iter()
                .map(|&s| shift * s / (1.0 + shift_minus_one * s))
                .collect()
        };
        // diffusers tests `if shift_terminal:`, so 0.0 is off as well.
        if let Some(terminal) = config.shift_terminal.filter(|&t| t != 0.0) {
            shifted = stretch_to_terminal(&shifted, terminal);
        }
        let steps = shifted.len();
        if config.use_karras_sigmas {
            shifted = karras_sigmas(&shifted, steps);
        } else if config.use_exponential_sigmas {
            shifted = exponential_sigmas(&shifted, steps);
        }
        let train = config.num_train_timesteps as f32;
        let (mut sigmas_f32, terminal) = if config.invert_sigmas {
            (shifted.iter().map(|&s| 1.0 - s).collect::<Vec<f32>>(), 1.0)
        } else {
            (shifted, 0.0)
        };
        let timesteps: Vec<f64> = sigmas_f32.iter().map(|&s| (s * train) as f64).collect();
        sigmas_f32.push(terminal);
        if let Some(bad) = sigmas_f32.iter().find(|s| !s.is_finite()) {
            return Err(ModelError::invalid(
                "scheduler config",
                format!("the sigma schedule is not finite ({bad}); check shift and shift_terminal"),
            ));
        }
        Ok(Self {
            timesteps,
            sigmas: sigmas_f32.iter().map(|&s| s as f64).collect(),
            sigmas_f32,
        })
    }

    /// What the pipeline divides by 1000 for the transformer (float32 values).
    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// `timesteps().len() + 1` values (float32); the last is the terminal 0 (1 with invert_sigmas).
    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// `x_{i+1} = x_i + (sigma_{i+1} - sigma_i) * v`, in float32 as diffusers upcasts, returned in
    /// the model output's dtype. `step_index` is absolute (img2img passes its start index onward).
    pub fn step(
        &self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
    ) -> Result<Tensor> {
        self.check_index(step_index)?;
        if model_output.dims() != sample.dims() {
            return Err(ModelError::invalid(
                "model_output",
                format!(
                    "shape {:?} differs from the sample's {:?}",
                    model_output.dims(),
                    sample.dims()
                ),
            ));
        }
        let dt = self.sigmas_f32[step_index + 1] - self.sigmas_f32[step_index];
        let prev = (to_f32(sample)? + mul(&to_f32(model_output)?, dt)?)?;
        Ok(prev.to_dtype(model_output.dtype())?)
    }

    /// img2img's forward process at `step_index` (diffusers' `scale_noise` after
    /// `set_begin_index(step_index)`): `sigma * noise + (1 - sigma) * sample`, in float32, returned
    /// in the sample's dtype.
    pub fn scale_noise(
        &self,
        sample: &Tensor,
        step_index: usize,
        noise: &Tensor,
    ) -> Result<Tensor> {
        self.check_index(step_index)?;
        if noise.dims() != sample.dims() {
            return Err(ModelError::invalid(
                "noise",
                format!(
                    "shape {:?} differs from the sample's {:?}",
                    noise.dims(),
                    sample.dims()
                ),
            ));
        }
        let sigma = self.sigmas_f32[step_index];
        let noised = (mul(&to_f32(noise)?, sigma)? + mul(&to_f32(sample)?, 1.0 - sigma)?)?;
        Ok(noised.to_dtype(sample.dtype())?)
    }

    /// FluxImg2ImgPipeline's `get_timesteps`: the index of the first step that runs for `strength`
    /// (`int(steps - min(steps * strength, steps))`); steps from it to the end run.
    pub fn img2img_start_index(&self, strength: f64) -> Result<usize> {
        if !(0.0..=1.0).contains(&strength) {
            return Err(ModelError::invalid(
                "strength",
                format!("must be between 0 and 1, got {strength}"),
            ));
        }
        let steps = self.timesteps.len() as f64;
        let init = (steps * strength).min(steps);
        // Python's int() truncates toward zero; the value is already >= 0.
        let start = (steps - init).max(0.0) as usize;
        if start >= self.timesteps.len() {
            return Err(ModelError::invalid(
                "strength",
                format!(
                    "{strength} of {} steps leaves no step to run",
                    self.timesteps.len()
                ),
            ));
        }
        Ok(start)
    }

    fn check_index(&self, step_index: usize) -> Result<()> {
        let n = self.timesteps.len();
        if step_index >= n {
            return Err(ModelError::invalid(
                "step_index",
                format!("{step_index} is past the {n} timesteps"),
            ));
        }
        Ok(())
    }
}

/// numpy's `linspace(start, stop, num)` in float64: `i * step + start`, the last value `stop`.
fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    (0..num)
        .map(|i| {
            if i == num - 1 {
                stop
            } else {
                i as f64 * step + start
            }
        })
        .collect()
}

/// diffusers' `time_shift(mu, 1.0, t)` on a float32 array (the `** 1.0` is the identity).
fn time_shift(kind: TimeShiftType, mu: f64, t: f32) -> f32 {
    let odds = 1.0 / t - 1.0;
    let m = match kind {
        TimeShiftType::Exponential => mu.exp() as f32,
        TimeShiftType::Linear => mu as f32,
    };
    m / (m + odds)
}

/// `stretch_shift_to_terminal`: rescale `1 - t` so the last sigma lands on `terminal`.
fn stretch_to_terminal(sigmas: &[f32], terminal: f64) -> Vec<f32> {
    let last = sigmas[sigmas.len() - 1];
    let scale = (1.0 - last) / (1.0 - terminal) as f32;
    sigmas.iter().map(|&s| 1.0 - (1.0 - s) / scale).collect()
}

/// `_convert_to_karras` (rho 7) between the first and last sigma, in float64.
fn karras_sigmas(sigmas: &[f32], steps: usize) -> Vec<f32> {
    let rho = 7.0;
    let min_inv_rho = (sigmas[sigmas.len() - 1] as f64).powf(1.0 / rho);
    let max_inv_rho = (sigmas[0] as f64).powf(1.0 / rho);
    linspace(0.0, 1.0, steps)
        .iter()
        .map(|&r| ((max_inv_rho + r * (min_inv_rho - max_inv_rho)).powf(rho)) as f32)
        .collect()
}

/// `_convert_to_exponential`: log-uniform between the first and last sigma, in float64.
fn exponential_sigmas(sigmas: &[f32], steps: usize) -> Vec<f32> {
    let max = (sigmas[0] as f64).ln();
    let min = (sigmas[sigmas.len() - 1] as f64).ln();
    linspace(max, min, steps)
        .iter()
        .map(|&l| l.exp() as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use candle_core::{DType, Device, Tensor};
    use serde_json::Value;

    use super::*;

    /// Values diffusers 0.42.1 computed (see models/tests/data/flow_match/README.md).
    const REFERENCE: &str = include_str!("../../tests/data/flow_match/reference.json");

    fn reference() -> Value {
        serde_json::from_str(REFERENCE).expect("reference.json parses")
    }

    fn floats(v: &Value) -> Vec<f64> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|x| x.as_f64().expect("number"))
            .collect()
    }

    fn assert_rel(name: &str, got: &[f64], want: &[f64], rel: f64) {
        assert_eq!(got.len(), want.len(), "{name}: length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= rel * w.abs(),
                "{name}[{i}]: got {g}, diffusers {w}"
            );
        }
    }

    fn fixtures() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
    }

    #[test]
    fn schedules_match_diffusers() {
        let reference = reference();
        let cases = reference["cases"].as_array().expect("cases");
        assert!(cases.len() >= 12);
        for case in cases {
            let name = case["name"].as_str().expect("name");
            let config = FlowMatchConfig::from_json(&case["config"].to_string()).expect(name);
            let steps = case["steps"].as_u64().expect("steps") as usize;
            let seq = case["image_seq_len"].as_u64().expect("seq") as usize;
            let mu = calculate_shift(seq, &config);
            let want_mu = case["mu"].as_f64().expect("mu");
            assert!(
                (mu - want_mu).abs() <= 1e-12 * want_mu.abs(),
                "{name}: mu {mu} vs {want_mu}"
            );
            let s = FlowMatchEulerScheduler::new(&config, steps, seq).expect(name);
            assert_rel(name, s.timesteps(), &floats(&case["timesteps"]), 1e-6);
            assert_rel(name, s.sigmas(), &floats(&case["sigmas"]), 1e-6);
        }
    }

    fn tensor(values: &Value, shape: &[usize]) -> Tensor {
        let v: Vec<f32> = floats(values).iter().map(|&x| x as f32).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).expect("tensor")
    }

    fn values(t: &Tensor) -> Vec<f64> {
        t.flatten_all()
            .and_then(|t| t.to_dtype(DType::F64))
            .and_then(|t| t.to_vec1::<f64>())
            .expect("values")
    }

    fn assert_close(name: &str, got: &[f64], want: &[f64], atol: f64) {
        assert_eq!(got.len(), want.len(), "{name}: length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= atol, "{name}[{i}]: got {g}, diffusers {w}");
        }
    }

    #[test]
    fn step_and_scale_noise_match_diffusers() {
        let reference = reference();
        let r = &reference["tensors"];
        let shape: Vec<usize> = floats(&r["shape"]).iter().map(|&x| x as usize).collect();
        let config = FlowMatchConfig::from_json(&r["config"].to_string()).expect("config");
        let s = FlowMatchEulerScheduler::new(&config, 28, 1024).expect("scheduler");
        let sample = tensor(&r["sample"], &shape);
        let velocity = tensor(&r["model_output"], &shape);
        let noise = tensor(&r["noise"], &shape);

        let prev = s.step(&velocity, 5, &sample).expect("step 5");
        assert_close("step_5", &values(&prev), &floats(&r["step_5"]), 1e-6);
        let prev2 = s.step(&velocity, 6, &prev).expect("step 6");
        assert_close(
            "step_6",
            &values(&prev2),
            &floats(&r["step_6_after_5"]),
            1e-6,
        );
        let last = s.step(&velocity, 27, &sample).expect("step 27");
        assert_close("step_27", &values(&last), &floats(&r["step_27"]), 1e-6);
        let noised = s.scale_noise(&sample, 3, &noise).expect("scale_noise");
        assert_close(
            "scale_noise",
            &values(&noised),
            &floats(&r["scale_noise_3"]),
            1e-6,
        );

        assert!(s.step(&velocity, 28, &sample).is_err());
        let wrong = Tensor::zeros((2, 12), DType::F32, &Device::Cpu).expect("zeros");
        assert!(s.step(&wrong, 0, &sample).is_err());
    }

    #[test]
    fn model_configs_parse_with_defaults() {
        let schnell = FlowMatchConfig::from_file(
            &fixtures().join("parity/flux-schnell-4step/model/scheduler/scheduler_config.json"),
        )
        .expect("schnell config");
        assert_eq!(schnell, FlowMatchConfig::default());
        assert!(!schnell.uses_dynamic_shifting());

        let dev = FlowMatchConfig::from_file(
            &fixtures()
                .join("extra/flux-dev-guidance-dynamic/model/scheduler/scheduler_config.json"),
        )
        .expect("dev config");
        assert!(dev.uses_dynamic_shifting());
        assert_eq!(dev.shift, 3.0);

        // FLUX.1-dev's own file lists only some keys (and an unknown one is ignored).
        let sparse = FlowMatchConfig::from_json(
            r#"{"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0,
                "use_dynamic_shifting": true, "shift_terminal": null, "use_flow_sigmas": true}"#,
        )
        .expect("sparse config");
        assert_eq!(sparse.base_image_seq_len, 256);
        assert_eq!(sparse.max_shift, 1.15);
        assert_eq!(sparse.time_shift_type, TimeShiftType::Exponential);
        assert_eq!(sparse.shift_terminal, None);
    }

    #[test]
    fn unimplemented_or_invalid_flags_are_refused_by_name() {
        for (json, key) in [
            (r#"{"stochastic_sampling": true}"#, "stochastic_sampling"),
            (r#"{"use_beta_sigmas": true}"#, "use_beta_sigmas"),
            (
                r#"{"use_karras_sigmas": true, "use_exponential_sigmas": true}"#,
                "use_exponential_sigmas",
            ),
            (r#"{"time_shift_type": "cosine"}"#, "time_shift_type"),
            (r#"{"shift_terminal": 1.0}"#, "shift_terminal"),
            (
                r#"{"use_dynamic_shifting": true, "max_image_seq_len": 256}"#,
                "max_image_seq_len",
            ),
        ] {
            let err = FlowMatchConfig::from_json(json)
                .expect_err(json)
                .to_string();
            assert!(err.contains(key), "{json}: {err}");
        }
        let config = FlowMatchConfig {
            stochastic_sampling: true,
            ..FlowMatchConfig::default()
        };
        let err = FlowMatchEulerScheduler::new(&config, 4, 256).expect_err("refused");
        assert!(err.to_string().contains("stochastic_sampling"));

        let dynamic = FlowMatchConfig {
            use_dynamic_shifting: true,
            ..FlowMatchConfig::default()
        };
        assert!(FlowMatchEulerScheduler::from_sigmas(&dynamic, &[1.0, 0.5], None).is_err());
        assert!(FlowMatchEulerScheduler::new(&dynamic, 0, 256).is_err());
    }

    fn expected(case: &str) -> std::collections::HashMap<String, Tensor> {
        let path = fixtures()
            .join("extra")
            .join(case)
            .join("expected.safetensors");
        candle_core::safetensors::load(&path, &Device::Cpu).expect("expected.safetensors")
    }

    /// The schedules behind the FLUX fixtures, and img2img's start index and noising.
    #[test]
    fn flux_fixture_schedules_and_img2img_noise() {
        let schnell = FlowMatchConfig::default();
        let dev = FlowMatchConfig::from_file(
            &fixtures()
                .join("extra/flux-dev-guidance-dynamic/model/scheduler/scheduler_config.json"),
        )
        .expect("dev config");
        for (case, config, steps, seq) in [
            ("flux-schnell-nonsquare-batch2", &schnell, 3, 24),
            ("flux-dev-guidance-dynamic", &dev, 6, 32),
            ("flux-long-prompt-truncated", &schnell, 2, 16),
        ] {
            let e = expected(case);
            let s = FlowMatchEulerScheduler::new(config, steps, seq).expect(case);
            assert_rel(case, s.timesteps(), &values(&e["timesteps"]), 1e-6);
            assert_rel(case, s.sigmas(), &values(&e["sigmas"]), 1e-6);
        }

        let e = expected("flux-img2img");
        let s = FlowMatchEulerScheduler::new(&schnell, 4, 16).expect("img2img");
        let start = s.img2img_start_index(0.6).expect("start");
        assert_eq!(start, 1);
        assert_rel(
            "img2img",
            &s.timesteps()[start..],
            &values(&e["timesteps"]),
            1e-6,
        );
        let noised = s
            .scale_noise(&e["image_latents"], start, &e["noise"])
            .expect("scale_noise");
        assert_close(
            "latents_init_unpacked",
            &values(&noised),
            &values(&e["latents_init_unpacked"]),
            1e-6,
        );
        assert!(s.img2img_start_index(0.0).is_err());
        assert!(s.img2img_start_index(1.5).is_err());
        assert_eq!(s.img2img_start_index(1.0).expect("full"), 0);
    }
}
