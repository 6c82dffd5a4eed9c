//! `imago pull REPO`: a catalog model's files into the local Hugging Face cache.
use anyhow::Result;

use crate::cli::PullArgs;
use crate::hub::{pull, HubConfig, PullRequest};

pub fn run(args: PullArgs) -> Result<()> {
    let config = HubConfig {
        progress: !args.quiet,
        ..HubConfig::from_env(args.offline)
    };
    let request = PullRequest {
        repo_id: &args.repo,
        revision: args.revision.as_deref(),
        all: args.all,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let pulled = runtime.block_on(pull(&config, &request))?;
    match &pulled.commit {
        Some(commit) => println!(
            "{} at {commit}: {} files, {} downloaded, in {}",
            args.repo,
            pulled.files,
            human_bytes(pulled.downloaded_bytes),
            pulled.snapshot.display()
        ),
        None => println!(
            "offline: {} is in the cache ({} files, not checked against the hub) in {}",
            args.repo,
            pulled.files,
            pulled.snapshot.display()
        ),
    }
    Ok(())
}

/// `1536` -> `1.5 KiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
