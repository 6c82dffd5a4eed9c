//! What the local cache holds of a catalog model, for `imago models` and for deciding whether a
//! pull is needed.
use std::path::{Path, PathBuf};

use imago_models::loader::cached_snapshot;
use imago_models::specs::ModelSpec;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalStatus {
    /// Built into imago: nothing to download.
    BuiltIn,
    /// No snapshot of the spec's revision in the cache.
    Missing,
    /// A snapshot with `present` of the spec's `expected` files.
    Partial {
        snapshot: PathBuf,
        present: usize,
        expected: usize,
        bytes: u64,
    },
    /// Every file of the spec is in the snapshot.
    Cached { snapshot: PathBuf, bytes: u64 },
}

/// The cache's state for `spec` at its revision. A listed `.fp16.` file counts as present when its
/// full-precision twin is (what `imago pull` fetches when the repo lacks the variant).
pub fn local_status(spec: &ModelSpec, cache_dir: &Path) -> LocalStatus {
    if spec.builtin {
        return LocalStatus::BuiltIn;
    }
    let Ok(Some(snapshot)) = cached_snapshot(cache_dir, &spec.id, Some(spec.revision())) else {
        return LocalStatus::Missing;
    };
    let present = spec
        .files
        .iter()
        .filter(|f| {
            snapshot.join(f).is_file() || snapshot.join(f.replacen(".fp16.", ".", 1)).is_file()
        })
        .count();
    let bytes = tree_size(&snapshot);
    if present == spec.files.len() {
        LocalStatus::Cached { snapshot, bytes }
    } else {
        LocalStatus::Partial {
            snapshot,
            present,
            expected: spec.files.len(),
            bytes,
        }
    }
}

/// The bytes of the files a snapshot folder holds (following its links to the blobs).
fn tree_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| {
            let path = entry.path();
            match std::fs::metadata(&path) {
                Ok(m) if m.is_dir() => tree_size(&path),
                Ok(m) => m.len(),
                Err(_) => 0,
            }
        })
        .sum()
}
