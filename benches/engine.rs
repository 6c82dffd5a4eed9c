//! `cargo bench`: the engine's stages per device, family and resolution tier, plus the preview
//! decoders, image encoding, engine batching, the fused GroupNorm kernel and the f32 3x3
//! convolution. Group names carry
//! the device, the family and the tier: `cpu/sd2/512/unet_step`, `cpu/preview/512/taesd`.
//!
//! What runs is chosen by environment variables (comma-separated lists):
//! - `IMAGO_BENCH_FAMILIES`: `tiny` (the built-in tiny models: real architectures at toy width,
//!   seconds per run), `sd1`, `sd2`, `sdxl`, `flux` (the real architectures with random weights, as
//!   `imago bench` builds them; a configuration that does not fit in memory is skipped with a
//!   note). Default `tiny`: a real-size UNet step takes seconds and a VAE decode tens of seconds on
//!   a small CPU, and criterion runs each at least 11 times.
//! - `IMAGO_BENCH_TIERS`: image sides, default `512` (`512,768,1024` for the full table).
//!
//! Example: `IMAGO_BENCH_FAMILIES=sd2 IMAGO_BENCH_TIERS=512,768,1024 cargo bench --bench engine`.
use std::hint::black_box;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use imago::imaging::{encode_image, ImageFormat};
use imago_models::bench::{Architecture, BenchError, BenchOptions};
use imago_models::device::{DTypeChoice, DeviceChoice};
use imago_models::pipeline::{
    DiffusionPipeline, GenerationRequest, LoadedModel, NoObserver, StepObserver,
};
use imago_models::rng::TorchGenerator;
use imago_models::taesd::{TinyAutoencoder, TinyAutoencoderConfig};

const PROMPT: &str = "a lighthouse at dusk, oil painting";

/// A comma-separated environment list, or `default` when unset or empty.
fn env_list(name: &str, default: &str) -> Vec<String> {
    let value = std::env::var(name).unwrap_or_default();
    let value = if value.trim().is_empty() {
        default
    } else {
        &value
    };
    value
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn tiers() -> Vec<usize> {
    env_list("IMAGO_BENCH_TIERS", "512")
        .iter()
        .map(|t| {
            t.parse()
                .unwrap_or_else(|_| panic!("IMAGO_BENCH_TIERS: {t:?} is not a side in pixels"))
        })
        .collect()
}

fn families() -> Vec<String> {
    env_list("IMAGO_BENCH_FAMILIES", "tiny")
}

/// Few samples, short windows: real-size stages take seconds each.
fn configure(group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(100))
        .measurement_time(Duration::from_secs(5));
}

fn request(side: usize, steps: usize) -> GenerationRequest {
    GenerationRequest {
        prompt: PROMPT.into(),
        negative_prompt: None,
        seed: 7,
        steps,
        guidance_scale: 0.0,
        width: side,
        height: side,
        batch_size: 1,
        scheduler: None,
        init_image: None,
        max_sequence_length: None,
    }
}

fn latents(model: &LoadedModel, side: usize) -> Tensor {
    TorchGenerator::new(1)
        .randn_tensor(
            &[1, model.latent_channels(), side / 8, side / 8],
            model.device(),
            DType::F32,
        )
        .expect("latents")
}

/// Text encoding, one denoising step and one VAE decode of `model` at each tier, in groups
/// `cpu/<name>/<tier>`.
fn stages(c: &mut Criterion, name: &str, model: &LoadedModel, tiers: &[usize]) {
    let step_name = match model.pipeline {
        DiffusionPipeline::StableDiffusion(_) => "unet_step",
        DiffusionPipeline::Flux(_) => "transformer_step",
    };
    for &side in tiers {
        let mut group = c.benchmark_group(format!("cpu/{name}/{side}"));
        configure(&mut group);
        group.bench_function("text_encode", |b| match &model.pipeline {
            DiffusionPipeline::StableDiffusion(sd) => {
                b.iter(|| black_box(sd.encode_prompt(PROMPT, None, 1, false).unwrap()))
            }
            DiffusionPipeline::Flux(flux) => b.iter(|| {
                black_box(
                    flux.encode_prompt(PROMPT, flux.default_max_sequence_length(), 1)
                        .unwrap(),
                )
            }),
        });
        // Each iteration encodes the prompt too; only the step is counted.
        group.bench_function(step_name, |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| imago_models::bench::time_denoise_step(model, side, side).unwrap())
                    .sum()
            })
        });
        let latents = latents(model, side);
        group.bench_function("vae_decode", |b| {
            b.iter(|| black_box(model.decode_latents(&latents).unwrap()))
        });
        group.finish();
    }
}

