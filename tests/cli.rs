//! `imago generate` as a user runs it: parity PNGs, determinism, and one-line errors that leave no files.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{assert_png_close, Case};

fn imago(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_imago"))
        .args(args)
        .env_remove("IMAGO_LOG")
        .output()
        .expect("run imago")
}

/// The generate arguments for a parity case, writing into `out`.
fn case_args(case: &Case, out: &Path) -> Vec<String> {
    let mut args = vec![
        "generate".to_string(),
        "--model".into(),
        case.model_dir().display().to_string(),
        "--prompt".into(),
        case.prompt.clone(),
        "--seed".into(),
        case.seed.to_string(),
        "--steps".into(),
        case.steps.to_string(),
        "--guidance".into(),
        case.guidance_scale.to_string(),
        "--width".into(),
        case.width.to_string(),
        "--height".into(),
        case.height.to_string(),
        "-n".into(),
        case.n.to_string(),
        "--device".into(),
        "cpu".into(),
        "--quiet".into(),
        "--out-dir".into(),
        out.display().to_string(),
    ];
    if let Some(negative) = &case.negative_prompt {
        args.extend(["--negative-prompt".into(), negative.clone()]);
    }
    if let Some(len) = case.max_sequence_length {
        args.extend(["--max-sequence-length".into(), len.to_string()]);
    }
    if let Some(image) = case.input_image_path() {
        args.extend(["--image".into(), image.display().to_string()]);
        args.extend(["--strength".into(), case.strength.unwrap().to_string()]);
    }
    args
}

fn run_ok(args: &[String]) -> String {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = imago(&refs);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "imago {args:?} failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn generate_matches_every_parity_case_png() {
    for (set, name) in [
        ("parity", "sd-turbo-1step"),
        ("parity", "sd-euler-cfg"),
        ("parity", "sdxl-turbo-1step"),
        ("parity", "sd-img2img"),
        ("parity", "sd-dpmpp-vpred"),
        ("parity", "sd-euler-a-3step"),
        ("parity", "flux-schnell-4step"),
        ("extra", "flux-single-file"),
        ("extra", "flux-dev-guidance-dynamic"),
        ("extra", "flux-img2img"),
        ("extra", "flux-schnell-nonsquare-batch2"),
    ] {
        let case = Case::load(set, name);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let stdout = run_ok(&case_args(&case, &out));
        assert!(
            stdout.contains(&format!("seed: {}", case.seed)),
            "{name}: {stdout}"
        );
        for i in 0..case.n {
            let png = out.join(format!("{i}.png"));
            let got = image::open(&png).unwrap().to_rgb8();
            assert_png_close(&png, &got, &case.expected_png(i));
        }
        assert_eq!(
            files_in(&out).len(),
            case.n,
            "{name}: only the PNGs are written"
        );
    }
}

#[test]
fn the_same_command_twice_gives_byte_identical_pngs() {
    let dir = tempfile::tempdir().unwrap();
    let case = Case::load("parity", "sd-euler-cfg");
    let mut outputs = Vec::new();
    for run in 0..2 {
        let out = dir.path().join(format!("run{run}"));
        let mut args = case_args(&case, &out);
        // Two images of a batch, to cover the batch path too.
        let n = args.iter().position(|a| a == "-n").unwrap();
        args[n + 1] = "2".into();
        run_ok(&args);
        outputs.push((
            std::fs::read(out.join("0.png")).unwrap(),
            std::fs::read(out.join("1.png")).unwrap(),
        ));
    }
    assert_eq!(outputs[0], outputs[1]);
    assert_ne!(
        outputs[0].0, outputs[0].1,
        "batch images differ from each other"
    );
}

#[test]
fn builtin_models_generate_without_any_files() {
    for (model, dtype) in [
        ("imago/tiny-sd", "f32"),
        ("imago/tiny-sdxl", "f32"),
        ("imago/tiny-sdxl", "f16"),
        ("imago/tiny-flux", "f32"),
        ("imago/tiny-flux", "f16"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let stdout = run_ok(&[
            "generate".into(),
            "--model".into(),
            model.into(),
            "--prompt".into(),
            "a lighthouse at dusk".into(),
            "--steps".into(),
            "2".into(),
            "--width".into(),
            "64".into(),
            "--height".into(),
            "48".into(),
            "--dtype".into(),
            dtype.into(),
            "--device".into(),
            "cpu".into(),
            "--quiet".into(),
            "--out-dir".into(),
            out.display().to_string(),
        ]);
        assert!(stdout.contains("seed: "), "{stdout}");
        let img = image::open(out.join("0.png")).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (64, 48));
        // Random weights still give a picture, not a flat colour.
        let first = img.get_pixel(0, 0);
        assert!(
            img.pixels().any(|p| p != first),
            "{model} produced a flat image"
        );
    }
}

