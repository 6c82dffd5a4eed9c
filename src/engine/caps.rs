//! Capabilities of a loaded model, from its spec or, for other folders, from the model itself.
use std::time::{SystemTime, UNIX_EPOCH};

use imago_models::pipeline::{LoadedModel, MAX_BATCH};
use imago_models::schedulers::SchedulerChoice;
use imago_models::specs::QualitySteps;

use crate::domain::caps::ModelCaps;

/// Limits for models without a spec: generous sizes, diffusers-like step counts.
const UNSPECIFIED_MIN_SIDE: usize = 64;
const UNSPECIFIED_MAX_SIDE: usize = 2048;
const UNSPECIFIED_MAX_STEPS: usize = 150;

pub fn caps_for(id: &str, model: &LoadedModel, preview_decoder: bool) -> ModelCaps {
    let defaults = model.defaults();
    let multiple = model.size_multiple();
    let (name, description, min_side, max_side, max_steps, quality_steps) = match model.spec {
        Some(spec) => (
            spec.name.clone(),
            spec.description.clone(),
            spec.limits.min_side,
            spec.limits.max_side,
            spec.limits.max_steps,
            spec.quality.clone(),
        ),
        None => {
            let d = defaults.steps;
            (
                id.to_string(),
                format!(
                    "{} model loaded from {}",
                    model.family().as_str(),
                    model.location
                ),
                UNSPECIFIED_MIN_SIDE.max(multiple),
                UNSPECIFIED_MAX_SIDE,
                UNSPECIFIED_MAX_STEPS,
                QualitySteps {
                    auto: d,
                    low: (d / 2).max(1),
                    medium: d,
                    high: d * 3 / 2,
                    xhigh: d * 2,
                    max: (d * 3).min(UNSPECIFIED_MAX_STEPS),
                },
            )
        }
    };
    let schedulers: Vec<String> = if model.accepts_scheduler_override() {
        SchedulerChoice::NAMES
            .iter()
            .map(|(n, _, _)| n.to_string())
            .collect()
    } else {
        Vec::new()
    };
    ModelCaps {
        id: id.to_string(),
        name,
        description,
        family: model.family(),
        size_multiple: multiple,
        min_side,
        max_side,
        default_width: defaults.width,
        default_height: defaults.height,
        default_steps: defaults.steps,
        max_steps,
        default_guidance: defaults.guidance,
        quality_steps,
        schedulers,
        max_references: 1,
        max_n: MAX_BATCH,
        supports_transparent: false,
        preview_decoder,
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    }
}
