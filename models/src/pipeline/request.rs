//! One generation as the engine takes it, checked against the loaded model before any work.
use image::RgbImage;

use crate::error::{ModelError, Result};
use crate::schedulers::SchedulerChoice;

/// diffusers' image-to-image default `strength`.
pub const DEFAULT_STRENGTH: f64 = 0.8;

/// Largest batch one request may ask for (the HTTP API allows 1-10).
pub const MAX_BATCH: usize = 10;

/// An image-to-image starting point.
#[derive(Clone, Debug)]
pub struct InitImage {
    pub image: RgbImage,
    /// How much of the schedule is re-run, in (0, 1]: 1 ignores the image's content.
    pub strength: f64,
}

#[derive(Clone, Debug)]
pub struct GenerationRequest {
    pub prompt: String,
    /// `None` differs from `Some("")` for SDXL models with `force_zeros_for_empty_prompt`.
    pub negative_prompt: Option<String>,
    pub seed: u64,
    pub steps: usize,
    pub guidance_scale: f64,
    pub width: usize,
    pub height: usize,
    /// Images in the batch (`n`).
    pub batch_size: usize,
    /// Overrides the model's own scheduler.
    pub scheduler: Option<SchedulerChoice>,
    pub init_image: Option<InitImage>,
    /// FLUX: T5 tokens the prompt is padded/truncated to; `None` takes the model's default.
    pub max_sequence_length: Option<usize>,
}

impl GenerationRequest {
    /// Checks what does not depend on the model; `multiple` is the latent downscale factor.
    pub fn validate(&self, multiple: usize) -> Result<()> {
        if self.steps == 0 {
            return Err(ModelError::invalid("steps", "must be at least 1, got 0"));
        }
        if self.batch_size == 0 || self.batch_size > MAX_BATCH {
            return Err(ModelError::invalid(
                "n",
                format!("must be between 1 and {MAX_BATCH}, got {}", self.batch_size),
            ));
        }
        if !self.guidance_scale.is_finite() || self.guidance_scale < 0.0 {
            return Err(ModelError::invalid(
                "guidance_scale",
                format!("must be a finite number >= 0, got {}", self.guidance_scale),
            ));
        }
        for (field, value) in [("width", self.width), ("height", self.height)] {
            if value == 0 || value % multiple != 0 {
                return Err(ModelError::invalid(
                    field,
                    format!("must be a positive multiple of {multiple}, got {value}"),
                ));
            }
        }
        if let Some(init) = &self.init_image {
            if !(init.strength > 0.0 && init.strength <= 1.0) {
                return Err(ModelError::invalid(
                    "strength",
                    format!("must be in (0, 1], got {}", init.strength),
                ));
            }
        }
        if self.max_sequence_length == Some(0) {
            return Err(ModelError::invalid(
                "max_sequence_length",
                "must be at least 1, got 0",
            ));
        }
        Ok(())
    }

    /// Stable Diffusion's image-to-image runs `int(steps * strength)` steps, as diffusers, and
    /// refuses zero.
    pub fn validate_sd_img2img_steps(&self) -> Result<()> {
        let Some(init) = &self.init_image else {
            return Ok(());
        };
        if img2img_steps(self.steps, init.strength) == 0 {
            return Err(ModelError::invalid(
                "strength",
                format!(
                    "strength {} with {} steps leaves no denoising step (int(steps * strength) = 0); raise steps or strength",
                    init.strength, self.steps
                ),
            ));
        }
        Ok(())
    }

    /// Whether an unconditional pass runs: guidance above 1 (as diffusers).
    pub fn uses_cfg(&self) -> bool {
        self.guidance_scale > 1.0
    }
}

/// Denoising steps image-to-image runs: diffusers' `min(int(steps * strength), steps)`.
pub fn img2img_steps(steps: usize, strength: f64) -> usize {
    ((steps as f64 * strength) as usize).min(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> GenerationRequest {
        GenerationRequest {
            prompt: "a cat".into(),
            negative_prompt: None,
            seed: 1,
            steps: 4,
            guidance_scale: 0.0,
            width: 64,
            height: 64,
            batch_size: 1,
            scheduler: None,
            init_image: None,
            max_sequence_length: None,
        }
    }

    #[test]
    fn rejects_out_of_bounds_values_naming_the_field() {
        let mut r = request();
        r.width = 60;
        let e = r.validate(8).unwrap_err().to_string();
        assert!(
            e.contains("width") && e.contains("multiple of 8") && e.contains("60"),
            "{e}"
        );
        let mut r = request();
        r.steps = 0;
        assert!(r.validate(8).unwrap_err().to_string().contains("steps"));
        let mut r = request();
        r.init_image = Some(InitImage {
            image: RgbImage::new(8, 8),
            strength: 1.5,
        });
        let e = r.validate(8).unwrap_err().to_string();
        assert!(e.contains("strength") && e.contains("1.5"), "{e}");
        r.init_image = Some(InitImage {
            image: RgbImage::new(8, 8),
            strength: 0.1,
        });
        assert!(r.validate(8).is_ok());
        assert!(r
            .validate_sd_img2img_steps()
            .unwrap_err()
            .to_string()
            .contains("no denoising step"));
        r.init_image = Some(InitImage {
            image: RgbImage::new(8, 8),
            strength: 0.0,
        });
        assert!(r.validate(8).is_err());
        assert!(request().validate(8).is_ok());
    }

    #[test]
    fn img2img_steps_truncate_like_python_int() {
        assert_eq!(img2img_steps(5, 0.6), 3);
        assert_eq!(img2img_steps(4, 1.0), 4);
        assert_eq!(img2img_steps(10, 0.05), 0);
    }
}
