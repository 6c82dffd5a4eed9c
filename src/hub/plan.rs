//! Which files to fetch and what each must be: a catalog file list (or the whole repo) matched
//! against the hub's list of the revision's files.
use std::collections::HashMap;

use imago_models::specs::is_safe_repo_path;

use super::api::{RepoInfo, Sibling};
use super::error::HubError;

/// Weight formats imago never loads (unpickling runs code): `--all` skips them.
const PICKLE_EXTENSIONS: [&str; 4] = [".bin", ".pt", ".pth", ".ckpt"];

/// The hash a file's content must have; its hex string is also the blob's name in the cache
/// (huggingface_hub names blobs by etag: the LFS sha256, else the git blob sha1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Digest {
    Sha256(String),
    GitSha1(String),
}

impl Digest {
    pub fn hex(&self) -> &str {
        match self {
            Digest::Sha256(h) | Digest::GitSha1(h) => h,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteFile {
    /// The path in the repo (and in the snapshot folder).
    pub path: String,
    pub size: u64,
    pub digest: Digest,
}

/// What to fetch of a repo.
pub enum Selection<'a> {
    /// The catalog's list. A `.fp16.` variant the repo lacks falls back to the full-precision file.
    Files(&'a [String]),
    /// Every file but pickle weights.
    All,
}

pub fn plan(
    info: &RepoInfo,
    selection: Selection<'_>,
    describe: impl Fn(Vec<String>) -> HubError,
    url: &str,
) -> Result<Vec<RemoteFile>, HubError> {
    let by_name: HashMap<&str, &Sibling> = info
        .siblings
        .iter()
        .map(|s| (s.rfilename.as_str(), s))
        .collect();
    let chosen: Vec<&Sibling> = match selection {
        Selection::All => info
            .siblings
            .iter()
            .filter(|s| {
                !PICKLE_EXTENSIONS
                    .iter()
                    .any(|ext| s.rfilename.ends_with(ext))
            })
            .collect(),
        Selection::Files(files) => {
            let mut chosen = Vec::new();
            let mut missing = Vec::new();
            for file in files {
                let found = by_name.get(file.as_str()).or_else(|| {
                    let full_precision = file.replacen(".fp16.", ".", 1);
                    (full_precision != *file)
                        .then(|| by_name.get(full_precision.as_str()))
                        .flatten()
                });
                match found {
                    Some(sibling) => chosen.push(*sibling),
                    None => missing.push(file.clone()),
                }
            }
            if !missing.is_empty() {
                return Err(describe(missing));
            }
            chosen
        }
    };
    chosen.into_iter().map(|s| remote_file(s, url)).collect()
}

fn remote_file(sibling: &Sibling, url: &str) -> Result<RemoteFile, HubError> {
    let invalid = |message: String| HubError::InvalidResponse {
        url: url.to_string(),
        message,
    };
    let path = &sibling.rfilename;
    if !is_safe_repo_path(path) {
        return Err(invalid(format!("unsafe file name {path:?}")));
    }
    let (size, digest) = match (&sibling.lfs, &sibling.blob_id, sibling.size) {
        (Some(lfs), _, _) => (lfs.size, Digest::Sha256(lfs.sha256.to_ascii_lowercase())),
        (None, Some(blob), Some(size)) => (size, Digest::GitSha1(blob.to_ascii_lowercase())),
        _ => {
            return Err(invalid(format!(
                "no size and hash for {path} (the answer lacks `lfs` or `blobId`/`size`)"
            )))
        }
    };
    let expected_len = match digest {
        Digest::Sha256(_) => 64,
        Digest::GitSha1(_) => 40,
    };
    if digest.hex().len() != expected_len || !digest.hex().bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(format!(
            "malformed hash {:?} for {path}",
            digest.hex()
        )));
    }
    Ok(RemoteFile {
        path: path.clone(),
        size,
        digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::api::LfsInfo;

    fn sibling(name: &str, lfs: bool) -> Sibling {
        Sibling {
            rfilename: name.into(),
            size: Some(3),
            blob_id: Some("a".repeat(40)),
            lfs: lfs.then(|| LfsInfo {
                sha256: "B".repeat(64),
                size: 7,
            }),
        }
    }

    #[test]
    fn catalog_files_match_with_fp16_fallback_and_missing_ones_are_named() {
        let info = RepoInfo {
            sha: "c".repeat(40),
            siblings: vec![
                sibling("model_index.json", false),
                sibling("unet/diffusion_pytorch_model.safetensors", true),
                sibling("unet/diffusion_pytorch_model.bin", true),
            ],
        };
        let files = vec![
            "model_index.json".to_string(),
            "unet/diffusion_pytorch_model.fp16.safetensors".to_string(),
        ];
        let planned = plan(&info, Selection::Files(&files), |_| unreachable!(), "u").unwrap();
        assert_eq!(planned[0].digest, Digest::GitSha1("a".repeat(40)));
        assert_eq!(planned[0].size, 3);
        assert_eq!(planned[1].path, "unet/diffusion_pytorch_model.safetensors");
        assert_eq!(planned[1].digest, Digest::Sha256("b".repeat(64)));
        assert_eq!(planned[1].size, 7);

        let all = plan(&info, Selection::All, |_| unreachable!(), "u").unwrap();
        assert_eq!(all.len(), 2, "pickles are skipped");

        let files = vec!["vae/config.json".to_string()];
        let err = plan(
            &info,
            Selection::Files(&files),
            |missing| HubError::InvalidResponse {
                url: String::new(),
                message: missing.join(","),
            },
            "u",
        )
        .unwrap_err();
        assert!(err.to_string().contains("vae/config.json"));

        let info = RepoInfo {
            sha: String::new(),
            siblings: vec![sibling("../escape", false)],
        };
        assert!(plan(&info, Selection::All, |_| unreachable!(), "u").is_err());
    }
}
