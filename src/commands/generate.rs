//! `imago generate`: one request on this machine, PNGs on disk.
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use imago_models::pipeline::{
    GenerationRequest, InitImage, LoadOptions, LoadedModel, StepObserver, StepProgress,
    DEFAULT_STRENGTH,
};
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::GenerateArgs;
use crate::output::write_pngs;

pub fn run(args: GenerateArgs) -> Result<()> {
    // Read the input image first: a bad path should fail before minutes of model loading.
    let init_image = match &args.image {
        Some(path) => Some(
            image::open(path)
                .with_context(|| format!("cannot read --image {}", path.display()))?
                .to_rgb8(),
        ),
        None => None,
    };
    // A hub repo missing from the cache is downloaded now (or is an offline error).
    let hub = crate::hub::HubConfig {
        progress: !args.quiet,
        ..crate::hub::HubConfig::from_env(args.offline)
    };
    crate::hub::ensure_available_blocking(&hub, &args.model)
        .with_context(|| format!("cannot load model {}", args.model))?;
    let load_started = Instant::now();
    let options = LoadOptions {
        low_memory: args.low_memory,
    };
    let model = args
        .device
        .open()
        .map_err(anyhow::Error::from)
        .and_then(|device| {
            Ok(LoadedModel::load_on(
                &args.model,
                &device,
                args.dtype,
                options,
            )?)
        })
        .with_context(|| format!("cannot load model {}", args.model))?;
    let load_time = load_started.elapsed();
    let defaults = model.defaults();
    let multiple = model.size_multiple();
    // Without an explicit size, image-to-image keeps the input's size rounded down to the latent grid, as diffusers.
    let (default_w, default_h) = match &init_image {
        Some(img) => (
            (img.width() as usize / multiple) * multiple,
            (img.height() as usize / multiple) * multiple,
        ),
        None => (defaults.width, defaults.height),
    };
    let seed = args.seed.unwrap_or_else(crate::domain::seed::random_seed);
    let request = GenerationRequest {
        prompt: args.prompt.clone(),
        negative_prompt: args.negative_prompt.clone(),
        seed,
        steps: args.steps.unwrap_or(defaults.steps),
        guidance_scale: args.guidance.unwrap_or(defaults.guidance),
        width: args.width.unwrap_or(default_w),
        height: args.height.unwrap_or(default_h),
        batch_size: args.num_images,
        scheduler: args.scheduler,
        init_image: init_image.map(|image| InitImage {
            image,
            strength: args.strength.unwrap_or(DEFAULT_STRENGTH),
        }),
        max_sequence_length: args.max_sequence_length,
    };
    request.validate(multiple)?;

    let cancelled = Arc::new(AtomicBool::new(false));
    {
        let cancelled = cancelled.clone();
        // Ctrl-C stops at the next step boundary; a second Ctrl-C is the default hard exit.
        let _ = ctrlc::set_handler(move || {
            if cancelled.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
        });
    }
    let mut observer = CliObserver::new(args.quiet, cancelled);
    let generation = model.generate(&request, &mut observer);
    observer.finish();
    let generation = generation?;
    if generation.prompt_truncated {
        eprintln!("warning: the prompt is longer than the text encoder's window and was truncated");
    }
    let paths = write_pngs(&args.out_dir, &generation.images)?;

    println!("seed: {}", generation.seed);
    for path in &paths {
        println!("wrote {}", path.display());
    }
    let t = generation.timings;
    println!(
        "model {} ({}x{}, {} steps, guidance {}) loaded in {} ms; text encoding {} ms, denoising {} ms, decoding {} ms",
        model.id,
        generation.width,
        generation.height,
        generation.steps_run,
        request.guidance_scale,
        load_time.as_millis(),
        t.text_encode.as_millis(),
        t.denoise.as_millis(),
        t.decode.as_millis()
    );
    Ok(())
}

struct CliObserver {
    bar: Option<ProgressBar>,
    cancelled: Arc<AtomicBool>,
}

impl CliObserver {
    fn new(quiet: bool, cancelled: Arc<AtomicBool>) -> Self {
        Self {
            bar: (!quiet).then(ProgressBar::hidden),
            cancelled,
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl StepObserver for CliObserver {
    fn on_step(&mut self, progress: &StepProgress<'_>) -> ControlFlow<()> {
        if let Some(bar) = &self.bar {
            if bar.is_hidden() && bar.length().is_none() {
                bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                bar.set_length(progress.total as u64);
                bar.set_style(
                    ProgressStyle::with_template(
                        "denoising {bar:30} {pos}/{len} steps [{elapsed_precise}, {per_sec}]",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
            }
            bar.set_position(progress.step as u64 + 1);
        }
        if self.cancelled.load(Ordering::SeqCst) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}
