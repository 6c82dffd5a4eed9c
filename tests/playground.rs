//! The browser playground end to end: `tests/playground/playground_e2e.py` drives the page in
//! headless Chromium (Debian's `chromium` package through the Python `playwright` package, pinned
//! in `tests/playground/requirements.txt`; no browser download) against a real `imago serve` on
//! the built-in tiny model (and a fixture model that fails mid-stream) with an API key: key entry,
//! previews then the final image, history, Stop, server errors. It writes a screenshot to `target/tmp/playground.png`, and to
//! `docs/playground.png` (the README's) when `IMAGO_UPDATE_SCREENSHOTS=1`.
//!
//! Needs python3 with the venv module, PyPI, and Chromium: when `/usr/bin/chromium` is missing the
//! test installs Debian's package with apt-get (as root); `IMAGO_CHROMIUM=/path` uses another
//! build. Without a browser the test fails with what to do, it never skips.
#[path = "common/e2e.rs"]
mod e2e;
#[path = "common/server.rs"]
mod server;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use e2e::{http_get_status, python_venv, run_script, run_setup, start_server};

const API_KEY: &str = "playground-key";
const MODEL: &str = "imago/tiny-sd";
/// A fixture copy whose scheduler config fails once a generation has started: its streams end
/// with an `error` event.
const BROKEN_MODEL: &str = "broken-scheduler";
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(600);
const DEBIAN_CHROMIUM: &str = "/usr/bin/chromium";

fn playground_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("playground")
}

/// The browser to drive: `IMAGO_CHROMIUM`, else Debian's, installed with apt-get when missing.
fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("IMAGO_CHROMIUM") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "IMAGO_CHROMIUM={} is not a file",
            path.display()
        );
        return path;
    }
    let path = PathBuf::from(DEBIAN_CHROMIUM);
    if path.is_file() {
        return path;
    }
    let fix = "the playground test needs Chromium: install Debian's package \
               (`apt-get install chromium`, as root) or point IMAGO_CHROMIUM at a Chromium binary";
    let apt = |args: &[&str], what: &str| {
        run_setup(
            Command::new("apt-get")
                .args(["-q", "-o", "DPkg::Lock::Timeout=300"])
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive"),
            &format!("{what} ({fix})"),
        )
    };
    apt(&["update"], "update the apt package lists");
    apt(
        &["install", "-y", "chromium"],
        "install chromium with apt-get",
    );
    assert!(
        path.is_file(),
        "apt-get installed chromium but {DEBIAN_CHROMIUM} is missing; {fix}"
    );
    path
}

#[test]
fn the_playground_works_in_a_browser() {
    let browser = chromium();
    let python = python_venv(
        "playground-venv",
        &playground_dir().join("requirements.txt"),
    );
    let broken = server::fixture_model_copy("sd-turbo-1step", BROKEN_MODEL, |config| {
        config["timestep_spacing"] = serde_json::json!("bogus");
    });
    let broken_arg = format!("{BROKEN_MODEL}={}", broken.display());
    let server = start_server(
        &["--model", MODEL, "--model", broken_arg.as_str()],
        Some(API_KEY),
    );
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("playground.png");
    let run = run_script(
        &python,
        &playground_dir(),
        "playground_e2e.py",
        &[
            ("IMAGO_E2E_BASE_URL", server.base_url.as_str()),
            ("IMAGO_E2E_API_KEY", API_KEY),
            ("IMAGO_E2E_MODEL", MODEL),
            ("IMAGO_E2E_BROKEN_MODEL", BROKEN_MODEL),
            ("IMAGO_E2E_CHROMIUM", &browser.to_string_lossy()),
            ("IMAGO_E2E_SCREENSHOT", &screenshot.to_string_lossy()),
        ],
        SCRIPT_TIMEOUT,
    );
    let report = run.report(SCRIPT_TIMEOUT);
    assert!(
        run.passed(),
        "{report}===== server output\n{}",
        server.log.text()
    );
    println!("{report}");
    if std::env::var_os("IMAGO_UPDATE_SCREENSHOTS").is_some_and(|v| v == "1") {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
        std::fs::create_dir_all(&docs).expect("create docs/");
        std::fs::copy(&screenshot, docs.join("playground.png")).expect("copy the screenshot");
    }
}

#[test]
fn no_playground_turns_the_page_off() {
    let server = start_server(&["--model", MODEL, "--no-playground"], None);
    let address = server.base_url.trim_start_matches("http://");
    for path in ["/", "/playground/app.js", "/playground/style.css"] {
        assert_eq!(
            http_get_status(address, path, None).expect("GET"),
            404,
            "GET {path} with --no-playground"
        );
    }
    assert_eq!(
        http_get_status(address, "/api/v1/images/models", None).expect("GET"),
        200,
        "the API is still served"
    );
}
