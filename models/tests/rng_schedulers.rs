//! The torch-compatible generator and the diffusers schedulers against reference values computed by
//! torch 2.15 / diffusers 0.42.1 (`tests/data/`) and the parity fixtures' starting noise.
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use imago_models::rng::TorchGenerator;
use serde_json::Value;

fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn f32s(value: &Value) -> Vec<f32> {
    value
        .as_array()
        .expect("array of numbers")
        .iter()
        .map(|v| v.as_f64().expect("number") as f32)
        .collect()
}

/// Largest absolute difference; panics when the lengths differ.
fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

const RNG_TOL: f32 = 1e-6;

#[test]
fn randn_matches_torch_for_small_and_odd_sizes() {
    let data = read_json(&models_dir().join("tests/data/rng/torch_randn.json"));
    for case in data["single"].as_array().expect("single") {
        let seed = case["seed"].as_u64().expect("seed");
        let n = case["n"].as_u64().expect("n") as usize;
        let got = TorchGenerator::new(seed).randn(n);
        let diff = max_abs_diff(&got, &f32s(&case["values"]));
        assert!(diff <= RNG_TOL, "seed {seed} n {n}: max diff {diff}");
    }
}

#[test]
fn successive_draws_continue_torchs_stream() {
    let data = read_json(&models_dir().join("tests/data/rng/torch_randn.json"));
    for case in data["sequences"].as_array().expect("sequences") {
        let seed = case["seed"].as_u64().expect("seed");
        let mut generator = TorchGenerator::new(seed);
        let draws = case["draws"].as_array().expect("draws");
        for (i, expected) in draws.iter().enumerate() {
            let expected = f32s(expected);
            let got = generator.randn(expected.len());
            let diff = max_abs_diff(&got, &expected);
            assert!(
                diff <= RNG_TOL,
                "seed {seed} draw {i} (n {}): max diff {diff}",
                expected.len()
            );
        }
    }
}

#[test]
fn randn_tensor_matches_torch_for_a_4d_shape() -> candle_core::Result<()> {
    let data = read_json(&models_dir().join("tests/data/rng/torch_randn.json"));
    let case = &data["shaped"];
    let shape: Vec<usize> = case["shape"]
        .as_array()
        .expect("shape")
        .iter()
        .map(|v| v.as_u64().expect("dim") as usize)
        .collect();
    let seed = case["seed"].as_u64().expect("seed");
    let t = TorchGenerator::new(seed).randn_tensor(&shape, &Device::Cpu, DType::F32)?;
    assert_eq!(t.dims(), shape.as_slice());
    let diff = max_abs_diff(&t.flatten_all()?.to_vec1::<f32>()?, &f32s(&case["values"]));
    assert!(diff <= RNG_TOL, "max diff {diff}");
    Ok(())
}

fn parity_case(name: &str) -> PathBuf {
    models_dir().join("../tests/fixtures/parity").join(name)
}

