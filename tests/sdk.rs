//! End to end with the official clients: the OpenRouter and OpenAI Python SDKs (pinned in
//! `tests/sdk/requirements.txt`) drive a real `imago serve` on the built-in tiny model through
//! `tests/sdk/openrouter_e2e.py` and `tests/sdk/openai_e2e.py`.
//!
//! Needs `python3` with the `venv` module: the first run installs the SDKs from PyPI into a venv
//! kept under cargo's target folder, reused while `requirements.txt` is unchanged. Without
//! python3 the test fails (it never skips silently).
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const API_KEY: &str = "test-key";
const MODEL: &str = "imago/tiny-sd";
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(120);
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(900);
const SCRIPTS: [&str; 2] = ["openrouter_e2e.py", "openai_e2e.py"];

fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("sdk")
}

/// Kept under cargo's target folder (`target/tmp/sdk-venv`), so `cargo clean` removes it.
fn venv_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("sdk-venv")
}

fn venv_python(venv: &Path) -> PathBuf {
    if cfg!(windows) {
        venv.join("Scripts").join("python.exe")
    } else {
        venv.join("bin").join("python")
    }
}

/// Runs a setup command to completion; panics with its output when it fails.
fn run_setup(command: &mut Command, what: &str) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("could not {what}: {e}"));
    assert!(
        output.status.success(),
        "could not {what} ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The venv's python, (re)creating the venv when it is missing or was built from another
/// `requirements.txt` (a copy of the file it was built from is kept inside it).
fn sdk_python() -> PathBuf {
    let requirements_path = sdk_dir().join("requirements.txt");
    let requirements = fs::read(&requirements_path)
        .unwrap_or_else(|e| panic!("read {}: {e}", requirements_path.display()));
    let venv = venv_dir();
    let python = venv_python(&venv);
    let stamp = venv.join("imago-requirements.txt");
    if python.exists() && fs::read(&stamp).ok().as_deref() == Some(requirements.as_slice()) {
        return python;
    }

    match Command::new("python3").arg("--version").output() {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!(
            "`python3 --version` failed ({}): the SDK end-to-end test needs Python 3 with the venv module",
            output.status
        ),
        Err(e) => panic!(
            "python3 was not found on PATH ({e}): the SDK end-to-end test needs Python 3 with the venv \
             module (on Debian/Ubuntu: apt-get install python3 python3-venv)"
        ),
    }
    if venv.exists() {
        fs::remove_dir_all(&venv).unwrap_or_else(|e| panic!("remove {}: {e}", venv.display()));
    }
    run_setup(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        "create the SDK venv with `python3 -m venv` (on Debian/Ubuntu the venv module is the python3-venv package)",
    );
    run_setup(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--quiet",
                "-r",
            ])
            .arg(&requirements_path),
        "install tests/sdk/requirements.txt from PyPI into the SDK venv",
    );
    fs::write(&stamp, &requirements).unwrap_or_else(|e| panic!("write {}: {e}", stamp.display()));
    python
}

/// Everything a child process writes, collected by background threads so its pipes never fill.
#[derive(Clone, Default)]
struct Transcript(Arc<Mutex<String>>);

impl Transcript {
    fn push(&self, line: &str) {
        let mut text = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        text.push_str(line);
        text.push('\n');
    }

    fn text(&self) -> String {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Copies `pipe` into the transcript line by line, also handing each line to `lines`.
    fn drain(
        &self,
        pipe: impl Read + Send + 'static,
        lines: Option<mpsc::Sender<String>>,
    ) -> thread::JoinHandle<()> {
        let transcript = self.clone();
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                transcript.push(&line);
                if let Some(lines) = &lines {
                    // The receiver stops listening once the address is known: later lines only go to the transcript.
                    let _ = lines.send(line);
                }
            }
        })
    }
}

/// A running `imago serve`, killed when dropped (also when the test panics).
struct Server {
    child: Child,
    base_url: String,
    log: Transcript,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The URL of a line like `listening on http://127.0.0.1:PORT`.
fn listening_url(line: &str) -> Option<String> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    let url = rest.split_whitespace().next()?.trim_end_matches('/');
    url.starts_with("http://").then(|| url.to_string())
}

