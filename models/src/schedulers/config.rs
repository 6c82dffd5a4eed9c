//! `scheduler_config.json` and how diffusers resolves it for one scheduler class.
//!
//! Every field is the raw value from the file (`None` when absent or `null`). diffusers' loader marks
//! absent keys as "defaults used", and `Other.from_config(pipe.scheduler.config)` drops those keys,
//! so a key absent from the file always takes the default of the class being built (the target),
//! while a key present in the file carries over whatever class wrote it. The resolved parameter
//! structs below apply the target class's defaults and reject what this engine does not implement.
use std::path::Path;

use serde::{Deserialize, Deserializer};

use super::SchedulerKind;
use crate::error::{ModelError, Result};

#[derive(Debug, Clone, Default, Deserialize)]
pub struct SchedulerConfig {
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,

    // Noise schedule (shared by all four classes).
    pub num_train_timesteps: Option<usize>,
    #[serde(default, deserialize_with = "lenient_f64")]
    pub beta_start: Option<f64>,
    #[serde(default, deserialize_with = "lenient_f64")]
    pub beta_end: Option<f64>,
    pub beta_schedule: Option<String>,
    pub trained_betas: Option<Vec<f64>>,
    pub rescale_betas_zero_snr: Option<bool>,
    pub prediction_type: Option<String>,
    pub timestep_spacing: Option<String>,
    pub steps_offset: Option<i64>,

    // Sigma schedules (Euler, DPM-Solver).
    pub use_karras_sigmas: Option<bool>,
    pub use_exponential_sigmas: Option<bool>,
    pub use_beta_sigmas: Option<bool>,
    #[serde(default, deserialize_with = "lenient_f64")]
    pub sigma_min: Option<f64>,
    #[serde(default, deserialize_with = "lenient_f64")]
    pub sigma_max: Option<f64>,
    pub final_sigmas_type: Option<String>,
    pub interpolation_type: Option<String>,
    pub timestep_type: Option<String>,

    // DDIM.
    pub clip_sample: Option<bool>,
    #[serde(default, deserialize_with = "lenient_f64")]
    pub clip_sample_range: Option<f64>,
    pub set_alpha_to_one: Option<bool>,
    pub thresholding: Option<bool>,

    // DPM-Solver multistep.
    pub solver_order: Option<usize>,
    pub algorithm_type: Option<String>,
    pub solver_type: Option<String>,
    pub lower_order_final: Option<bool>,
    pub euler_at_final: Option<bool>,
    pub use_lu_lambdas: Option<bool>,
    pub use_flow_sigmas: Option<bool>,
    pub use_dynamic_shifting: Option<bool>,
    #[serde(default, deserialize_with = "lenient_f64")]
    pub lambda_min_clipped: Option<f64>,
    pub variance_type: Option<String>,
}

