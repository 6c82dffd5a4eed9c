//! The model catalog: one `specs/*.toml` per served model, embedded in the binary.
//! Defaults, quality-to-steps tables and limits live there, not in code.
use std::sync::OnceLock;

use serde::Deserialize;

use crate::error::{ModelError, Result};

/// The pipeline families the engine implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
pub enum Family {
    #[serde(rename = "sd")]
    StableDiffusion,
    #[serde(rename = "sdxl")]
    StableDiffusionXl,
    #[serde(rename = "flux")]
    Flux,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StableDiffusion => "sd",
            Self::StableDiffusionXl => "sdxl",
            Self::Flux => "flux",
        }
    }
}

/// Generation defaults of a model.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    pub steps: usize,
    pub guidance: f64,
    pub width: usize,
    pub height: usize,
    /// FLUX: the T5 sequence length prompts are padded to (256 for schnell, 512 for dev).
    #[serde(default)]
    pub max_sequence_length: Option<usize>,
}

/// Steps for each OpenRouter `quality` level.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QualitySteps {
    pub auto: usize,
    pub low: usize,
    pub medium: usize,
    pub high: usize,
    pub xhigh: usize,
    pub max: usize,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub min_side: usize,
    pub max_side: usize,
    pub max_steps: usize,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// The Hugging Face repo id, or `imago/...` for a built-in model.
    pub id: String,
    pub name: String,
    pub description: String,
    pub family: Family,
    #[serde(default)]
    pub revision: Option<String>,
    #[serde(default)]
    pub builtin: bool,
    /// The repo files `imago pull` fetches (paths relative to the repo root), the loaded
    /// components only; empty for built-in models.
    #[serde(default)]
    pub files: Vec<String>,
    pub defaults: Defaults,
    pub quality: QualitySteps,
    pub limits: Limits,
}

const SPEC_FILES: &[(&str, &str)] = &[
    (
        "black-forest-labs--FLUX.1-dev.toml",
        include_str!("../specs/black-forest-labs--FLUX.1-dev.toml"),
    ),
    (
        "black-forest-labs--FLUX.1-schnell.toml",
        include_str!("../specs/black-forest-labs--FLUX.1-schnell.toml"),
    ),
    (
        "imago--tiny-flux.toml",
        include_str!("../specs/imago--tiny-flux.toml"),
    ),
    (
        "imago--tiny-sd.toml",
        include_str!("../specs/imago--tiny-sd.toml"),
    ),
    (
        "imago--tiny-sdxl.toml",
        include_str!("../specs/imago--tiny-sdxl.toml"),
    ),
    (
        "stabilityai--sd-turbo.toml",
        include_str!("../specs/stabilityai--sd-turbo.toml"),
    ),
    (
        "stabilityai--sdxl-turbo.toml",
        include_str!("../specs/stabilityai--sdxl-turbo.toml"),
    ),
    (
        "stabilityai--stable-diffusion-2-1-base.toml",
        include_str!("../specs/stabilityai--stable-diffusion-2-1-base.toml"),
    ),
    (
        "stabilityai--stable-diffusion-xl-base-1.0.toml",
        include_str!("../specs/stabilityai--stable-diffusion-xl-base-1.0.toml"),
    ),
    (
        "stable-diffusion-v1-5--stable-diffusion-v1-5.toml",
        include_str!("../specs/stable-diffusion-v1-5--stable-diffusion-v1-5.toml"),
    ),
];

fn parse_all() -> Result<Vec<ModelSpec>> {
    SPEC_FILES
        .iter()
        .map(|(file, text)| {
            toml::from_str::<ModelSpec>(text).map_err(|e| {
                ModelError::invalid_file(format!("models/specs/{file}"), e.to_string())
            })
        })
        .collect()
}

/// Every spec in the catalog. The files are compiled in and checked by a test, so a parse
/// failure here is a build defect.
pub fn all() -> &'static [ModelSpec] {
    static SPECS: OnceLock<Vec<ModelSpec>> = OnceLock::new();
    SPECS.get_or_init(|| parse_all().expect("embedded model specs parse (checked by tests)"))
}

impl ModelSpec {
    /// The revision to fetch: the spec's, else `main`.
    pub fn revision(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }
}

/// A repo file path that is safe to join under a snapshot folder: relative, `/`-separated, no
/// empty, `.` or `..` component, no backslash.
pub fn is_safe_repo_path(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && !path.contains('\\')
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

/// The spec of a repo id (case-insensitive, as the hub treats ids).
pub fn find(id: &str) -> Option<&'static ModelSpec> {
    all().iter().find(|s| s.id.eq_ignore_ascii_case(id))
}