fn tiny_models(c: &mut Criterion) {
    if !families().iter().any(|f| f == "tiny") {
        return;
    }
    for id in ["imago/tiny-sd", "imago/tiny-sdxl", "imago/tiny-flux"] {
        let model =
            LoadedModel::load(id, DeviceChoice::Cpu, DTypeChoice::F32).expect("built-in model");
        stages(c, id.trim_start_matches("imago/"), &model, &tiers());
    }
}

fn real_architectures(c: &mut Criterion) {
    let tiers = tiers();
    for family in families().iter().filter(|f| *f != "tiny") {
        let architecture: Architecture = family
            .parse()
            .unwrap_or_else(|e| panic!("IMAGO_BENCH_FAMILIES: {e}"));
        // Built once at the largest tier's memory estimate, then run at every tier.
        let options = BenchOptions {
            architecture,
            config_dir: None,
            width: tiers.iter().copied().max().unwrap_or(512),
            height: tiers.iter().copied().max().unwrap_or(512),
            dtype: DTypeChoice::F32,
            iters: 1,
            throughput: false,
            memory_limit: None,
        };
        let model = match imago_models::bench::load(&options, &Device::Cpu) {
            Ok(model) => model,
            Err(err @ BenchError::DoesNotFit { .. }) => {
                eprintln!("skipping {family}: {err}");
                continue;
            }
            Err(err) => panic!("cannot build {family}: {err}"),
        };
        stages(c, family, &model, &tiers);
    }
}

/// The two step previews at each tier's latent size: the tiny autoencoder (TAESD's config,
/// random weights) and the fitted latent-to-RGB map.
fn previews(c: &mut Criterion) {
    let taesd_config = TinyAutoencoderConfig::from_json("{}").expect("TAESD defaults");
    let vb = imago_models::tiny_weights::deterministic_var_builder(3, DType::F32, &Device::Cpu);
    let taesd = TinyAutoencoder::new(vb, &taesd_config).expect("TAESD");
    let model =
        LoadedModel::load("imago/tiny-sd", DeviceChoice::Cpu, DTypeChoice::F32).expect("built-in");
    for side in tiers() {
        let latents = latents(&model, side);
        let mut group = c.benchmark_group(format!("cpu/preview/{side}"));
        configure(&mut group);
        group.bench_function("taesd", |b| {
            b.iter(|| {
                black_box(
                    imago_models::preview::render_with_tiny_autoencoder(&taesd, &latents).unwrap(),
                )
            })
        });
        group.bench_function("latent_rgb", |b| {
            b.iter(|| black_box(model.preview().render(&latents).unwrap()))
        });
        group.finish();
    }
}

/// The response encoders on a generated image at each tier (a tiny-sd picture: noise-like, so
/// close to the worst case for compression).
fn image_encoding(c: &mut Criterion) {
    let model =
        LoadedModel::load("imago/tiny-sd", DeviceChoice::Cpu, DTypeChoice::F32).expect("built-in");
    for side in tiers() {
        let image = model
            .generate(&request(side, 1), &mut NoObserver)
            .expect("tiny image")
            .images
            .remove(0);
        let mut group = c.benchmark_group(format!("cpu/encode/{side}"));
        configure(&mut group);
        for (name, format, quality) in [
            ("png", ImageFormat::Png, None),
            ("jpeg", ImageFormat::Jpeg, None),
            ("webp_lossless", ImageFormat::Webp, None),
            ("webp_q80", ImageFormat::Webp, Some(80)),
        ] {
            group.bench_function(name, |b| {
                b.iter(|| black_box(encode_image(&image, format, quality).unwrap()))
            });
        }
        group.finish();
    }
}

