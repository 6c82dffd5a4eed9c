//! `imago pull` and the download-on-load of `serve`/`generate`: resolve the revision to a commit,
//! fetch the files the snapshot lacks, link them, then point the ref at the commit.
use std::path::PathBuf;

use imago_models::loader::{cached_snapshot, is_valid_repo_id, ModelSource};
use imago_models::specs;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::api::{client, repo_info};
use super::cache::{link_snapshot_file, repo_dir, write_ref};
use super::config::HubConfig;
use super::download::{fetch_blob, Source};
use super::error::HubError;
use super::local::{local_status, LocalStatus};
use super::plan::{plan, Selection};

#[derive(Clone, Debug)]
pub struct PullRequest<'a> {
    pub repo_id: &'a str,
    /// A branch, tag or commit; default: the catalog's revision, else `main`.
    pub revision: Option<&'a str>,
    /// Every file of the repo (pickles excepted) instead of the catalog's list.
    pub all: bool,
}

#[derive(Clone, Debug)]
pub struct Pulled {
    pub snapshot: PathBuf,
    /// `None` when offline (the cache was not checked against the hub).
    pub commit: Option<String>,
    pub files: usize,
    pub downloaded_bytes: u64,
}

pub async fn pull(config: &HubConfig, request: &PullRequest<'_>) -> Result<Pulled, HubError> {
    let repo_id = request.repo_id;
    if repo_id
        .parse::<imago_models::loader::BuiltInModel>()
        .is_ok()
    {
        return Err(HubError::BuiltIn {
            repo_id: repo_id.into(),
        });
    }
    if !is_valid_repo_id(repo_id) || !repo_id.contains('/') {
        return Err(imago_models::ModelError::invalid(
            "repo",
            format!("`{repo_id}` is not a Hugging Face repo id (expected org/name)"),
        )
        .into());
    }
    let spec = specs::find(repo_id);
    let repo_id = spec.map(|s| s.id.as_str()).unwrap_or(repo_id);
    let selection = match (request.all, spec) {
        (true, _) => Selection::All,
        (false, Some(spec)) => Selection::Files(&spec.files),
        (false, None) => {
            return Err(HubError::NotInCatalog {
                repo_id: repo_id.into(),
                known: known_ids(),
            })
        }
    };
    let revision = request
        .revision
        .or(spec.map(|s| s.revision()))
        .unwrap_or("main");
    let repo_dir = repo_dir(&config.cache_dir, repo_id);
    if config.offline {
        return offline_answer(config, repo_id, revision, spec.filter(|_| !request.all));
    }

    let client = client()?;
    let info = repo_info(&client, config, repo_id, revision).await?;
    let api_url = format!(
        "{}/api/models/{repo_id}/revision/{revision}",
        config.endpoint
    );
    let commit = info.sha.to_ascii_lowercase();
    if commit.len() != 40 || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(HubError::InvalidResponse {
            url: api_url,
            message: format!("`sha` {commit:?} is not a commit hash"),
        });
    }
    let files = plan(
        &info,
        selection,
        |missing| HubError::NotInRepo {
            repo_id: repo_id.into(),
            revision: revision.into(),
            endpoint: config.endpoint.clone(),
            missing,
        },
        &api_url,
    )?;
    let snapshot = repo_dir.join("snapshots").join(&commit);
    let blobs_dir = repo_dir.join("blobs");
    // Files already linked in this commit's snapshot are done (a snapshot path's content is fixed).
    let todo: Vec<_> = files
        .iter()
        .filter(|f| !std::fs::metadata(snapshot.join(&f.path)).is_ok_and(|m| m.len() == f.size))
        .collect();
    let total: u64 = todo.iter().map(|f| f.size).sum();
    let bar = progress_bar(config.progress, total);
    let source = Source {
        client: &client,
        config,
        repo_id,
        commit: &commit,
    };
    for file in &todo {
        bar.set_message(file.path.clone());
        fetch_blob(&source, file, &blobs_dir, &bar).await?;
        link_snapshot_file(&repo_dir, &commit, &file.path, file.digest.hex())?;
    }
    bar.finish_and_clear();
    if revision != commit {
        write_ref(&repo_dir, revision, &commit)?;
    }
    Ok(Pulled {
        snapshot,
        commit: Some(commit),
        files: files.len(),
        downloaded_bytes: total,
    })
}