/// The spec whose repo name matches a local folder's name (`./sd-turbo` is `stabilityai/sd-turbo`).
pub fn find_by_folder_name(folder_name: &str) -> Option<&'static ModelSpec> {
    all().iter().find(|s| {
        s.id.rsplit('/')
            .next()
            .is_some_and(|name| name.eq_ignore_ascii_case(folder_name))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spec_file_is_embedded_and_valid() {
        let specs = parse_all().unwrap();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("specs");
        let on_disk = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(
            on_disk,
            SPEC_FILES.len(),
            "a file in {dir:?} is not listed in SPEC_FILES"
        );
        for (spec, (file, _)) in specs.iter().zip(SPEC_FILES) {
            assert_eq!(*file, format!("{}.toml", spec.id.replace('/', "--")));
            assert!(spec.defaults.steps >= 1 && spec.defaults.steps <= spec.limits.max_steps);
            // FLUX packs 2x2 latent patches: sides are multiples of 16.
            let multiple = if spec.family == Family::Flux { 16 } else { 8 };
            assert!(
                spec.defaults.width % multiple == 0 && spec.defaults.height % multiple == 0,
                "{}",
                spec.id
            );
            assert_eq!(
                spec.family == Family::Flux,
                spec.defaults.max_sequence_length.is_some(),
                "{}: max_sequence_length is a FLUX default only",
                spec.id
            );
            assert!(
                spec.limits.min_side <= spec.defaults.width
                    && spec.defaults.width <= spec.limits.max_side
            );
        }
    }

    #[test]
    fn hub_specs_list_their_files_and_built_ins_none() {
        for spec in parse_all().unwrap() {
            if spec.builtin {
                assert!(
                    spec.files.is_empty() && spec.revision.is_none(),
                    "{}",
                    spec.id
                );
                continue;
            }
            assert!(spec.revision.is_some(), "{}: no revision", spec.id);
            assert!(
                spec.files.iter().any(|f| f == "model_index.json"),
                "{}: model_index.json is not fetched",
                spec.id
            );
            let mut seen = std::collections::BTreeSet::new();
            for file in &spec.files {
                assert!(is_safe_repo_path(file), "{}: {file}", spec.id);
                assert!(seen.insert(file), "{}: {file} twice", spec.id);
                assert!(
                    !file.ends_with(".bin") && !file.ends_with(".ckpt"),
                    "{}: {file} is a pickle",
                    spec.id
                );
            }
            // Every component the family loads has its config (or tokenizer files) and weights.
            let components: &[&str] = match spec.family {
                Family::StableDiffusion => &["unet", "vae", "text_encoder"],
                Family::StableDiffusionXl => &["unet", "vae", "text_encoder", "text_encoder_2"],
                Family::Flux => &["transformer", "vae", "text_encoder", "text_encoder_2"],
            };
            for component in components {
                let has = |suffix: &str| {
                    spec.files
                        .iter()
                        .any(|f| f.starts_with(&format!("{component}/")) && f.ends_with(suffix))
                };
                assert!(has("config.json"), "{}: {component} config", spec.id);
                assert!(
                    has(".safetensors") || has(".safetensors.index.json"),
                    "{}: {component} weights",
                    spec.id
                );
            }
            let fp16 = spec.files.iter().any(|f| f.contains(".fp16."));
            // The FLUX.1 repos ship no fp16 variants; the SD-family repos fetch them.
            assert_eq!(fp16, spec.family != Family::Flux, "{}", spec.id);
        }
        let schnell = find("black-forest-labs/FLUX.1-schnell").unwrap();
        let shards = |prefix: &str| {
            schnell
                .files
                .iter()
                .filter(|f| f.starts_with(prefix))
                .count()
        };
        assert_eq!(shards("transformer/diffusion_pytorch_model-0000"), 3);
        assert_eq!(shards("text_encoder_2/model-0000"), 2);
    }

    #[test]
    fn specs_are_strict() {
        let base = SPEC_FILES[5].1;
        let with_unknown = base.replacen("family =", "filez = [\"x\"]\nfamily =", 1);
        assert!(toml::from_str::<ModelSpec>(&with_unknown).is_err());
        assert!(toml::from_str::<ModelSpec>(base).is_ok());
        for bad in ["", "/a", "a/../b", "a//b", "./a", "a\\b"] {
            assert!(!is_safe_repo_path(bad), "{bad}");
        }
        assert!(is_safe_repo_path(
            "unet/diffusion_pytorch_model.fp16.safetensors"
        ));
    }

    #[test]
    fn finds_by_id_and_folder_name() {
        assert_eq!(find("StabilityAI/SD-Turbo").unwrap().defaults.steps, 1);
        assert_eq!(
            find_by_folder_name("sdxl-turbo").unwrap().family,
            Family::StableDiffusionXl
        );
        assert!(find("nobody/nothing").is_none());
        let dev = find("black-forest-labs/FLUX.1-dev").unwrap();
        assert_eq!(
            (
                dev.defaults.steps,
                dev.defaults.guidance,
                dev.defaults.max_sequence_length
            ),
            (28, 3.5, Some(512))
        );
        let schnell = find_by_folder_name("FLUX.1-schnell").unwrap();
        assert_eq!(
            (
                schnell.defaults.steps,
                schnell.defaults.guidance,
                schnell.defaults.max_sequence_length
            ),
            (4, 0.0, Some(256))
        );
    }
}
