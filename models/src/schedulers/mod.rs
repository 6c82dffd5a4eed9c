//! Noise schedulers reproducing diffusers 0.42.1: Euler, Euler-ancestral, DDIM (eta 0) and
//! DPM-Solver++ multistep, built from a model's `scheduler_config.json`.
//!
//! Scalar schedule math follows diffusers' dtypes: numpy float64 where diffusers uses numpy, and
//! float32 where it uses torch float32 tensors (sigmas, `alphas_cumprod` and the per-step
//! coefficients). Tensor updates run in float32 and are cast back to the model output's dtype.
mod config;
mod ddim;
mod dpm_solver;
mod euler;
mod euler_ancestral;
mod flow_match;
mod noise_schedule;
mod spacing;
mod tensor_ops;

use std::fmt;
use std::str::FromStr;

use candle_core::Tensor;

pub use config::SchedulerConfig;
pub use ddim::Ddim;
pub use dpm_solver::DpmSolverMultistep;
pub use euler::EulerDiscrete;
pub use euler_ancestral::EulerAncestralDiscrete;
pub use flow_match::{calculate_shift, FlowMatchConfig, FlowMatchEulerScheduler, TimeShiftType};

use crate::error::{ModelError, Result};
use crate::rng::TorchGenerator;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchedulerKind {
    Euler,
    EulerAncestral,
    Ddim,
    DpmSolverMultistep,
}

impl SchedulerKind {
    pub const ALL: [SchedulerKind; 4] = [
        SchedulerKind::Euler,
        SchedulerKind::EulerAncestral,
        SchedulerKind::Ddim,
        SchedulerKind::DpmSolverMultistep,
    ];

    /// The diffusers class name, as `_class_name` spells it.
    pub fn class_name(self) -> &'static str {
        match self {
            SchedulerKind::Euler => "EulerDiscreteScheduler",
            SchedulerKind::EulerAncestral => "EulerAncestralDiscreteScheduler",
            SchedulerKind::Ddim => "DDIMScheduler",
            SchedulerKind::DpmSolverMultistep => "DPMSolverMultistepScheduler",
        }
    }

    pub fn from_class_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.class_name() == name)
    }
}

/// A user's `--scheduler NAME`: the class, and whether to force Karras sigmas on or off
/// (`None` keeps the config's `use_karras_sigmas`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerChoice {
    pub kind: SchedulerKind,
    pub karras: Option<bool>,
}

impl SchedulerChoice {
    /// The accepted names, with what each builds.
    pub const NAMES: [(&'static str, SchedulerKind, Option<bool>); 7] = [
        ("euler", SchedulerKind::Euler, Some(false)),
        ("euler_karras", SchedulerKind::Euler, Some(true)),
        ("euler_a", SchedulerKind::EulerAncestral, None),
        ("ddim", SchedulerKind::Ddim, None),
        ("dpmpp_2m", SchedulerKind::DpmSolverMultistep, Some(false)),
        (
            "dpmpp_2m_karras",
            SchedulerKind::DpmSolverMultistep,
            Some(true),
        ),
        (
            "dpmpp_karras",
            SchedulerKind::DpmSolverMultistep,
            Some(true),
        ),
    ];
}

impl FromStr for SchedulerChoice {
    type Err = ModelError;

    fn from_str(name: &str) -> Result<Self> {
        let wanted = name.trim().to_ascii_lowercase();
        Self::NAMES
            .iter()
            .find(|(n, _, _)| *n == wanted)
            .map(|&(_, kind, karras)| SchedulerChoice { kind, karras })
            .ok_or_else(|| {
                let names: Vec<&str> = Self::NAMES.iter().map(|(n, _, _)| *n).collect();
                ModelError::invalid(
                    "scheduler",
                    format!(
                        "unknown scheduler \"{name}\"; expected one of {}",
                        names.join(", ")
                    ),
                )
            })
    }
}

impl fmt::Display for SchedulerChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = Self::NAMES
            .iter()
            .find(|(_, kind, karras)| *kind == self.kind && *karras == self.karras)
            .map(|(n, _, _)| *n)
            .unwrap_or(self.kind.class_name());
        f.write_str(name)
    }
}

