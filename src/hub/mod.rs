//! The online half of the Hugging Face hub client: `imago pull`, and the download-on-load of
//! `serve`/`generate --model REPO`. Files land in the standard hub cache layout, as huggingface_hub
//! writes it and as `imago_models::loader::cached_snapshot` reads it:
//! `models--ORG--NAME/blobs/<etag>`, `snapshots/<commit>/<path>` (relative symlinks to the blobs)
//! and `refs/<revision>` (the commit).
mod api;
mod cache;
mod config;
mod download;
mod error;
mod local;
mod lock;
mod plan;
mod pull;

pub use config::{is_truthy, HubConfig};
pub use error::HubError;
pub use local::{local_status, LocalStatus};
pub use pull::{ensure_available, ensure_available_blocking, pull, PullRequest, Pulled};
