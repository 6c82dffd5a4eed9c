//! Shared helpers for the integration tests: parity cases and tensor/pixel comparisons.
#![allow(dead_code)]
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::Deserialize;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixtures() -> PathBuf {
    repo_root().join("tests/fixtures")
}

/// A parity case: `tests/fixtures/parity/<name>/case.json` or `tests/fixtures/extra/<name>/case.json`.
#[derive(Debug, Deserialize)]
pub struct Case {
    #[serde(skip)]
    pub dir: PathBuf,
    #[serde(default)]
    pub task: Option<String>,
    pub seed: u64,
    pub prompt: String,
    #[serde(default)]
    pub negative_prompt: Option<String>,
    pub steps: usize,
    pub guidance_scale: f64,
    #[serde(default)]
    pub scheduler: Option<String>,
    pub width: usize,
    pub height: usize,
    pub n: usize,
    #[serde(default)]
    pub strength: Option<f64>,
    #[serde(default)]
    pub input_image: Option<String>,
    /// Model folder relative to the case folder (extra cases); `model` otherwise.
    #[serde(default)]
    pub model: Option<String>,
    /// Whether the prompt is longer than a tokenizer's window (default: the case name says
    /// "truncated"); FLUX cases whose tiny T5 vocabulary overflows say so explicitly.
    #[serde(default)]
    pub prompt_truncated: Option<bool>,
    /// FLUX: T5 tokens the prompt is padded to.
    #[serde(default)]
    pub max_sequence_length: Option<usize>,
    pub atol_latents: f64,
    pub atol_image: f64,
}

impl Case {
    pub fn load(set: &str, name: &str) -> Case {
        let dir = fixtures().join(set).join(name);
        let text = std::fs::read_to_string(dir.join("case.json"))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let mut case: Case = serde_json::from_str(&text).unwrap();
        case.dir = dir;
        case
    }

    pub fn model_dir(&self) -> PathBuf {
        self.dir.join(self.model.as_deref().unwrap_or("model"))
    }

    pub fn input_image_path(&self) -> Option<PathBuf> {
        self.input_image.as_ref().map(|p| self.dir.join(p))
    }

    pub fn expected(&self) -> HashMap<String, Tensor> {
        candle_core::safetensors::load(self.dir.join("expected.safetensors"), &Device::Cpu).unwrap()
    }

    pub fn expected_png(&self, index: usize) -> image::RgbImage {
        image::open(self.dir.join(format!("expected-{index}.png")))
            .unwrap()
            .to_rgb8()
    }
}

/// Largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = a
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let b = b
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn assert_close(what: &str, actual: &Tensor, expected: &Tensor, atol: f64) {
    let diff = max_abs_diff(actual, expected);
    if std::env::var_os("IMAGO_TEST_VERBOSE").is_some() {
        eprintln!("{what}: {diff:e}");
    }
    assert!(
        diff as f64 <= atol,
        "{what}: max abs diff {diff:e} > {atol:e}"
    );
}

/// Largest per-channel difference between two 8-bit images of the same size.
pub fn max_pixel_diff(a: &image::RgbImage, b: &image::RgbImage) -> u8 {
    assert_eq!(a.dimensions(), b.dimensions(), "image size mismatch");
    a.as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0)
}

pub fn assert_png_close(path_or_what: &Path, actual: &image::RgbImage, expected: &image::RgbImage) {
    let diff = max_pixel_diff(actual, expected);
    assert!(
        diff <= 2,
        "{}: max pixel difference {diff}/255 > 2/255",
        path_or_what.display()
    );
}
