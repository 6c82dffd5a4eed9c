//! End to end with the official clients: the OpenRouter and OpenAI Python SDKs (pinned in
//! `tests/sdk/requirements.txt`) drive a real `imago serve` on the built-in tiny model through
//! `tests/sdk/openrouter_e2e.py` and `tests/sdk/openai_e2e.py`.
//!
//! Needs `python3` with the `venv` module: the first run installs the SDKs from PyPI into a venv
//! kept under cargo's target folder, reused while `requirements.txt` is unchanged. Without
//! python3 the test fails (it never skips silently).
#[path = "common/e2e.rs"]
mod e2e;

use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::{listening_url, python_venv, run_script, start_server, ScriptRun};

const API_KEY: &str = "test-key";
const MODEL: &str = "imago/tiny-sd";
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(900);
const SCRIPTS: [&str; 2] = ["openrouter_e2e.py", "openai_e2e.py"];

fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("sdk")
}

#[test]
fn listening_line_is_parsed() {
    assert_eq!(
        listening_url("listening on http://127.0.0.1:40123").as_deref(),
        Some("http://127.0.0.1:40123")
    );
    assert_eq!(
        listening_url("INFO imago: listening on http://127.0.0.1:8080/ (2 models)").as_deref(),
        Some("http://127.0.0.1:8080")
    );
    assert_eq!(listening_url("loading model imago/tiny-sd"), None);
}

#[test]
fn official_sdks_drive_the_server() {
    let python = python_venv("sdk-venv", &sdk_dir().join("requirements.txt"));
    let server = start_server(&["--model", MODEL], Some(API_KEY));
    let env = [
        ("IMAGO_E2E_BASE_URL", server.base_url.as_str()),
        ("IMAGO_E2E_API_KEY", API_KEY),
        ("IMAGO_E2E_MODEL", MODEL),
    ];
    let runs: Vec<ScriptRun> = SCRIPTS
        .iter()
        .map(|script| run_script(&python, &sdk_dir(), script, &env, SCRIPT_TIMEOUT))
        .collect();

    let report: String = runs.iter().map(|run| run.report(SCRIPT_TIMEOUT)).collect();
    let failed: Vec<&str> = runs
        .iter()
        .filter(|run| !run.passed())
        .map(|run| run.script.as_str())
        .collect();
    assert!(
        failed.is_empty(),
        "SDK scripts failed: {failed:?}\n{report}===== server output\n{}",
        server.log.text()
    );
    println!("{report}");
}
