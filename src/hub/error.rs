//! Why a pull failed, each naming what to do about it.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(
        "offline (--offline or HF_HUB_OFFLINE=1): {model} is not in the Hugging Face cache at {} \
         and nothing is downloaded while offline; run `{pull_command}` where the hub is reachable \
         (with the same HF_HOME, or copy its {} folder into {}), or go online (unset \
         HF_HUB_OFFLINE, drop --offline), or pass a local diffusers folder to --model",
        repo_dir.display(),
        repo_dir.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
        repo_dir.parent().map(|p| p.display().to_string()).unwrap_or_default()
    )]
    Offline {
        model: String,
        repo_dir: PathBuf,
        pull_command: String,
    },

    #[error(
        "{repo_id} is not in imago's model catalog, so which of its files to fetch is unknown; \
         catalog models: {known}; or run `imago pull {repo_id} --all` to fetch every file of the \
         repo (pickle weights excepted)"
    )]
    NotInCatalog { repo_id: String, known: String },

    #[error(
        "{repo_id} is not in the Hugging Face cache at {} and not in imago's model catalog, so it \
         is not downloaded on load; run `imago pull {repo_id} --all` (every file of the repo), or \
         pass a local diffusers folder to --model",
        repo_dir.display()
    )]
    NotCachedNotInCatalog { repo_id: String, repo_dir: PathBuf },

    #[error(
        "{repo_id} is a built-in model (built into imago, no files): there is nothing to pull"
    )]
    BuiltIn { repo_id: String },

    #[error("{repo_id}@{revision} on {endpoint} lacks files the catalog lists: {}", missing.join(", "))]
    NotInRepo {
        repo_id: String,
        revision: String,
        endpoint: String,
        missing: Vec<String>,
    },

    #[error("{url}: HTTP {status}{hint}")]
    Status {
        url: String,
        status: u16,
        hint: String,
    },

    #[error("cannot reach {url}: {source}")]
    Network {
        url: String,
        #[source]
        source: reqwest::Error,
    },

    #[error("{url}: unexpected answer from the hub: {message}")]
    InvalidResponse { url: String, message: String },

    #[error(
        "{path} from {repo_id}: the download does not match what the hub reports ({what}: \
         expected {expected}, got {actual}); the file was discarded"
    )]
    Verification {
        repo_id: String,
        path: String,
        what: &'static str,
        expected: String,
        actual: String,
    },

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(transparent)]
    Model(#[from] imago_models::ModelError),
}

impl HubError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