/// `--low-memory` (T5 released after encoding) changes where memory goes, not the picture; FLUX
/// refuses what it has no use for, naming the option.
#[test]
fn flux_low_memory_gives_the_same_image_and_bad_options_are_named() {
    let case = Case::load("parity", "flux-schnell-4step");
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain");
    run_ok(&case_args(&case, &plain));
    let low = dir.path().join("low");
    let mut args = case_args(&case, &low);
    args.push("--low-memory".into());
    run_ok(&args);
    assert_eq!(
        std::fs::read(plain.join("0.png")).unwrap(),
        std::fs::read(low.join("0.png")).unwrap()
    );
    for (extra, named) in [
        (["--negative-prompt", "blurry"], "negative_prompt"),
        (["--scheduler", "ddim"], "scheduler"),
        (["--max-sequence-length", "513"], "max_sequence_length"),
        (["--width", "72"], "multiple of 16"),
    ] {
        let out = dir.path().join("bad");
        let mut args = case_args(&case, &out);
        match args.iter().position(|a| a == extra[0]) {
            Some(at) => args[at + 1] = extra[1].to_string(),
            None => args.extend(extra.iter().map(|s| s.to_string())),
        }
        let message = expect_error(&args, &out);
        assert!(message.contains(named), "{extra:?}: {message}");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Runs a failing command and returns its stderr, after checking the exit code, that the error is one
/// line, and that nothing was written.
fn expect_error(args: &[String], out: &Path) -> String {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = imago(&refs);
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    assert!(!output.status.success(), "expected failure for {args:?}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        files_in(out).is_empty(),
        "no files written: {:?}",
        files_in(out)
    );
    stderr
}

#[test]
fn bad_input_is_a_one_line_error_and_writes_nothing() {
    let case = Case::load("parity", "sd-euler-cfg");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let with = |edit: &dyn Fn(&mut Vec<String>)| {
        let mut args = case_args(&case, &out);
        edit(&mut args);
        args
    };
    let set = |args: &mut Vec<String>, flag: &str, value: &str| {
        let i = args.iter().position(|a| a == flag).unwrap();
        args[i + 1] = value.into();
    };

    let e = expect_error(&with(&|a| set(a, "--model", "/nonexistent/model")), &out);
    assert!(e.contains("/nonexistent/model"), "{e}");

    let e = expect_error(&with(&|a| set(a, "--width", "60")), &out);
    assert!(
        e.contains("width") && e.contains("60") && e.contains("multiple of 8"),
        "{e}"
    );

    let e = expect_error(&with(&|a| set(a, "--steps", "0")), &out);
    assert!(e.contains("steps"), "{e}");

    let img2img = Case::load("parity", "sd-img2img");
    let mut args = case_args(&img2img, &out);
    set(&mut args, "--strength", "1.5");
    let e = expect_error(&args, &out);
    assert!(e.contains("strength") && e.contains("1.5"), "{e}");
    set(&mut args, "--strength", "0");
    expect_error(&args, &out);

    let garbage = dir.path().join("not-an-image.png");
    std::fs::write(&garbage, b"this is not a png").unwrap();
    set(&mut args, "--strength", "0.5");
    set(&mut args, "--image", garbage.to_str().unwrap());
    let e = expect_error(&args, &out);
    assert!(
        e.contains("--image") && e.contains("not-an-image.png"),
        "{e}"
    );
    set(&mut args, "--image", "/nonexistent/init.png");
    let e = expect_error(&args, &out);
    assert!(e.contains("/nonexistent/init.png"), "{e}");
}

#[test]
fn broken_model_folders_are_named_in_the_error() {
    let case = Case::load("parity", "sd-euler-cfg");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let model = dir.path().join("model");
    let run_on_model = |model: &Path| {
        let mut args = case_args(&case, &out);
        let i = args.iter().position(|a| a == "--model").unwrap();
        args[i + 1] = model.display().to_string();
        expect_error(&args, &out)
    };

    // A missing component folder.
    copy_dir(&case.model_dir(), &model);
    std::fs::remove_dir_all(model.join("unet")).unwrap();
    let e = run_on_model(&model);
    assert!(e.contains("unet"), "{e}");

    // A missing weight file.
    copy_dir(&case.model_dir().join("unet"), &model.join("unet"));
    std::fs::remove_file(model.join("vae/diffusion_pytorch_model.safetensors")).unwrap();
    let e = run_on_model(&model);
    assert!(
        e.contains("vae") && e.contains("diffusion_pytorch_model"),
        "{e}"
    );

    // A corrupt (truncated) safetensors file.
    let original = std::fs::read(
        case.model_dir()
            .join("vae/diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    let vae_file = model.join("vae/diffusion_pytorch_model.safetensors");
    std::fs::write(&vae_file, &original[..original.len() / 2]).unwrap();
    let e = run_on_model(&model);
    assert!(
        e.contains("diffusion_pytorch_model.safetensors") && e.contains("vae"),
        "{e}"
    );

    // A tensor with the wrong shape: conv_in of the UNet with one output channel too few.
    std::fs::write(&vae_file, &original).unwrap();
    let unet_file = model.join("unet/diffusion_pytorch_model.safetensors");
    let mut tensors =
        candle_core::safetensors::load(&unet_file, &candle_core::Device::Cpu).unwrap();
    let conv_in = tensors["conv_in.weight"].narrow(0, 0, 31).unwrap();
    tensors.insert("conv_in.weight".into(), conv_in);
    candle_core::safetensors::save(&tensors, &unet_file).unwrap();
    let e = run_on_model(&model);
    assert!(e.contains("conv_in.weight"), "{e}");

    // Not a diffusers folder at all.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = run_on_model(&empty);
    assert!(e.contains("model_index.json"), "{e}");
}

/// A repo id resolves through the Hugging Face cache layout (refs/main -> snapshots/<hash>, files
/// symlinked to blobs/), as `hf download` leaves it, and generates the same image as the folder.
#[test]
fn hub_repo_ids_load_from_the_hf_cache() {
    let case = Case::load("parity", "sd-turbo-1step");
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--imago-test--sd-turbo-tiny");
    let hash = "0123456789abcdef0123456789abcdef01234567";
    let snapshot = repo.join("snapshots").join(hash);
    let blobs = repo.join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), hash).unwrap();
    let model = case.model_dir();
    for (i, file) in walk(&model).into_iter().enumerate() {
        let rel = file.strip_prefix(&model).unwrap();
        let blob = blobs.join(format!("blob{i}"));
        std::fs::copy(&file, &blob).unwrap();
        let link = snapshot.join(rel);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&blob, &link).unwrap();
    }
    let out = cache.path().join("out");
    let mut args = case_args(&case, &out);
    let i = args.iter().position(|a| a == "--model").unwrap();
    args[i + 1] = "imago-test/sd-turbo-tiny".into();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = Command::new(env!("CARGO_BIN_EXE_imago"))
        .args(&refs)
        .env("HF_HUB_CACHE", cache.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let got = image::open(out.join("0.png")).unwrap().to_rgb8();
    assert_png_close(&out.join("0.png"), &got, &case.expected_png(0));

    // A repo that is not cached is an error naming the cache path.
    args[i + 1] = "imago-test/not-downloaded".into();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = Command::new(env!("CARGO_BIN_EXE_imago"))
        .args(&refs)
        .env("HF_HUB_CACHE", cache.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("models--imago-test--not-downloaded"),
        "{stderr}"
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// `imago serve` on SIGTERM: stops accepting, finishes the request in flight, exits 0.
#[test]
fn serve_drains_in_flight_work_on_sigterm() {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut child = Command::new(env!("CARGO_BIN_EXE_imago"))
        .args([
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--model",
            "imago/tiny-sd",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .expect("listening line")
        .to_string();
    let body = r#"{"model":"imago/tiny-sd","prompt":"x","size":"256x256","provider":{"options":{"local":{"steps":12}}}}"#;
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        stream,
        "POST /api/v1/images HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "{}",
        &response[..response.len().min(200)]
    );
    let started = std::time::Instant::now();
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "the server did not exit after SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit:?}");
}
