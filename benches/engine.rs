//! `cargo bench`: the engine's stages per device and resolution tier, on the built-in tiny models
//! (real architectures at toy width, so no download is needed), plus the fused GroupNorm kernel
//! against its reference. Group names carry the device and the tier: `cpu/tiny-sd/256`.
use std::hint::black_box;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use imago_models::device::{DTypeChoice, DeviceChoice};
use imago_models::pipeline::{
    DiffusionPipeline, GenerationRequest, LoadedModel, NoObserver, StepObserver,
};
use imago_models::rng::TorchGenerator;

fn request(side: usize, steps: usize) -> GenerationRequest {
    GenerationRequest {
        prompt: "a lighthouse at dusk, oil painting".into(),
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

fn pipelines(c: &mut Criterion) {
    for id in ["imago/tiny-sd", "imago/tiny-sdxl", "imago/tiny-flux"] {
        let model =
            LoadedModel::load(id, DeviceChoice::Cpu, DTypeChoice::F32).expect("built-in model");
        let name = id.trim_start_matches("imago/");
        let prompt = "a lighthouse at dusk, oil painting";
        for side in [256usize, 512] {
            let mut group = c.benchmark_group(format!("cpu/{name}/{side}"));
            group
                .sample_size(10)
                .measurement_time(Duration::from_secs(5));
            group.bench_function("text_encode", |b| match &model.pipeline {
                DiffusionPipeline::StableDiffusion(sd) => {
                    b.iter(|| black_box(sd.encode_prompt(prompt, None, 1, false).unwrap()))
                }
                DiffusionPipeline::Flux(flux) => {
                    b.iter(|| black_box(flux.encode_prompt(prompt, 64, 1).unwrap()))
                }
            });
            let latents = TorchGenerator::new(1)
                .randn_tensor(
                    &[1, model.latent_channels(), side / 8, side / 8],
                    &Device::Cpu,
                    DType::F32,
                )
                .unwrap();
            group.bench_function("vae_decode", |b| {
                b.iter(|| black_box(model.decode_latents(&latents).unwrap()))
            });
            group.bench_function("generate_1_step", |b| {
                b.iter(|| black_box(model.generate(&request(side, 1), &mut NoObserver).unwrap()))
            });
            group.finish();
        }
    }
}

/// 8 compatible requests (own prompts and seeds) as one engine batch against one after the other:
/// the speed-up `--max-batch` buys (the images are the same bytes either way).
fn batching(c: &mut Criterion) {
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

criterion_group!(benches, pipelines, batching, group_norm);
criterion_main!(benches);