/// What one denoising step produced.
#[derive(Debug, Clone)]
pub struct StepOutput {
    /// The latents for the next step (`x_{t-1}`), in the model output's dtype.
    pub prev_sample: Tensor,
    /// The scheduler's estimate of the clean latents (`x_0`), useful for previews.
    pub pred_original_sample: Tensor,
}

#[derive(Debug, Clone)]
pub enum Scheduler {
    Euler(EulerDiscrete),
    EulerAncestral(EulerAncestralDiscrete),
    Ddim(Ddim),
    DpmSolverMultistep(DpmSolverMultistep),
}

impl Scheduler {
    /// The model's own scheduler (`choice = None`), or `choice` built from the same config the way
    /// diffusers' `OtherScheduler.from_config(pipe.scheduler.config)` does, for
    /// `num_inference_steps` steps (diffusers' `set_timesteps`).
    pub fn new(
        config: &SchedulerConfig,
        choice: Option<SchedulerChoice>,
        num_inference_steps: usize,
    ) -> Result<Self> {
        let (kind, karras) = match choice {
            Some(c) => (c.kind, c.karras),
            None => (config.kind()?, None),
        };
        if karras == Some(true)
            && matches!(kind, SchedulerKind::EulerAncestral | SchedulerKind::Ddim)
        {
            return Err(ModelError::Unsupported(format!(
                "{} has no Karras sigmas",
                kind.class_name()
            )));
        }
        let train_steps = config.num_train_timesteps.unwrap_or(1000);
        if num_inference_steps == 0 || num_inference_steps > train_steps {
            return Err(ModelError::invalid(
                "steps",
                format!("must be between 1 and {train_steps}, got {num_inference_steps}"),
            ));
        }
        Ok(match kind {
            SchedulerKind::Euler => Scheduler::Euler(EulerDiscrete::new(
                &config.euler(karras)?,
                num_inference_steps,
            )),
            SchedulerKind::EulerAncestral => Scheduler::EulerAncestral(
                EulerAncestralDiscrete::new(&config.euler_ancestral()?, num_inference_steps),
            ),
            SchedulerKind::Ddim => {
                Scheduler::Ddim(Ddim::new(&config.ddim()?, num_inference_steps)?)
            }
            SchedulerKind::DpmSolverMultistep => Scheduler::DpmSolverMultistep(
                DpmSolverMultistep::new(&config.dpm_solver(karras)?, num_inference_steps),
            ),
        })
    }

    pub fn kind(&self) -> SchedulerKind {
        match self {
            Scheduler::Euler(_) => SchedulerKind::Euler,
            Scheduler::EulerAncestral(_) => SchedulerKind::EulerAncestral,
            Scheduler::Ddim(_) => SchedulerKind::Ddim,
            Scheduler::DpmSolverMultistep(_) => SchedulerKind::DpmSolverMultistep,
        }
    }

    /// The timesteps diffusers passes to the UNet, in order (float32 values for Euler and
    /// Euler-ancestral, integers for DDIM and DPM-Solver). `step_index` indexes this slice.
    pub fn timesteps(&self) -> &[f64] {
        match self {
            Scheduler::Euler(s) => s.timesteps(),
            Scheduler::EulerAncestral(s) => s.timesteps(),
            Scheduler::Ddim(s) => s.timesteps(),
            Scheduler::DpmSolverMultistep(s) => s.timesteps(),
        }
    }

    /// The sigma schedule (`timesteps().len() + 1` values, float32), or `None` for DDIM, which has
    /// none.
    pub fn sigmas(&self) -> Option<&[f32]> {
        match self {
            Scheduler::Euler(s) => Some(s.sigmas()),
            Scheduler::EulerAncestral(s) => Some(s.sigmas()),
            Scheduler::Ddim(_) => None,
            Scheduler::DpmSolverMultistep(s) => Some(s.sigmas()),
        }
    }

