//! The offline half of the Hugging Face hub client: where the cache is and which snapshot folder a
//! repo revision resolves to. The layout (huggingface_hub's "manage-cache" guide) is
//! `<cache>/models--ORG--NAME/{refs/<revision> (a commit hash), snapshots/<hash>/..., blobs/}`,
//! the snapshot files being symlinks into `blobs/`.
use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};

/// `$HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface` (as huggingface_hub).
pub fn hf_home() -> PathBuf {
    hf_home_with(&env_var)
}

/// `$HF_HUB_CACHE`, else the legacy `$HUGGINGFACE_HUB_CACHE`, else `hf_home()/hub`.
pub fn hub_cache_dir() -> PathBuf {
    hub_cache_dir_with(&env_var)
}

/// An unset or empty variable counts as absent.
fn env_var(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

fn home_dir(env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    env("HOME")
        .or_else(|| env("USERPROFILE"))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Expands a leading `~` as huggingface_hub does with `os.path.expanduser`.
fn expand_home(path: &str, env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    match path.strip_prefix('~') {
        Some("") => home_dir(env),
        Some(rest) if rest.starts_with('/') || rest.starts_with('\\') => {
            home_dir(env).join(&rest[1..])
        }
        _ => PathBuf::from(path),
    }
}

fn hf_home_with(env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    if let Some(home) = env("HF_HOME") {
        return expand_home(&home, env);
    }
    let cache = env("XDG_CACHE_HOME")
        .map(|p| expand_home(&p, env))
        .unwrap_or_else(|| home_dir(env).join(".cache"));
    cache.join("huggingface")
}

fn hub_cache_dir_with(env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    env("HF_HUB_CACHE")
        .or_else(|| env("HUGGINGFACE_HUB_CACHE"))
        .map(|p| expand_home(&p, env))
        .unwrap_or_else(|| hf_home_with(env).join("hub"))
}

/// The cached snapshot folder of `repo_id` at `revision` (default `main`), or `None` when the
/// cache does not hold it: no repo folder, no ref of that name (and the revision is not itself a
/// commit hash), or no snapshot folder for the commit the ref names.
pub fn cached_snapshot(
    cache_dir: &Path,
    repo_id: &str,
    revision: Option<&str>,
) -> Result<Option<PathBuf>> {
    check_repo_id(repo_id)?;
    let revision = revision.unwrap_or("main");
    check_revision(revision)?;
    let repo_dir = cache_dir.join(format!("models--{}", repo_id.replace('/', "--")));
    if !repo_dir.is_dir() {
        return Ok(None);
    }
    // A ref file holds the commit hash of a branch or tag; PR refs live at refs/refs/pr/N.
    let ref_path = repo_dir.join("refs").join(revision);
    let commit = if ref_path.is_file() {
        let text = std::fs::read_to_string(&ref_path).map_err(|e| ModelError::io(&ref_path, e))?;
        let hash = text.trim().to_string();
        if !is_commit_hash(&hash) {
            return Err(ModelError::invalid_file(
                &ref_path,
                format!("expected a 40-character commit hash, found {hash:?}"),
            ));
        }
        hash
    } else if is_commit_hash(revision) {
        revision.to_string()
    } else {
        tracing::debug!(repo_id, revision, "no such ref in the hub cache");
        return Ok(None);
    };
    let snapshot = repo_dir.join("snapshots").join(&commit);
    if snapshot.is_dir() {
        Ok(Some(snapshot))
    } else {
        tracing::debug!(
            repo_id,
            revision,
            commit,
            "ref points to a snapshot not in the cache"
        );
        Ok(None)
    }
}

fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Hub repo ids: `name` or `org/name`, each part of ASCII letters, digits, `-`, `_`, `.`, not
/// starting or ending with `-`/`.`, and no `--` or `..` (the hub's own rules).
pub fn is_valid_repo_id(repo_id: &str) -> bool {
    let parts: Vec<&str> = repo_id.split('/').collect();
    parts.len() <= 2
        && repo_id.len() <= 96
        && !repo_id.contains("--")
        && !repo_id.contains("..")
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                && !p.starts_with(['-', '.'])
                && !p.ends_with(['-', '.'])
        })
}

fn check_repo_id(repo_id: &str) -> Result<()> {
    if is_valid_repo_id(repo_id) {
        Ok(())
    } else {
        Err(ModelError::invalid(
            "model",
            format!("`{repo_id}` is not a Hugging Face repo id (expected org/name)"),
        ))
    }
}

/// Revisions are branch, tag or PR ref names (`refs/pr/1`) or commit hashes; they become path
/// components, so nothing that could leave the repo folder is accepted.
fn check_revision(revision: &str) -> Result<()> {
    let ok = !revision.is_empty()
        && !revision.starts_with('/')
        && revision
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
        && !revision.contains('\\');
    if ok {
        Ok(())
    } else {
        Err(ModelError::invalid(
            "revision",
            format!("`{revision}` is not a valid branch, tag or commit"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| map.get(k).cloned()
    }

    #[test]
    fn hf_home_precedence() {
        let env = env_of(&[("HOME", "/home/u")]);
        assert_eq!(
            hf_home_with(&env),
            PathBuf::from("/home/u/.cache/huggingface")
        );
        let env = env_of(&[("HOME", "/home/u"), ("XDG_CACHE_HOME", "/xdg")]);
        assert_eq!(hf_home_with(&env), PathBuf::from("/xdg/huggingface"));
        let env = env_of(&[
            ("HOME", "/home/u"),
            ("XDG_CACHE_HOME", "/xdg"),
            ("HF_HOME", "~/hf"),
        ]);
        assert_eq!(hf_home_with(&env), PathBuf::from("/home/u/hf"));
    }

    #[test]
    fn hub_cache_precedence() {
        let env = env_of(&[("HOME", "/h"), ("HF_HOME", "/data/hf")]);
        assert_eq!(hub_cache_dir_with(&env), PathBuf::from("/data/hf/hub"));
        let env = env_of(&[
            ("HF_HOME", "/data/hf"),
            ("HUGGINGFACE_HUB_CACHE", "/legacy"),
        ]);
        assert_eq!(hub_cache_dir_with(&env), PathBuf::from("/legacy"));
        let env = env_of(&[
            ("HF_HOME", "/data/hf"),
            ("HUGGINGFACE_HUB_CACHE", "/legacy"),
            ("HF_HUB_CACHE", "/new"),
        ]);
        assert_eq!(hub_cache_dir_with(&env), PathBuf::from("/new"));
    }

    #[test]
    fn repo_ids_and_revisions() {
        for ok in ["stabilityai/sdxl-turbo", "gpt2", "a.b/c_d-1"] {
            assert!(is_valid_repo_id(ok), "{ok}");
        }
        for bad in [
            "", "a/b/c", "a--b/c", "a/..", "/a", "a/", "a b/c", "-a/b", "a/b.",
        ] {
            assert!(!is_valid_repo_id(bad), "{bad}");
        }
        assert!(check_revision("refs/pr/1").is_ok());
        for bad in ["", "../x", "a/../b", "/main", "a\\b"] {
            assert!(check_revision(bad).is_err(), "{bad}");
        }
    }
}