impl SchedulerConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(ModelError::MissingFile {
                what: "scheduler config".into(),
                path: path.to_path_buf(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        Self::from_json(&text).map_err(|e| ModelError::invalid_file(path, e.to_string()))
    }

    /// Parses the JSON text of a `scheduler_config.json`. Python's `json` writes `-Infinity`,
    /// `Infinity` and `NaN` (e.g. `"lambda_min_clipped": -Infinity`), which strict JSON lacks.
    pub fn from_json(text: &str) -> std::result::Result<Self, serde_json::Error> {
        serde_json::from_str(&quote_non_finite(text))
    }

    /// The scheduler class the file names.
    pub fn kind(&self) -> Result<SchedulerKind> {
        let name = self.class_name.as_deref().ok_or_else(|| {
            ModelError::Unsupported("scheduler config has no \"_class_name\"".into())
        })?;
        SchedulerKind::from_class_name(name).ok_or_else(|| {
            ModelError::Unsupported(format!(
                "scheduler class \"{name}\" is not implemented (implemented: {}); choose one with --scheduler",
                SchedulerKind::ALL
                    .iter()
                    .map(|k| k.class_name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }
}

/// Rewrites Python's bare non-finite float tokens (outside strings) as JSON strings.
fn quote_non_finite(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else if let Some(token) = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|t| rest.starts_with(t))
        {
            out.push('"');
            out.push_str(token);
            out.push('"');
            rest = &rest[token.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// A float that may also be written as the strings `"Infinity"`, `"-Infinity"` or `"NaN"`.
fn lenient_f64<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Lenient {
        Number(f64),
        Text(String),
    }
    match Option::<Lenient>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Lenient::Number(v)) => Ok(Some(v)),
        Some(Lenient::Text(t)) => match t.as_str() {
            "Infinity" => Ok(Some(f64::INFINITY)),
            "-Infinity" => Ok(Some(f64::NEG_INFINITY)),
            "NaN" => Ok(Some(f64::NAN)),
            other => Err(serde::de::Error::custom(format!(
                "expected a number, got \"{other}\""
            ))),
        },
    }
}

fn unsupported(class: SchedulerKind, key: &str, value: impl std::fmt::Debug) -> ModelError {
    ModelError::Unsupported(format!(
        "{}: scheduler config `{key}` = {value:?} is not implemented",
        class.class_name()
    ))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BetaSchedule {
    Linear,
    ScaledLinear,
    SquaredCosCapV2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PredictionType {
    Epsilon,
    VPrediction,
    Sample,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimestepSpacing {
    Leading,
    Trailing,
    Linspace,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FinalSigmas {
    Zero,
    SigmaMin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SolverType {
    Midpoint,
    Heun,
}

/// What every class reads: the training noise schedule, the prediction type and the spacing.
#[derive(Debug, Clone)]
pub(crate) struct CommonParams {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub trained_betas: Option<Vec<f64>>,
    pub rescale_betas_zero_snr: bool,
    pub prediction_type: PredictionType,
    pub timestep_spacing: TimestepSpacing,
    pub steps_offset: i64,
}

#[derive(Debug, Clone)]
pub(crate) struct EulerParams {
    pub common: CommonParams,
    pub karras: bool,
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
    pub final_sigmas: FinalSigmas,
}

#[derive(Debug, Clone)]
pub(crate) struct DdimParams {
    pub common: CommonParams,
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    pub set_alpha_to_one: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct DpmParams {
    pub common: CommonParams,
    pub solver_order: usize,
    pub solver_type: SolverType,
    pub lower_order_final: bool,
    pub euler_at_final: bool,
    pub karras: bool,
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
    pub final_sigmas: FinalSigmas,
    pub lambda_min_clipped: f64,
}

impl SchedulerConfig {
    pub(crate) fn common(&self, class: SchedulerKind) -> Result<CommonParams> {
        let beta_schedule = match self.beta_schedule.as_deref().unwrap_or("linear") {
            "linear" => BetaSchedule::Linear,
            "scaled_linear" => BetaSchedule::ScaledLinear,
            "squaredcos_cap_v2" => BetaSchedule::SquaredCosCapV2,
            other => return Err(unsupported(class, "beta_schedule", other)),
        };
        let prediction_type = match self.prediction_type.as_deref().unwrap_or("epsilon") {
            "epsilon" => PredictionType::Epsilon,
            "v_prediction" => PredictionType::VPrediction,
            // Euler also accepts the older spelling "original_sample".
            "sample" if class != SchedulerKind::EulerAncestral => PredictionType::Sample,
            "original_sample" if class == SchedulerKind::Euler => PredictionType::Sample,
            other => return Err(unsupported(class, "prediction_type", other)),
        };
        let default_spacing = match class {
            SchedulerKind::Ddim => "leading",
            _ => "linspace",
        };
        let timestep_spacing = match self.timestep_spacing.as_deref().unwrap_or(default_spacing) {
            "leading" => TimestepSpacing::Leading,
            "trailing" => TimestepSpacing::Trailing,
            "linspace" => TimestepSpacing::Linspace,
            other => return Err(unsupported(class, "timestep_spacing", other)),
        };
        let num_train_timesteps = self.num_train_timesteps.unwrap_or(1000);
        if num_train_timesteps < 2 {
            return Err(unsupported(
                class,
                "num_train_timesteps",
                num_train_timesteps,
            ));
        }
        if let Some(betas) = &self.trained_betas {
            if betas.len() != num_train_timesteps {
                return Err(ModelError::Unsupported(format!(
                    "{}: trained_betas has {} values but num_train_timesteps is {num_train_timesteps}",
                    class.class_name(),
                    betas.len()
                )));
            }
        }
        Ok(CommonParams {
            num_train_timesteps,
            beta_start: self.beta_start.unwrap_or(0.0001),
            beta_end: self.beta_end.unwrap_or(0.02),
            beta_schedule,
            trained_betas: self.trained_betas.clone(),
            rescale_betas_zero_snr: self.rescale_betas_zero_snr.unwrap_or(false),
            prediction_type,
            timestep_spacing,
            steps_offset: self.steps_offset.unwrap_or(0),
        })
    }

    fn final_sigmas(&self, class: SchedulerKind) -> Result<FinalSigmas> {
        match self.final_sigmas_type.as_deref().unwrap_or("zero") {
            "zero" => Ok(FinalSigmas::Zero),
            "sigma_min" => Ok(FinalSigmas::SigmaMin),
            other => Err(unsupported(class, "final_sigmas_type", other)),
        }
    }

    /// Sigma schedules other than Karras' that Euler and DPM-Solver accept but this engine lacks.
    fn reject_other_sigma_schedules(&self, class: SchedulerKind) -> Result<()> {
        for (key, value) in [
            ("use_exponential_sigmas", self.use_exponential_sigmas),
            ("use_beta_sigmas", self.use_beta_sigmas),
        ] {
            if value == Some(true) {
                return Err(unsupported(class, key, true));
            }
        }
        Ok(())
    }

    pub(crate) fn euler(&self, karras: Option<bool>) -> Result<EulerParams> {
        let class = SchedulerKind::Euler;
        let common = self.common(class)?;
        self.reject_other_sigma_schedules(class)?;
        if let Some(kind) = self
            .interpolation_type
            .as_deref()
            .filter(|k| *k != "linear")
        {
            return Err(unsupported(class, "interpolation_type", kind));
        }
        match self.timestep_type.as_deref().unwrap_or("discrete") {
            "discrete" => {}
            // Continuous timesteps only change anything for v-prediction (0.25 * ln(sigma)).
            "continuous" if common.prediction_type != PredictionType::VPrediction => {}
            other => return Err(unsupported(class, "timestep_type", other)),
        }
        Ok(EulerParams {
            karras: karras.unwrap_or(self.use_karras_sigmas.unwrap_or(false)),
            sigma_min: self.sigma_min,
            sigma_max: self.sigma_max,
            final_sigmas: self.final_sigmas(class)?,
            common,
        })
    }

    pub(crate) fn euler_ancestral(&self) -> Result<CommonParams> {
        self.common(SchedulerKind::EulerAncestral)
    }

    pub(crate) fn ddim(&self) -> Result<DdimParams> {
        let class = SchedulerKind::Ddim;
        if self.thresholding == Some(true) {
            return Err(unsupported(class, "thresholding", true));
        }
        Ok(DdimParams {
            common: self.common(class)?,
            clip_sample: self.clip_sample.unwrap_or(true),
            clip_sample_range: self.clip_sample_range.unwrap_or(1.0),
            set_alpha_to_one: self.set_alpha_to_one.unwrap_or(true),
        })
    }

    pub(crate) fn dpm_solver(&self, karras: Option<bool>) -> Result<DpmParams> {
        let class = SchedulerKind::DpmSolverMultistep;
        let common = self.common(class)?;
        self.reject_other_sigma_schedules(class)?;
        for (key, value) in [
            ("thresholding", self.thresholding),
            ("use_lu_lambdas", self.use_lu_lambdas),
            ("use_flow_sigmas", self.use_flow_sigmas),
            ("use_dynamic_shifting", self.use_dynamic_shifting),
        ] {
            if value == Some(true) {
                return Err(unsupported(class, key, true));
            }
        }
        match self.algorithm_type.as_deref().unwrap_or("dpmsolver++") {
            // diffusers maps "deis" onto dpmsolver++.
            "dpmsolver++" | "deis" => {}
            other => return Err(unsupported(class, "algorithm_type", other)),
        }
        let solver_type = match self.solver_type.as_deref().unwrap_or("midpoint") {
            // diffusers maps the UniPC/DEIS names onto midpoint.
            "midpoint" | "logrho" | "bh1" | "bh2" => SolverType::Midpoint,
            "heun" => SolverType::Heun,
            other => return Err(unsupported(class, "solver_type", other)),
        };
        let solver_order = self.solver_order.unwrap_or(2);
        if !(1..=3).contains(&solver_order) {
            return Err(unsupported(class, "solver_order", solver_order));
        }
        if let Some(variance) = &self.variance_type {
            return Err(unsupported(class, "variance_type", variance));
        }
        Ok(DpmParams {
            solver_order,
            solver_type,
            lower_order_final: self.lower_order_final.unwrap_or(true),
            euler_at_final: self.euler_at_final.unwrap_or(false),
            karras: karras.unwrap_or(self.use_karras_sigmas.unwrap_or(false)),
            // DPM-Solver has no sigma_min/sigma_max parameters, but diffusers keeps keys the file
            // has in the config and its Karras conversion reads them from there when present.
            sigma_min: self.sigma_min,
            sigma_max: self.sigma_max,
            final_sigmas: self.final_sigmas(class)?,
            lambda_min_clipped: self.lambda_min_clipped.unwrap_or(f64::NEG_INFINITY),
            common,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_non_finite_floats_parse() {
        let cfg = SchedulerConfig::from_json(
            r#"{"_class_name": "DPMSolverMultistepScheduler", "lambda_min_clipped": -Infinity,
                "variance_type": null, "note": "NaN -Infinity stays text", "sigma_max": Infinity}"#,
        )
        .expect("parses");
        assert_eq!(cfg.lambda_min_clipped, Some(f64::NEG_INFINITY));
        assert_eq!(cfg.sigma_max, Some(f64::INFINITY));
        assert_eq!(cfg.variance_type, None);
    }

    #[test]
    fn unknown_class_and_unsupported_keys_are_named() {
        let cfg =
            SchedulerConfig::from_json(r#"{"_class_name": "PNDMScheduler"}"#).expect("parses");
        let err = cfg.kind().expect_err("PNDM is not implemented").to_string();
        assert!(err.contains("PNDMScheduler"), "{err}");

        let cfg =
            SchedulerConfig::from_json(r#"{"algorithm_type": "sde-dpmsolver++"}"#).expect("parses");
        let err = cfg.dpm_solver(None).expect_err("sde").to_string();
        assert!(
            err.contains("algorithm_type") && err.contains("sde-dpmsolver++"),
            "{err}"
        );

        let cfg = SchedulerConfig::from_json(r#"{"thresholding": true}"#).expect("parses");
        let err = cfg.ddim().expect_err("thresholding").to_string();
        assert!(err.contains("thresholding"), "{err}");

        let cfg =
            SchedulerConfig::from_json(r#"{"use_exponential_sigmas": true}"#).expect("parses");
        let err = cfg.euler(None).expect_err("exponential").to_string();
        assert!(err.contains("use_exponential_sigmas"), "{err}");

        let cfg = SchedulerConfig::from_json(r#"{"prediction_type": "sample"}"#).expect("parses");
        let err = cfg.euler_ancestral().expect_err("sample").to_string();
        assert!(err.contains("prediction_type"), "{err}");
    }

    #[test]
    fn absent_keys_take_the_target_classes_defaults() {
        let cfg = SchedulerConfig::from_json("{}").expect("parses");
        assert_eq!(
            cfg.ddim().expect("ddim").common.timestep_spacing,
            TimestepSpacing::Leading
        );
        assert_eq!(
            cfg.euler(None).expect("euler").common.timestep_spacing,
            TimestepSpacing::Linspace
        );
        assert!(cfg.ddim().expect("ddim").clip_sample);
    }
}
