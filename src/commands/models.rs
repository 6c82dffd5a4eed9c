//! `imago models`: the catalog, with what the local Hugging Face cache holds of each model.
use anyhow::Result;
use imago_models::loader::hub_cache_dir;
use imago_models::specs;

use crate::commands::pull::human_bytes;
use crate::hub::{local_status, LocalStatus};

pub fn run() -> Result<()> {
    let cache = hub_cache_dir();
    println!("hub cache: {}", cache.display());
    println!(
        "{:<46} {:<5} {:>5} {:>8} {:>9}  {:<13} {:>9}  SNAPSHOT",
        "ID", "KIND", "STEPS", "GUIDANCE", "SIZE", "LOCAL", "ON DISK"
    );
    for spec in specs::all() {
        let d = &spec.defaults;
        let (status, bytes, snapshot) = match local_status(spec, &cache) {
            LocalStatus::BuiltIn => ("built-in".to_string(), None, None),
            LocalStatus::Missing => ("not cached".to_string(), None, None),
            LocalStatus::Partial {
                snapshot,
                present,
                expected,
                bytes,
            } => (
                format!("partial {present}/{expected}"),
                Some(bytes),
                Some(snapshot),
            ),
            LocalStatus::Cached { snapshot, bytes } => {
                ("cached".to_string(), Some(bytes), Some(snapshot))
            }
        };
        println!(
            "{:<46} {:<5} {:>5} {:>8} {:>9}  {:<13} {:>9}  {}",
            spec.id,
            spec.family.as_str(),
            d.steps,
            d.guidance,
            format!("{}x{}", d.width, d.height),
            status,
            bytes.map(human_bytes).unwrap_or_else(|| "-".into()),
            snapshot
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "-".into()),
        );
    }
    Ok(())
}