    /// The factor diffusers multiplies the initial noise by.
    pub fn init_noise_sigma(&self) -> f64 {
        match self {
            Scheduler::Euler(s) => s.init_noise_sigma(),
            Scheduler::EulerAncestral(s) => s.init_noise_sigma(),
            Scheduler::Ddim(_) | Scheduler::DpmSolverMultistep(_) => 1.0,
        }
    }

    /// Model evaluations per timestep; 1 for all four classes (img2img's `t_start * order`).
    pub fn order(&self) -> usize {
        1
    }

    /// The UNet input for `sample` at `timesteps()[step_index]`.
    pub fn scale_model_input(&self, sample: &Tensor, step_index: usize) -> Result<Tensor> {
        self.check_index(step_index)?;
        match self {
            Scheduler::Euler(s) => s.scale_model_input(sample, step_index),
            Scheduler::EulerAncestral(s) => s.scale_model_input(sample, step_index),
            Scheduler::Ddim(_) | Scheduler::DpmSolverMultistep(_) => Ok(sample.clone()),
        }
    }

    /// One denoising step from `timesteps()[step_index]`. Steps run in order; a step whose index
    /// does not follow the previous one starts afresh (as diffusers after `set_begin_index`).
    /// Euler-ancestral draws one `randn` of the model output's shape from `rng` on every step,
    /// the last one included; the other classes leave `rng` untouched.
    pub fn step(
        &mut self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
        rng: &mut TorchGenerator,
    ) -> Result<StepOutput> {
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
        match self {
            Scheduler::Euler(s) => s.step(model_output, step_index, sample),
            Scheduler::EulerAncestral(s) => s.step(model_output, step_index, sample, rng),
            Scheduler::Ddim(s) => s.step(model_output, step_index, sample),
            Scheduler::DpmSolverMultistep(s) => s.step(model_output, step_index, sample),
        }
    }

    /// img2img: `original` noised to `timesteps()[step_index]`, as diffusers' `add_noise` after
    /// `set_begin_index(step_index)`.
    pub fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        step_index: usize,
    ) -> Result<Tensor> {
        self.check_index(step_index)?;
        match self {
            Scheduler::Euler(s) => s.add_noise(original, noise, step_index),
            Scheduler::EulerAncestral(s) => s.add_noise(original, noise, step_index),
            Scheduler::Ddim(s) => s.add_noise(original, noise, step_index),
            Scheduler::DpmSolverMultistep(s) => s.add_noise(original, noise, step_index),
        }
    }

    fn check_index(&self, step_index: usize) -> Result<()> {
        let n = self.timesteps().len();
        if step_index >= n {
            return Err(ModelError::invalid(
                "step_index",
                format!("{step_index} is past the {n} timesteps"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choice_names_parse_and_unknown_names_list_the_options() {
        let c: SchedulerChoice = "dpmpp_karras".parse().expect("alias");
        assert_eq!(c.kind, SchedulerKind::DpmSolverMultistep);
        assert_eq!(c.karras, Some(true));
        assert_eq!(
            "Euler_A".parse::<SchedulerChoice>().expect("euler_a").kind,
            SchedulerKind::EulerAncestral
        );
        let err = "lms"
            .parse::<SchedulerChoice>()
            .expect_err("unknown")
            .to_string();
        assert!(
            err.contains("lms") && err.contains("dpmpp_2m_karras") && err.contains("ddim"),
            "{err}"
        );
        assert_eq!(
            "dpmpp_2m_karras"
                .parse::<SchedulerChoice>()
                .expect("ok")
                .to_string(),
            "dpmpp_2m_karras"
        );
    }

    #[test]
    fn karras_on_a_scheduler_without_sigmas_is_unsupported() {
        let cfg = SchedulerConfig::from_json("{}").expect("parses");
        let choice = SchedulerChoice {
            kind: SchedulerKind::Ddim,
            karras: Some(true),
        };
        assert!(matches!(
            Scheduler::new(&cfg, Some(choice), 4),
            Err(ModelError::Unsupported(_))
        ));
        let euler = SchedulerChoice {
            kind: SchedulerKind::Euler,
            karras: None,
        };
        assert!(matches!(
            Scheduler::new(&cfg, Some(euler), 0),
            Err(ModelError::InvalidInput { .. })
        ));
    }
}
