//! Downloading one file into `blobs/`: into `<blob>.incomplete`, continued with an HTTP Range
//! request after a dropped connection (in this run, or a later one), checked against the size and
//! hash the hub reports, then renamed to `<blob>`.
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::ProgressBar;
use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::{Client, StatusCode};
use sha1::Sha1;
use sha2::{Digest as _, Sha256};

use super::api::{authorized, check_status, resolve_url, send};
use super::config::HubConfig;
use super::error::HubError;
use super::lock::BlobLock;
use super::plan::{Digest, RemoteFile};

/// Tries per file before a network failure is final; each continues where the last stopped.
const MAX_ATTEMPTS: u32 = 5;

pub struct Source<'a> {
    pub client: &'a Client,
    pub config: &'a HubConfig,
    pub repo_id: &'a str,
    pub commit: &'a str,
}

/// Makes `blobs/<hash>` hold `file`, downloading what is missing; returns its path.
pub async fn fetch_blob(
    source: &Source<'_>,
    file: &RemoteFile,
    blobs_dir: &Path,
    bar: &ProgressBar,
) -> Result<PathBuf, HubError> {
    let blob = blobs_dir.join(file.digest.hex());
    if std::fs::metadata(&blob).is_ok_and(|m| m.is_file() && m.len() == file.size) {
        return Ok(blob);
    }
    std::fs::create_dir_all(blobs_dir).map_err(|e| HubError::io(blobs_dir, e))?;
    let partial = blobs_dir.join(format!("{}.incomplete", file.digest.hex()));
    let lock = blobs_dir.join(format!("{}.lock", file.digest.hex()));
    let _lock = BlobLock::acquire(&lock, &partial).await?;
    // Another process may have finished it while we waited.
    if std::fs::metadata(&blob).is_ok_and(|m| m.is_file() && m.len() == file.size) {
        return Ok(blob);
    }
    let url = resolve_url(source.config, source.repo_id, source.commit, &file.path);
    let mut state = Partial::resume(&partial, file)?;
    bar.inc(state.len);
    let mut attempt = 0;
    while state.len < file.size {
        attempt += 1;
        let error = match download_range(source, &url, &partial, file, &mut state, bar).await {
            Ok(()) if state.len < file.size => invalid(
                &url,
                &format!("the body ended after {} of {} bytes", state.len, file.size),
            ),
            Ok(()) => break,
            Err(Failure::Final(e)) => return Err(e),
            Err(Failure::Retryable(e)) => e,
        };
        if attempt >= MAX_ATTEMPTS {
            return Err(error);
        }
        tracing::warn!(file = %file.path, attempt, error = %error, "download interrupted; continuing");
        tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
    }
    let verification = if state.len != file.size {
        Some(("size", file.size.to_string(), state.len.to_string()))
    } else {
        let actual = state.hasher.finish();
        (actual != file.digest.hex()).then(|| {
            let what = match file.digest {
                Digest::Sha256(_) => "sha256",
                Digest::GitSha1(_) => "git blob sha1",
            };
            (what, file.digest.hex().to_string(), actual)
        })
    };
    if let Some((what, expected, actual)) = verification {
        let _ = std::fs::remove_file(&partial);
        return Err(HubError::Verification {
            repo_id: source.repo_id.to_string(),
            path: file.path.clone(),
            what,
            expected,
            actual,
        });
    }
    std::fs::rename(&partial, &blob).map_err(|e| HubError::io(&blob, e))?;
    Ok(blob)
}

/// The `.incomplete` file: `len` bytes, all of them fed to `hasher`.
struct Partial {
    hasher: ContentHasher,
    len: u64,
}

impl Partial {
    /// Picks up what an earlier run left (hashing it), or starts empty.
    fn resume(path: &Path, file: &RemoteFile) -> Result<Self, HubError> {
        let mut hasher = ContentHasher::new(&file.digest, file.size);
        let existing = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if existing > file.size {
            truncate(path)?;
            return Ok(Self { hasher, len: 0 });
        }
        let len = hash_prefix(path, &mut hasher)?;
        Ok(Self { hasher, len })
    }

    fn append(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
    }
}

enum Failure {
    Final(HubError),
    /// A dropped connection or a server error: worth another Range request.
    Retryable(HubError),
}

