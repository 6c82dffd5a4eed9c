//! One downloader per blob across processes (replicas sharing an HF_HOME start together): a
//! `<blob>.lock` file created exclusively. A lock whose holder died is taken over once neither it
//! nor the blob's `.incomplete` file has changed for `STALE_AFTER`.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::error::HubError;

const STALE_AFTER: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(250);

pub struct BlobLock {
    path: PathBuf,
}

impl BlobLock {
    /// Waits for the lock of the blob whose in-progress download is `partial`.
    pub async fn acquire(lock: &Path, partial: &Path) -> Result<Self, HubError> {
        Self::acquire_with(lock, partial, STALE_AFTER).await
    }

    async fn acquire_with(
        lock: &Path,
        partial: &Path,
        stale_after: Duration,
    ) -> Result<Self, HubError> {
        let mut waited = false;
        loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(lock)
            {
                Ok(mut file) => {
                    let _ = write!(file, "{}", std::process::id());
                    return Ok(Self {
                        path: lock.to_path_buf(),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let quiet_for = [lock, partial]
                        .iter()
                        .filter_map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
                        .filter_map(|t| SystemTime::now().duration_since(t).ok())
                        .min()
                        .unwrap_or(Duration::ZERO);
                    if quiet_for >= stale_after {
                        tracing::warn!(lock = %lock.display(), "taking over a stale download lock");
                        let _ = std::fs::remove_file(lock);
                        continue;
                    }
                    if !waited {
                        tracing::info!(lock = %lock.display(), "another process is downloading this file; waiting");
                        waited = true;
                    }
                    tokio::time::sleep(POLL).await;
                }
                Err(e) => return Err(HubError::io(lock, e)),
            }
        }
    }
}

impl Drop for BlobLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_held_lock_waits_and_a_stale_one_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("b.lock");
        let partial = dir.path().join("b.incomplete");
        let held = BlobLock::acquire(&lock, &partial).await.unwrap();
        let waiting = tokio::time::timeout(
            Duration::from_millis(600),
            BlobLock::acquire(&lock, &partial),
        )
        .await;
        assert!(waiting.is_err(), "a held lock is waited for");
        drop(held);
        assert!(!lock.exists());
        let _again = BlobLock::acquire(&lock, &partial).await.unwrap();

        // A lock left by a dead process, untouched for longer than the limit.
        let stale = dir.path().join("s.lock");
        let file = std::fs::File::create(&stale).unwrap();
        file.set_modified(SystemTime::now() - Duration::from_secs(10))
            .unwrap();
        let taken = tokio::time::timeout(
            Duration::from_secs(2),
            BlobLock::acquire_with(&stale, &partial, Duration::from_secs(5)),
        )
        .await;
        assert!(taken.is_ok_and(|r| r.is_ok()));
    }
}