/// Starts the server on a free loopback port. Contract with `imago serve`: once bound, it prints
/// `listening on http://127.0.0.1:PORT` on stdout (the real port when `--port 0` is given).
fn start_server() -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_imago"))
        .args([
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--model",
            MODEL,
            "--api-key",
            API_KEY,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start `imago serve`");
    let log = Transcript::default();
    let (lines_tx, lines_rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("server stdout is piped");
    let stderr = child.stderr.take().expect("server stderr is piped");
    log.drain(stdout, Some(lines_tx));
    log.drain(stderr, None);
    let mut server = Server {
        child,
        base_url: String::new(),
        log,
    };

    let deadline = Instant::now() + SERVER_START_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines_rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(url) = listening_url(&line) {
                    server.base_url = url;
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                "`imago serve` printed no `listening on http://...` line within {SERVER_START_TIMEOUT:?}; its output:\n{}",
                server.log.text()
            ),
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!(
                "`imago serve` closed stdout before printing `listening on http://...` (exit: {}); its output:\n{}",
                match server.child.try_wait() {
                    Ok(Some(status)) => status.to_string(),
                    _ => "still running".to_string(),
                },
                server.log.text()
            ),
        }
    }
    assert!(
        server.base_url.starts_with("http://127.0.0.1:"),
        "the server must listen on loopback only, it printed {}",
        server.base_url
    );
    wait_healthy(&mut server);
    server
}

/// The status code of `GET path` on a loopback `host:port`, over plain HTTP/1.1.
fn http_get_status(address: &str, path: &str) -> std::io::Result<u16> {
    let socket = address.parse().map_err(|e| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{address}: {e}"))
    })?;
    let mut stream = TcpStream::connect_timeout(&socket, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {API_KEY}\r\nConnection: close\r\n\r\n"
    )?;
    let mut status_line = String::new();
    BufReader::new(stream).read_line(&mut status_line)?;
    status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))
}

/// Polls `GET /health` until it answers 200 (bounded), failing early if the server exits.
fn wait_healthy(server: &mut Server) {
    let address = server.base_url.trim_start_matches("http://").to_string();
    let mut last = String::from("no attempt");
    for _ in 0..100 {
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!(
                "`imago serve` exited ({status}) before /health answered; its output:\n{}",
                server.log.text()
            );
        }
        match http_get_status(&address, "/health") {
            Ok(200) => return,
            Ok(status) => last = format!("HTTP {status}"),
            Err(e) => last = e.to_string(),
        }
        thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "GET {}/health never answered 200 (last: {last}); server output:\n{}",
        server.base_url,
        server.log.text()
    );
}

/// What one SDK script did: its exit status (None: killed at the timeout) and its output.
struct ScriptRun {
    script: &'static str,
    status: Option<ExitStatus>,
    output: String,
}

fn run_script(python: &Path, script: &'static str, base_url: &str) -> ScriptRun {
    let mut command = Command::new(python);
    command
        .arg(sdk_dir().join(script))
        .current_dir(sdk_dir())
        .env("IMAGO_E2E_BASE_URL", base_url)
        .env("IMAGO_E2E_API_KEY", API_KEY)
        .env("IMAGO_E2E_MODEL", MODEL)
        .env("PYTHONUNBUFFERED", "1")
        // No __pycache__ in the source tree.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost");
    // The SDKs read these; a developer's own settings must not redirect or authenticate the test.
    for name in [
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "OPENAI_ORG_ID",
        "OPENAI_PROJECT_ID",
        "OPENROUTER_API_KEY",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        command.env_remove(name);
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {script}: {e}"));
    let transcript = Transcript::default();
    let readers = [
        transcript.drain(child.stdout.take().expect("script stdout is piped"), None),
        transcript.drain(child.stderr.take().expect("script stderr is piped"), None),
    ];

    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(100)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    for reader in readers {
        let _ = reader.join();
    }
    ScriptRun {
        script,
        status,
        output: transcript.text(),
    }
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
    let python = sdk_python();
    let server = start_server();
    let runs: Vec<ScriptRun> = SCRIPTS
        .iter()
        .map(|script| run_script(&python, script, &server.base_url))
        .collect();

    let mut report = String::new();
    for run in &runs {
        let verdict = match run.status {
            Some(status) if status.success() => "passed".to_string(),
            Some(status) => format!("FAILED ({status})"),
            None => format!("FAILED (killed after {SCRIPT_TIMEOUT:?})"),
        };
        report.push_str(&format!("===== {} {verdict}\n{}\n", run.script, run.output));
    }
    let failed: Vec<&str> = runs
        .iter()
        .filter(|run| !run.status.is_some_and(|s| s.success()))
        .map(|run| run.script)
        .collect();
    assert!(
        failed.is_empty(),
        "SDK scripts failed: {failed:?}\n{report}===== server output\n{}",
        server.log.text()
    );
    println!("{report}");
}