/// Offline, a pull succeeds only when the cache already holds the model.
fn offline_answer(
    config: &HubConfig,
    repo_id: &str,
    revision: &str,
    spec: Option<&specs::ModelSpec>,
) -> Result<Pulled, HubError> {
    let complete = match spec {
        Some(spec) if spec.revision() == revision => match local_status(spec, &config.cache_dir) {
            LocalStatus::Cached { snapshot, .. } => Some((snapshot, spec.files.len())),
            _ => None,
        },
        _ => None,
    };
    match complete {
        Some((snapshot, files)) => Ok(Pulled {
            snapshot,
            commit: None,
            files,
            downloaded_bytes: 0,
        }),
        None => Err(offline_error(config, repo_id, Some(revision))),
    }
}

fn offline_error(config: &HubConfig, repo_id: &str, revision: Option<&str>) -> HubError {
    let revision = revision.filter(|r| *r != "main");
    let model = match revision {
        Some(r) => format!("{repo_id}@{r}"),
        None => repo_id.to_string(),
    };
    let mut pull_command = format!("imago pull {repo_id}");
    if let Some(r) = revision {
        pull_command.push_str(&format!(" --revision {r}"));
    }
    if specs::find(repo_id).is_none() {
        pull_command.push_str(" --all");
    }
    HubError::Offline {
        model,
        repo_dir: repo_dir(&config.cache_dir, repo_id),
        pull_command,
    }
}

fn known_ids() -> String {
    specs::all()
        .iter()
        .filter(|s| !s.builtin)
        .map(|s| s.id.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn progress_bar(enabled: bool, total: u64) -> ProgressBar {
    if !enabled || total == 0 {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {bytes}/{total_bytes} [{elapsed_precise}, {bytes_per_sec}, eta {eta}] {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Before loading `source` (a `--model` value): a hub repo missing from the cache is pulled when
/// online (the catalog's files), and is a clear error offline. Folders and built-ins pass.
pub async fn ensure_available(config: &HubConfig, source: &str) -> Result<(), HubError> {
    let ModelSource::HubRepo { repo_id, revision } = ModelSource::parse(source)? else {
        return Ok(());
    };
    if cached_snapshot(&config.cache_dir, &repo_id, revision.as_deref())?.is_some() {
        // A catalog model's snapshot may lack files (an interrupted pull of a newer commit
        // leaves the ref alone; files deleted by hand): online, fetch what is missing.
        let partial = specs::find(&repo_id).is_some_and(|spec| {
            revision.as_deref().is_none_or(|r| r == spec.revision())
                && matches!(
                    local_status(spec, &config.cache_dir),
                    LocalStatus::Partial { .. }
                )
        });
        if !partial || config.offline {
            return Ok(());
        }
    }
    if config.offline {
        return Err(offline_error(config, &repo_id, revision.as_deref()));
    }
    if specs::find(&repo_id).is_none() {
        return Err(HubError::NotCachedNotInCatalog {
            repo_dir: repo_dir(&config.cache_dir, &repo_id),
            repo_id,
        });
    }
    eprintln!("{repo_id} is not in the Hugging Face cache: downloading it");
    let pulled = pull(
        config,
        &PullRequest {
            repo_id: &repo_id,
            revision: revision.as_deref(),
            all: false,
        },
    )
    .await?;
    tracing::info!(repo_id, snapshot = %pulled.snapshot.display(), "downloaded");
    Ok(())
}

/// [`ensure_available`] from synchronous code (`imago generate`).
pub fn ensure_available_blocking(config: &HubConfig, source: &str) -> Result<(), HubError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| HubError::io("(tokio runtime)", e))?;
    runtime.block_on(ensure_available(config, source))
}
