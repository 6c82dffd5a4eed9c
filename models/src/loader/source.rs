//! What a user may name as a model: a built-in tiny model, a local diffusers folder, or a Hugging
//! Face repo id (optionally `@revision`).
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::hf_cache::is_valid_repo_id;
use crate::error::{ModelError, Result};

/// Tiny random-weight pipelines built in memory (no files), for tests and smoke runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BuiltInModel {
    /// A Stable Diffusion 1.x-shaped pipeline: `imago/tiny-sd`.
    TinySd,
    /// A Stable Diffusion XL-shaped pipeline: `imago/tiny-sdxl`.
    TinySdxl,
    /// A FLUX.1-schnell-shaped pipeline: `imago/tiny-flux`.
    TinyFlux,
}

impl BuiltInModel {
    pub const ALL: [BuiltInModel; 3] = [
        BuiltInModel::TinySd,
        BuiltInModel::TinySdxl,
        BuiltInModel::TinyFlux,
    ];

    pub fn id(self) -> &'static str {
        match self {
            BuiltInModel::TinySd => "imago/tiny-sd",
            BuiltInModel::TinySdxl => "imago/tiny-sdxl",
            BuiltInModel::TinyFlux => "imago/tiny-flux",
        }
    }
}

impl fmt::Display for BuiltInModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

impl FromStr for BuiltInModel {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|m| m.id() == s).ok_or_else(|| {
            ModelError::invalid(
                "model",
                format!(
                    "`{s}` is not a built-in model (built-in: {})",
                    builtin_ids()
                ),
            )
        })
    }
}

fn builtin_ids() -> String {
    BuiltInModel::ALL.map(BuiltInModel::id).join(", ")
}

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A local diffusers folder (with `model_index.json`).
    Folder(PathBuf),
    /// A Hugging Face repo, resolved through the local hub cache.
    HubRepo {
        repo_id: String,
        revision: Option<String>,
    },
    BuiltIn(BuiltInModel),
}

impl ModelSource {
    /// Interprets a user's model argument, in this order: a built-in id; an existing path (`~`
    /// expanded); `org/name` or `org/name@revision` -> a Hub repo; anything that looks like a
    /// path (starts with `/`, `.` or `~`, or has more than one `/`) but does not exist -> a
    /// missing-file error naming it.
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        if s.is_empty() {
            return Err(ModelError::invalid("model", "empty model name"));
        }
        if let Ok(builtin) = s.parse::<BuiltInModel>() {
            return Ok(ModelSource::BuiltIn(builtin));
        }
        let path = expand_tilde(s);
        if path.exists() {
            return Ok(ModelSource::Folder(path));
        }
        if let Some(source) = parse_hub_repo(s)? {
            return Ok(source);
        }
        let looks_like_path = s.starts_with(['/', '.', '~'])
            || s.matches('/').count() > 1
            || s.contains('\\')
            || Path::new(s).is_absolute();
        if looks_like_path {
            return Err(ModelError::MissingFile {
                what: "model folder".into(),
                path,
            });
        }
        Err(ModelError::invalid(
            "model",
            format!(
                "`{s}` is neither a built-in model ({}), an existing folder, nor a Hugging Face \
                 repo id (org/name or org/name@revision)",
                builtin_ids()
            ),
        ))
    }
}

/// `org/name[@revision]`; `Ok(None)` when `s` does not have that shape.
fn parse_hub_repo(s: &str) -> Result<Option<ModelSource>> {
    let (repo_id, revision) = match s.split_once('@') {
        Some((repo, rev)) => (repo, Some(rev)),
        None => (s, None),
    };
    if repo_id.matches('/').count() != 1 || !is_valid_repo_id(repo_id) {
        return Ok(None);
    }
    if let Ok(builtin) = repo_id.parse::<BuiltInModel>() {
        return Err(ModelError::invalid(
            "model",
            format!("built-in model {builtin} has no revisions"),
        ));
    }
    if let Some(rev) = revision {
        let valid = !rev.is_empty()
            && !rev.starts_with('/')
            && rev
                .split('/')
                .all(|p| !p.is_empty() && p != "." && p != "..")
            && !rev.contains(['\\', '@']);
        if !valid {
            return Err(ModelError::invalid(
                "model",
                format!("`{s}`: `{rev}` is not a valid revision (a branch, tag or commit)"),
            ));
        }
    }
    Ok(Some(ModelSource::HubRepo {
        repo_id: repo_id.to_string(),
        revision: revision.map(str::to_string),
    }))
}

fn expand_tilde(s: &str) -> PathBuf {
    let home = || std::env::var_os("HOME").or_else(|| std::env::var_os("USERPROFILE"));
    match s.strip_prefix('~') {
        Some("") => home()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(s)),
        Some(rest) if rest.starts_with(['/', '\\']) => match home() {
            Some(h) => PathBuf::from(h).join(&rest[1..]),
            None => PathBuf::from(s),
        },
        _ => PathBuf::from(s),
    }
}

impl FromStr for ModelSource {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl fmt::Display for ModelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelSource::Folder(path) => write!(f, "{}", path.display()),
            ModelSource::HubRepo {
                repo_id,
                revision: Some(rev),
            } => write!(f, "{repo_id}@{rev}"),
            ModelSource::HubRepo { repo_id, .. } => f.write_str(repo_id),
            ModelSource::BuiltIn(model) => write!(f, "{model}"),
        }
    }
}
