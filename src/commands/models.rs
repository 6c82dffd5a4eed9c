//! `imago models`: the catalog.
use anyhow::Result;
use imago_models::specs;

pub fn run() -> Result<()> {
    println!(
        "{:<46} {:<5} {:>5} {:>8} {:>9}  NAME",
        "ID", "KIND", "STEPS", "GUIDANCE", "SIZE"
    );
    for spec in specs::all() {
        let d = &spec.defaults;
        println!(
            "{:<46} {:<5} {:>5} {:>8} {:>9}  {}",
            spec.id,
            spec.family.as_str(),
            d.steps,
            d.guidance,
            format!("{}x{}", d.width, d.height),
            spec.name
        );
    }
    Ok(())
}
