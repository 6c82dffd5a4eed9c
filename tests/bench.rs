//! `imago bench` as a user runs it: the report's keys and values on the built-in tiny configs
//! (the real architectures are the same code at a size too slow for tests), and the up-front
//! refusal of a configuration that cannot fit.
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn imago(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_imago"))
        .arg("bench")
        .args(args)
        .env_remove("IMAGO_LOG")
        .env_remove("IMAGO_DEVICE")
        .env_remove("IMAGO_DTYPE")
        .output()
        .expect("run imago")
}

fn tiny(model: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/builtin")
        .join(model)
        .display()
        .to_string()
}

fn json_report(args: &[&str]) -> Value {
    let out = imago(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "imago bench {args:?} failed: {stderr}"
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(stdout.lines().count(), 1, "one JSON line: {stdout}");
    serde_json::from_str(&stdout).expect("a JSON object")
}

fn positive(report: &Value, key: &str) -> f64 {
    let value = report[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number: {report}"));
    assert!(value > 0.0 && value.is_finite(), "{key} = {value}");
    value
}

#[test]
fn json_report_of_each_family_on_tiny_configs() {
    // SDXL runs in the table test.
    for (family, config) in [("sd1", "tiny-sd"), ("flux", "tiny-flux")] {
        let dir = tiny(config);
        let report = json_report(&[
            "--family",
            family,
            "--config-dir",
            &dir,
            "--tier",
            "512",
            "--device",
            "cpu",
            "--iters",
            "1",
            "--json",
        ]);
        let object = report.as_object().expect("an object");
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "denoise_step_ms",
                "device",
                "dtype",
                "family",
                "height",
                "peak_rss_mb",
                "text_encode_ms",
                "vae_decode_ms",
                "width"
            ],
            "{report}"
        );
        assert_eq!(report["family"], family);
        assert_eq!(report["width"], 512);
        assert_eq!(report["height"], 512);
        assert_eq!(report["dtype"], "f32");
        assert_eq!(report["device"], "cpu");
        for key in ["text_encode_ms", "denoise_step_ms", "vae_decode_ms"] {
            positive(&report, key);
        }
        // Linux reports VmHWM: at least the process's code and the tiny weights.
        if cfg!(target_os = "linux") {
            assert!(positive(&report, "peak_rss_mb") > 10.0, "{report}");
        }
    }
}

#[test]
fn throughput_adds_images_per_second_at_batches_1_and_4() {
    // FLUX.1-schnell's default is 4 steps; the tiny transformer keeps that quick.
    let dir = tiny("tiny-flux");
    let report = json_report(&[
        "--family",
        "flux",
        "--config-dir",
        &dir,
        "--tier",
        "512",
        "--device",
        "cpu",
        "--iters",
        "1",
        "--json",
        "--throughput",
    ]);
    let rates = report["images_per_s"].as_object().expect("images_per_s");
    assert_eq!(rates.keys().collect::<Vec<_>>(), ["1", "4"], "{report}");
    for batch in ["1", "4"] {
        let rate = rates[batch].as_f64().expect("a number");
        assert!(rate > 0.0 && rate.is_finite(), "{report}");
    }
}

#[test]
fn table_output_names_the_stages() {
    let dir = tiny("tiny-sdxl");
    let out = imago(&[
        "--family",
        "sdxl",
        "--config-dir",
        &dir,
        "--tier",
        "512",
        "--device",
        "cpu",
        "--iters",
        "1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).expect("utf-8");
    assert!(table.starts_with("sdxl 512x512 f32 on cpu"), "{table}");
    for stage in ["text encode", "denoise step", "VAE decode"] {
        assert!(table.contains(stage), "{table}");
    }
}

#[test]
fn refuses_flux_beyond_the_memory_limit_before_building_it() {
    // FLUX.1's 12B transformer and T5-XXL: about 67 GB of f32 weights, 34 GB in bf16.
    for (dtype, weights) in [("f32", "weights 67.4 GB"), ("bf16", "weights 33.7 GB")] {
        let started = std::time::Instant::now();
        let out = imago(&[
            "--family",
            "flux",
            "--tier",
            "1024",
            "--device",
            "cpu",
            "--dtype",
            dtype,
            "--memory-limit",
            "23",
        ]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("flux at 1024x1024 in {dtype}"))
                && stderr.contains(weights)
                && stderr.contains("but 23.0 GB is the limit (--memory-limit)"),
            "{stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        // Refused from the configs alone: nothing of 12B parameters was generated.
        assert!(started.elapsed().as_secs() < 30, "{:?}", started.elapsed());
    }
}

#[test]
fn rejects_tiers_and_unknown_families() {
    let out = imago(&["--family", "sd2", "--tier", "640"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected 512, 768 or 1024"));
    let out = imago(&["--family", "sd3"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not one of sd1, sd2, sdxl, flux"));
}

#[test]
fn a_config_dir_without_a_component_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = imago(&[
        "--family",
        "sd2",
        "--config-dir",
        &dir.path().display().to_string(),
        "--device",
        "cpu",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("text_encoder config of the sd2 architecture"),
        "{stderr}"
    );
}