#[test]
fn randn_reproduces_the_parity_fixtures_starting_noise() -> candle_core::Result<()> {
    for name in [
        "sd-turbo-1step",
        "sd-euler-cfg",
        "sdxl-turbo-1step",
        "sd-dpmpp-vpred",
        "sd-euler-a-3step",
    ] {
        let dir = parity_case(name);
        let case = read_json(&dir.join("case.json"));
        let seed = case["seed"].as_u64().expect("seed");
        let expected =
            candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu)?;
        let init = &expected["latents_init"];
        let got = TorchGenerator::new(seed).randn_tensor(init.dims(), &Device::Cpu, DType::F32)?;
        let diff = max_abs_diff(
            &got.flatten_all()?.to_vec1::<f32>()?,
            &init.flatten_all()?.to_vec1::<f32>()?,
        );
        assert!(diff <= RNG_TOL, "{name}: latents_init max diff {diff}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Schedulers against diffusers 0.42.1 (tests/data/schedulers/diffusers_reference.json).

use candle_core::Tensor;
use imago_models::schedulers::{Scheduler, SchedulerChoice, SchedulerConfig, SchedulerKind};

fn reference() -> Value {
    read_json(&models_dir().join("tests/data/schedulers/diffusers_reference.json"))
}

/// The scheduler a reference entry describes: its file config, and the optional conversion.
fn build(entry: &Value) -> Scheduler {
    let config = SchedulerConfig::from_json(entry["config"].as_str().expect("config text"))
        .expect("config parses");
    let choice = entry["target"].as_str().map(|target| SchedulerChoice {
        kind: SchedulerKind::from_class_name(target).expect("known class"),
        karras: entry["karras"].as_bool(),
    });
    let steps = entry["steps"].as_u64().expect("steps") as usize;
    Scheduler::new(&config, choice, steps).unwrap_or_else(|e| panic!("{}: {e}", entry["config"]))
}

fn relative_diff(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

/// Sigmas are float32; torch's float32 sqrt/log on the CPU are not always correctly rounded (ours
/// are), and the zero-SNR rescale chains several of them: allow a few ulps.
const SIGMA_RTOL: f64 = 1e-6;
/// Fractional (Karras) Euler timesteps come from a log-sigma interpolation in float32, where one
/// ulp of log-sigma moves t by ~1e-4 at worst (6e-5 seen).
const TIMESTEP_ATOL: f64 = 2e-4;

#[test]
fn timesteps_sigmas_and_init_noise_sigma_match_diffusers() {
    let data = reference();
    let entries = data["schedules"].as_array().expect("schedules");
    assert!(entries.len() > 150);
    let mut worst_t = 0.0f64;
    let mut worst_sigma = 0.0f64;
    for entry in entries {
        let label = format!(
            "{} steps {} -> {}",
            entry["config"], entry["steps"], entry["class"]
        );
        let scheduler = build(entry);
        assert_eq!(
            scheduler.kind().class_name(),
            entry["class"].as_str().expect("class"),
            "{label}"
        );

        let expected_t: Vec<f64> = entry["timesteps"]
            .as_array()
            .expect("timesteps")
            .iter()
            .map(|v| v.as_f64().expect("number"))
            .collect();
        assert_eq!(
            scheduler.timesteps().len(),
            expected_t.len(),
            "{label}: timestep count"
        );
        for (got, want) in scheduler.timesteps().iter().zip(&expected_t) {
            // Integer and spaced timesteps are exact; only Karras-Euler ones are fractional.
            let tol = if want.fract() == 0.0 && got.fract() == 0.0 {
                0.0
            } else {
                TIMESTEP_ATOL
            };
            worst_t = worst_t.max((got - want).abs());
            assert!(
                (got - want).abs() <= tol,
                "{label}: timesteps {:?} vs {expected_t:?}",
                scheduler.timesteps()
            );
        }

        if let Some(expected_sigmas) = entry.get("sigmas") {
            let expected_sigmas = f32s(expected_sigmas);
            let sigmas = scheduler.sigmas().expect("sigma schedule");
            assert_eq!(sigmas.len(), expected_sigmas.len(), "{label}: sigma count");
            for (got, want) in sigmas.iter().zip(&expected_sigmas) {
                let d = relative_diff(*got as f64, *want as f64);
                worst_sigma = worst_sigma.max(if *want == 0.0 { got.abs() as f64 } else { d });
                assert!(
                    (*want == 0.0 && *got == 0.0) || d <= SIGMA_RTOL,
                    "{label}: sigmas {sigmas:?} vs {expected_sigmas:?}"
                );
            }
        } else {
            assert!(scheduler.sigmas().is_none(), "{label}: DDIM has no sigmas");
        }

        let want = entry["init_noise_sigma"]
            .as_f64()
            .expect("init_noise_sigma");
        let got = scheduler.init_noise_sigma();
        assert!(
            relative_diff(got, want) <= SIGMA_RTOL,
            "{label}: init_noise_sigma {got} vs {want}"
        );
    }
    eprintln!("worst timestep diff {worst_t:e}, worst sigma relative diff {worst_sigma:e}");
}

/// Step tolerance: 1e-5, scaled by the magnitude for values above 1 (the random model outputs
/// drive some sequences' latents to |x| ~ 50, where one float32 ulp is 4e-6).
const STEP_ATOL: f32 = 1e-5;

/// Largest `|a - b| / max(1, |b|)`.
fn max_scaled_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
        .fold(0.0, f32::max)
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .expect("f32 tensor")
}

#[test]
fn step_sequences_match_diffusers() -> candle_core::Result<()> {
    let data = reference();
    let cases = data["steps"].as_array().expect("steps");
    let mut worst = 0.0f32;
    for case in cases {
        let label = format!(
            "{} steps {} begin {}",
            case["config"], case["steps"], case["begin"]
        );
        let mut scheduler = build(case);
        let shape: Vec<usize> = case["shape"]
            .as_array()
            .expect("shape")
            .iter()
            .map(|v| v.as_u64().expect("dim") as usize)
            .collect();
        let begin = case["begin"].as_u64().expect("begin") as usize;
        let mut inputs = TorchGenerator::new(case["seed"].as_u64().expect("seed"));
        let mut noise_rng = TorchGenerator::new(case["noise_seed"].as_u64().unwrap_or(0));
        let untouched = noise_rng.clone().randn(1);
        let cpu = Device::Cpu;

        let mut sample = if begin == 0 {
            let noise = inputs.randn_tensor(&shape, &cpu, DType::F32)?;
            noise.affine(scheduler.init_noise_sigma() as f32 as f64, 0.0)?
        } else {
            let original = inputs.randn_tensor(&shape, &cpu, DType::F32)?;
            let noise = inputs.randn_tensor(&shape, &cpu, DType::F32)?;
            let noised = scheduler
                .add_noise(&original, &noise, begin)
                .expect("add_noise");
            let d = max_scaled_diff(&flat(&noised), &f32s(&case["noised"]));
            assert!(d <= STEP_ATOL, "{label}: add_noise max diff {d}");
            noised
        };

        let expected_steps = case["prev_samples"].as_array().expect("prev_samples");
        assert_eq!(
            expected_steps.len(),
            scheduler.timesteps().len() - begin,
            "{label}"
        );
        let mut last_pred = None;
        for (k, expected) in expected_steps.iter().enumerate() {
            let i = begin + k;
            let scaled = scheduler
                .scale_model_input(&sample, i)
                .expect("scale_model_input");
            if k == 0 {
                let d = max_scaled_diff(&flat(&scaled), &f32s(&case["scaled_inputs"][0]));
                assert!(d <= STEP_ATOL, "{label}: scale_model_input max diff {d}");
            }
            let model_output = inputs.randn_tensor(&shape, &cpu, DType::F32)?;
            let out = scheduler
                .step(&model_output, i, &sample, &mut noise_rng)
                .expect("step");
            let d = max_scaled_diff(&flat(&out.prev_sample), &f32s(expected));
            worst = worst.max(d);
            assert!(d <= STEP_ATOL, "{label}: step {i} max diff {d}");
            sample = out.prev_sample;
            last_pred = Some(out.pred_original_sample);
        }
        if let (Some(expected), Some(pred)) = (case["pred_original_last"].as_array(), last_pred) {
            let d = max_scaled_diff(&flat(&pred), &f32s(&Value::Array(expected.clone())));
            assert!(d <= STEP_ATOL, "{label}: pred_original_sample max diff {d}");
        }
        if case.get("noise_seed").is_none() {
            assert_eq!(
                noise_rng.randn(1),
                untouched,
                "{label}: only Euler-ancestral draws noise"
            );
        }
    }
    eprintln!("worst step diff {worst:e}");
    Ok(())
}

/// Runs every step of `scheduler` from `begin` on inputs drawn from `seed`; returns the last latents.
fn run_all(scheduler: &mut Scheduler, seed: u64, begin: usize) -> Vec<f32> {
    let shape = [1, 4, 3, 5];
    let mut inputs = TorchGenerator::new(seed);
    let mut noise_rng = TorchGenerator::new(seed + 1);
    let mut sample = inputs
        .randn_tensor(&shape, &Device::Cpu, DType::F32)
        .expect("randn");
    for i in begin..scheduler.timesteps().len() {
        let model_output = inputs
            .randn_tensor(&shape, &Device::Cpu, DType::F32)
            .expect("randn");
        sample = scheduler
            .step(&model_output, i, &sample, &mut noise_rng)
            .expect("step")
            .prev_sample;
    }
    flat(&sample)
}

#[test]
fn multistep_history_restarts_with_a_new_run() {
    let config = SchedulerConfig::from_json(r#"{"_class_name": "DPMSolverMultistepScheduler"}"#)
        .expect("parses");
    let mut reused = Scheduler::new(&config, None, 8).expect("dpm");
    let first = run_all(&mut reused, 5, 0);
    assert_eq!(
        run_all(&mut reused, 5, 0),
        first,
        "second full run on one scheduler"
    );
    // Starting part-way (img2img) equals a fresh scheduler started there.
    let partial = run_all(&mut reused, 9, 3);
    let mut fresh = Scheduler::new(&config, None, 8).expect("dpm");
    assert_eq!(run_all(&mut fresh, 9, 3), partial);
}

#[test]
fn parity_fixture_scheduler_configs_build_as_their_cases_name_them() {
    for name in [
        "sd-turbo-1step",
        "sd-euler-cfg",
        "sdxl-turbo-1step",
        "sd-dpmpp-vpred",
        "sd-euler-a-3step",
        "sd-img2img",
    ] {
        let dir = parity_case(name);
        let case = read_json(&dir.join("case.json"));
        let steps = case["steps"].as_u64().expect("steps") as usize;
        let config = SchedulerConfig::from_file(&dir.join("model/scheduler/scheduler_config.json"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let own = Scheduler::new(&config, None, steps).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(own.timesteps().len(), steps, "{name}");
        if let Some(choice) = case["scheduler"].as_str() {
            let choice: SchedulerChoice = choice.parse().expect("known scheduler name");
            let chosen = Scheduler::new(&config, Some(choice), steps).expect("chosen scheduler");
            assert_eq!(chosen.kind(), own.kind(), "{name}");
            assert_eq!(chosen.timesteps(), own.timesteps(), "{name}");
            assert_eq!(chosen.sigmas(), own.sigmas(), "{name}");
        }
    }
}
