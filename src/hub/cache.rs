//! Writing the hub cache layout. Every write is a rename of a finished temporary file, so a
//! reader (or a crash) never sees a half-written blob, link or ref.
use std::io::Write;
use std::path::{Path, PathBuf};

use super::error::HubError;

/// `<cache>/models--ORG--NAME`.
pub fn repo_dir(cache_dir: &Path, repo_id: &str) -> PathBuf {
    cache_dir.join(format!("models--{}", repo_id.replace('/', "--")))
}

/// `snapshots/<commit>/<path>` as a relative symlink to `blobs/<blob>` (`../../blobs/<blob>` for
/// a top-level file, one more `../` per folder), placed by renaming a fresh link over the path.
pub fn link_snapshot_file(
    repo_dir: &Path,
    commit: &str,
    path: &str,
    blob: &str,
) -> Result<PathBuf, HubError> {
    let target = repo_dir.join("snapshots").join(commit).join(path);
    let parent = target.parent().unwrap_or(repo_dir);
    std::fs::create_dir_all(parent).map_err(|e| HubError::io(parent, e))?;
    let depth = path.split('/').count();
    let relative = format!("{}blobs/{blob}", "../".repeat(depth + 1));
    let temporary = temporary_sibling(&target);
    let _ = std::fs::remove_file(&temporary);
    place_link(&relative, &repo_dir.join("blobs").join(blob), &temporary)?;
    std::fs::rename(&temporary, &target).map_err(|e| HubError::io(&target, e))?;
    Ok(target)
}

#[cfg(unix)]
fn place_link(relative: &str, _blob: &Path, at: &Path) -> Result<(), HubError> {
    std::os::unix::fs::symlink(relative, at).map_err(|e| HubError::io(at, e))
}

/// Without symlinks (as huggingface_hub on Windows without developer mode): a copy.
#[cfg(not(unix))]
fn place_link(_relative: &str, blob: &Path, at: &Path) -> Result<(), HubError> {
    std::fs::copy(blob, at)
        .map(|_| ())
        .map_err(|e| HubError::io(at, e))
}

/// `refs/<revision>` holding the commit (no newline, as huggingface_hub writes it).
pub fn write_ref(repo_dir: &Path, revision: &str, commit: &str) -> Result<(), HubError> {
    let path = repo_dir.join("refs").join(revision);
    let parent = path.parent().unwrap_or(repo_dir);
    std::fs::create_dir_all(parent).map_err(|e| HubError::io(parent, e))?;
    let temporary = temporary_sibling(&path);
    let mut file = std::fs::File::create(&temporary).map_err(|e| HubError::io(&temporary, e))?;
    file.write_all(commit.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| HubError::io(&temporary, e))?;
    std::fs::rename(&temporary, &path).map_err(|e| HubError::io(&path, e))
}

fn temporary_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn links_are_relative_and_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo_dir(dir.path(), "org/name");
        assert!(repo.ends_with("models--org--name"));
        std::fs::create_dir_all(repo.join("blobs")).unwrap();
        std::fs::write(repo.join("blobs/abc"), b"x").unwrap();
        let top = link_snapshot_file(&repo, "c1", "model_index.json", "abc").unwrap();
        assert_eq!(
            std::fs::read_link(&top).unwrap(),
            PathBuf::from("../../blobs/abc")
        );
        let nested = link_snapshot_file(&repo, "c1", "unet/a/config.json", "abc").unwrap();
        assert_eq!(
            std::fs::read_link(&nested).unwrap(),
            PathBuf::from("../../../../blobs/abc")
        );
        assert_eq!(std::fs::read(&nested).unwrap(), b"x");
        // Placing it again replaces the link.
        link_snapshot_file(&repo, "c1", "model_index.json", "abc").unwrap();
        write_ref(&repo, "refs/pr/1", "c1").unwrap();
        assert_eq!(
            std::fs::read_to_string(repo.join("refs/refs/pr/1")).unwrap(),
            "c1"
        );
    }
}
