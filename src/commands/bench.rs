//! `imago bench`: a real architecture with random weights, its stages timed on this machine.
use anyhow::{Context, Result};
use imago_models::bench::{BenchOptions, BenchReport};

use crate::cli::BenchArgs;

pub fn run(args: BenchArgs) -> Result<()> {
    let device = args.device.open().context("cannot open --device")?;
    let options = BenchOptions {
        architecture: args.family,
        config_dir: args.config_dir,
        width: args.tier,
        height: args.tier,
        dtype: args.dtype,
        iters: args.iters as usize,
        throughput: args.throughput,
        memory_limit: args.memory_limit,
    };
    let report = imago_models::bench::run(&options, &device)
        .with_context(|| format!("cannot benchmark {}", args.family))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", table(&report, options.iters));
    }
    Ok(())
}

/// The report for people: one stage a line.
fn table(report: &BenchReport, iters: usize) -> String {
    let mut out = format!(
        "{} {}x{} {} on {} (median of {iters} after a warm-up)\n",
        report.family, report.width, report.height, report.dtype, report.device
    );
    let rows = [
        ("text encode", report.text_encode_ms),
        ("denoise step", report.denoise_step_ms),
        ("VAE decode", report.vae_decode_ms),
    ];
    for (stage, ms) in rows {
        out.push_str(&format!("  {stage:<14}{ms:>12.1} ms\n"));
    }
    if let Some(mb) = report.peak_rss_mb {
        out.push_str(&format!("  {:<14}{mb:>12.0} MiB\n", "peak RSS"));
    }
    for (batch, rate) in report.images_per_s.iter().flatten() {
        out.push_str(&format!(
            "  {:<14}{rate:>12.4} images/s\n",
            format!("batch {batch}")
        ));
    }
    out
}