async fn download_range(
    source: &Source<'_>,
    url: &str,
    partial: &Path,
    file: &RemoteFile,
    state: &mut Partial,
    bar: &ProgressBar,
) -> Result<(), Failure> {
    let offset = state.len;
    let mut request = authorized(source.config, source.client.get(url));
    if offset > 0 {
        request = request.header(RANGE, format!("bytes={offset}-"));
    }
    let response = send(request, url).await.map_err(Failure::Retryable)?;
    let status = response.status();
    if status.is_server_error() {
        return Err(match check_status(response, url, source.repo_id) {
            Err(e) => Failure::Retryable(e),
            Ok(_) => Failure::Retryable(invalid(url, "server error")),
        });
    }
    let mut response = check_status(response, url, source.repo_id).map_err(Failure::Final)?;
    let restart = offset > 0 && status != StatusCode::PARTIAL_CONTENT;
    if status == StatusCode::PARTIAL_CONTENT {
        let start = response
            .headers()
            .get(CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(content_range_start);
        if start != Some(offset) {
            return Err(Failure::Final(invalid(
                url,
                &format!("asked for bytes from {offset}, got Content-Range starting at {start:?}"),
            )));
        }
    }
    if restart {
        // The server ignored the Range and sends the whole file: start over.
        bar.set_position(bar.position().saturating_sub(state.len));
        *state = Partial {
            hasher: ContentHasher::new(&file.digest, file.size),
            len: 0,
        };
    }
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(!restart)
        .truncate(restart)
        .open(partial)
        .map_err(|e| Failure::Final(HubError::io(partial, e)))?;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                out.write_all(&chunk)
                    .map_err(|e| Failure::Final(HubError::io(partial, e)))?;
                state.append(&chunk);
                bar.inc(chunk.len() as u64);
            }
            Ok(None) => break,
            Err(source) => {
                let _ = out.flush();
                return Err(Failure::Retryable(HubError::Network {
                    url: url.to_string(),
                    source,
                }));
            }
        }
    }
    out.sync_all()
        .map_err(|e| Failure::Final(HubError::io(partial, e)))
}

/// `bytes 100-199/200` -> 100.
fn content_range_start(value: &str) -> Option<u64> {
    value
        .trim()
        .strip_prefix("bytes ")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

fn invalid(url: &str, message: &str) -> HubError {
    HubError::InvalidResponse {
        url: url.to_string(),
        message: message.to_string(),
    }
}

fn truncate(path: &Path) -> Result<(), HubError> {
    std::fs::File::create(path)
        .map(|_| ())
        .map_err(|e| HubError::io(path, e))
}

fn hash_prefix(path: &Path, hasher: &mut ContentHasher) -> Result<u64, HubError> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(HubError::io(path, e)),
    };
    let mut buffer = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        let n = file.read(&mut buffer).map_err(|e| HubError::io(path, e))?;
        if n == 0 {
            return Ok(total);
        }
        hasher.update(&buffer[..n]);
        total += n as u64;
    }
}

/// The hash the hub names a file by: sha256 of the content (LFS), or git's blob sha1 (the
/// content prefixed by `blob <size>\0`).
enum ContentHasher {
    Sha256(Sha256),
    GitSha1(Sha1),
}

impl ContentHasher {
    fn new(digest: &Digest, size: u64) -> Self {
        match digest {
            Digest::Sha256(_) => Self::Sha256(Sha256::new()),
            Digest::GitSha1(_) => {
                let mut sha1 = Sha1::new();
                sha1.update(format!("blob {size}\0").as_bytes());
                Self::GitSha1(sha1)
            }
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Self::Sha256(h) => h.update(bytes),
            Self::GitSha1(h) => h.update(bytes),
        }
    }

    fn finish(self) -> String {
        let bytes: Vec<u8> = match self {
            Self::Sha256(h) => h.finalize().to_vec(),
            Self::GitSha1(h) => h.finalize().to_vec(),
        };
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_match_git_and_sha256() {
        // `printf 'hello\n' | git hash-object --stdin`
        let mut git = ContentHasher::new(&Digest::GitSha1(String::new()), 6);
        git.update(b"hello\n");
        assert_eq!(git.finish(), "ce013625030ba8dba906f756967f9e9ca394464a");
        let mut sha = ContentHasher::new(&Digest::Sha256(String::new()), 6);
        sha.update(b"hello\n");
        assert_eq!(
            sha.finish(),
            "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
        );
        assert_eq!(content_range_start("bytes 100-199/200"), Some(100));
        assert_eq!(content_range_start("items 1-2"), None);
    }
}