/// 8 compatible requests (own prompts and seeds) as one engine batch against one after the other:
/// the speed-up `--max-batch` buys (the images are the same bytes either way).
fn batching(c: &mut Criterion) {
    if !families().iter().any(|f| f == "tiny") {
        return;
    }
    let model =
        LoadedModel::load("imago/tiny-sd", DeviceChoice::Cpu, DTypeChoice::F32).expect("built-in");
    let requests: Vec<GenerationRequest> = (0..8u64)
        .map(|i| GenerationRequest {
            prompt: format!("a lighthouse at dusk, variant {i}"),
            seed: 100 + i,
            ..request(128, 8)
        })
        .collect();
    let mut group = c.benchmark_group("cpu/tiny-sd/128/8_requests");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group.bench_function("sequential", |b| {
        b.iter(|| {
            for r in &requests {
                black_box(model.generate(r, &mut NoObserver).unwrap());
            }
        })
    });
    group.bench_function("batched", |b| {
        b.iter(|| {
            let mut observers: Vec<NoObserver> = requests.iter().map(|_| NoObserver).collect();
            let mut observers: Vec<&mut dyn StepObserver> = observers
                .iter_mut()
                .map(|o| o as &mut dyn StepObserver)
                .collect();
            black_box(model.generate_batch(&requests, &mut observers))
        })
    });
    group.finish();
}

fn group_norm(c: &mut Criterion) {
    // The shape of SD's largest GroupNorm at 512 px: 320 channels at 64x64 latents, batch 2 (CFG).
    let x = TorchGenerator::new(2)
        .randn_tensor(&[2, 320, 64, 64], &Device::Cpu, DType::F32)
        .unwrap();
    let w = Tensor::ones(320, DType::F32, &Device::Cpu).unwrap();
    let b = Tensor::zeros(320, DType::F32, &Device::Cpu).unwrap();
    let mut group = c.benchmark_group("cpu/group_norm_silu/512");
    group.bench_function("fused", |bench| {
        bench.iter(|| {
            black_box(
                imago_kernels::group_norm(&x, 32, &w, &b, 1e-5, imago_kernels::Activation::Silu)
                    .unwrap(),
            )
        })
    });
    group.bench_function("reference", |bench| {
        bench.iter(|| {
            black_box(
                imago_kernels::group_norm_reference(
                    &x,
                    32,
                    &w,
                    &b,
                    1e-5,
                    imago_kernels::Activation::Silu,
                )
                .unwrap(),
            )
        })
    });
    group.finish();
}

fn conv2d(c: &mut Criterion) {
    // The SD VAE decoder's last up block at 512 px: 128 -> 128 channels, 3x3, padding 1, on a
    // 512x512 plane; stride 1 reads the input in place, the im2col path packs it.
    let mut rng = TorchGenerator::new(3);
    let x = rng
        .randn_tensor(&[1, 128, 512, 512], &Device::Cpu, DType::F32)
        .unwrap();
    let w = (rng
        .randn_tensor(&[128, 128, 3, 3], &Device::Cpu, DType::F32)
        .unwrap()
        * 0.03)
        .unwrap();
    let b = Tensor::zeros(128, DType::F32, &Device::Cpu).unwrap();
    let geometry = imago_kernels::Conv2dGeometry {
        padding: 1,
        stride: 1,
        dilation: 1,
    };
    let kernel = imago_kernels::Conv2dKernel::new(&w, Some(&b), geometry).unwrap();
    let mut group = c.benchmark_group("cpu/conv2d_3x3_128x128/512");
    configure(&mut group);
    group.bench_function("in_place", |bench| {
        bench.iter(|| black_box(kernel.forward(&x).unwrap()))
    });
    group.bench_function("im2col", |bench| {
        bench.iter(|| black_box(kernel.forward_im2col(&x).unwrap()))
    });
    group.finish();
}

/// The process settings every `imago` command applies at start-up (`imago_models::allocator`,
/// `imago_models::candle_pool`), so the figures are the server's and the CLI's.
fn process_settings(_: &mut Criterion) {
    imago_models::candle_pool::limit_idle_spinning();
    imago_models::allocator::keep_tensor_pages();
}

criterion_group!(
    benches,
    process_settings,
    tiny_models,
    real_architectures,
    previews,
    image_encoding,
    batching,
    group_norm,
    conv2d
);
criterion_main!(benches);
