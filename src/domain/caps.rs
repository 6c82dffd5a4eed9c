//! What a served model can do: the facts validation and the model listings are computed from.
use imago_models::specs::{Family, QualitySteps};

/// Capabilities of one served model, built from its spec and the loaded pipeline.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelCaps {
    /// The id clients send as `model`.
    pub id: String,
    pub name: String,
    pub description: String,
    pub family: Family,
    /// Width and height are rounded to multiples of this (8 for SD/SDXL latents, 16 for FLUX).
    pub size_multiple: usize,
    pub min_side: usize,
    pub max_side: usize,
    pub default_width: usize,
    pub default_height: usize,
    pub default_steps: usize,
    pub max_steps: usize,
    pub default_guidance: f64,
    /// Steps for each `quality` level.
    pub quality_steps: QualitySteps,
    /// Names accepted by `provider.options.local.scheduler`.
    pub schedulers: Vec<String>,
    /// Input images one request may carry (1 for the local families).
    pub max_references: usize,
    /// Largest `n`.
    pub max_n: usize,
    /// Whether the model can produce an alpha channel (`background: "transparent"`).
    pub supports_transparent: bool,
    /// Whether a tiny autoencoder is loaded for previews (`preview: "taesd"`).
    pub preview_decoder: bool,
    /// Unix seconds, for the `created` field of model listings.
    pub created: u64,
}
