//! End-to-end harness shared by the tests that drive a real `imago serve` from Python scripts
//! (`tests/sdk.rs`, `tests/playground.rs`): a venv from a pinned requirements file kept under
//! cargo's target folder, the server as a child process on a free loopback port, and scripts run
//! with a deadline and their output collected.
#![allow(dead_code)]
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub const SERVER_START_TIMEOUT: Duration = Duration::from_secs(120);

/// Kept under cargo's target folder (`target/tmp/<name>`), so `cargo clean` removes it.
fn venv_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(name)
}

fn venv_python(venv: &Path) -> PathBuf {
    if cfg!(windows) {
        venv.join("Scripts").join("python.exe")
    } else {
        venv.join("bin").join("python")
    }
}

/// Runs a setup command to completion; panics with its output when it fails.
pub fn run_setup(command: &mut Command, what: &str) {
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

/// The python of the venv `target/tmp/<name>`, (re)creating it from PyPI when it is missing or
/// was built from another `requirements` file (a copy of the file it was built from is kept
/// inside it). Panics with the fix when python3 or its venv module is missing.
pub fn python_venv(name: &str, requirements_path: &Path) -> PathBuf {
    let requirements = fs::read(requirements_path)
        .unwrap_or_else(|e| panic!("read {}: {e}", requirements_path.display()));
    let venv = venv_dir(name);
    let python = venv_python(&venv);
    let stamp = venv.join("imago-requirements.txt");
    if python.exists() && fs::read(&stamp).ok().as_deref() == Some(requirements.as_slice()) {
        return python;
    }

    match Command::new("python3").arg("--version").output() {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!(
            "`python3 --version` failed ({}): this end-to-end test needs Python 3 with the venv module",
            output.status
        ),
        Err(e) => panic!(
            "python3 was not found on PATH ({e}): this end-to-end test needs Python 3 with the venv \
             module (on Debian/Ubuntu: apt-get install python3 python3-venv)"
        ),
    }
    if venv.exists() {
        fs::remove_dir_all(&venv).unwrap_or_else(|e| panic!("remove {}: {e}", venv.display()));
    }
    run_setup(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        &format!(
            "create the venv {} with `python3 -m venv` (on Debian/Ubuntu the venv module is the \
             python3-venv package)",
            venv.display()
        ),
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
            .arg(requirements_path),
        &format!(
            "install {} from PyPI into {}",
            requirements_path.display(),
            venv.display()
        ),
    );
    fs::write(&stamp, &requirements).unwrap_or_else(|e| panic!("write {}: {e}", stamp.display()));
    python
}

/// Everything a child process writes, collected by background threads so its pipes never fill.
#[derive(Clone, Default)]
pub struct Transcript(Arc<Mutex<String>>);

impl Transcript {
    fn push(&self, line: &str) {
        let mut text = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        text.push_str(line);
        text.push('\n');
    }

    pub fn text(&self) -> String {
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
pub struct Server {
    child: Child,
    pub base_url: String,
    pub log: Transcript,
    api_key: Option<String>,
}

impl Server {
    /// The server's process id (to read its memory from /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The URL of a line like `listening on http://127.0.0.1:PORT`.
pub fn listening_url(line: &str) -> Option<String> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    let url = rest.split_whitespace().next()?.trim_end_matches('/');
    url.starts_with("http://").then(|| url.to_string())
}

/// Starts `imago serve --host 127.0.0.1 --port 0 ARGS` (plus `--api-key` when given) and waits
/// until `/health` answers. Contract with `imago serve`: once bound, it prints
/// `listening on http://127.0.0.1:PORT` on stdout (the real port when `--port 0` is given).
pub fn start_server(args: &[&str], api_key: Option<&str>) -> Server {
    start_server_with_env(args, api_key, &[])
}

/// As [`start_server`], with `env` added to the server's environment and proxy variables removed
/// (a router's requests to loopback upstreams must not go through a developer's proxy).
pub fn start_server_with_env(args: &[&str], api_key: Option<&str>, env: &[(&str, &str)]) -> Server {
    let mut command = Command::new(env!("CARGO_BIN_EXE_imago"));
    command
        .args(["serve", "--host", "127.0.0.1", "--port", "0"])
        .args(args)
        .envs(env.iter().copied());
    for name in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        command.env_remove(name);
    }
    if let Some(key) = api_key {
        command.args(["--api-key", key]);
    }
    let mut child = command
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
        api_key: api_key.map(str::to_string),
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
pub fn http_get_status(address: &str, path: &str, api_key: Option<&str>) -> std::io::Result<u16> {
    let socket = address.parse().map_err(|e| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{address}: {e}"))
    })?;
    let mut stream = TcpStream::connect_timeout(&socket, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let auth = api_key
        .map(|key| format!("Authorization: Bearer {key}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\n{auth}Connection: close\r\n\r\n"
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
        match http_get_status(&address, "/health", server.api_key.as_deref()) {
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

/// What one script did: its exit status (None: killed at the timeout) and its output.
pub struct ScriptRun {
    pub script: String,
    pub status: Option<ExitStatus>,
    pub output: String,
}

impl ScriptRun {
    pub fn passed(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// `===== script passed|FAILED (...)` and its output.
    pub fn report(&self, timeout: Duration) -> String {
        let verdict = match self.status {
            Some(status) if status.success() => "passed".to_string(),
            Some(status) => format!("FAILED ({status})"),
            None => format!("FAILED (killed after {timeout:?})"),
        };
        format!("===== {} {verdict}\n{}\n", self.script, self.output)
    }
}

/// Runs `python dir/script` in `dir` with `env` added, killed after `timeout`. Proxy settings and
/// the SDKs' own variables are removed: a developer's settings must not redirect the test.
pub fn run_script(
    python: &Path,
    dir: &Path,
    script: &str,
    env: &[(&str, &str)],
    timeout: Duration,
) -> ScriptRun {
    let mut command = Command::new(python);
    command
        .arg(dir.join(script))
        .current_dir(dir)
        .envs(env.iter().copied())
        .env("PYTHONUNBUFFERED", "1")
        // No __pycache__ in the source tree.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost");
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

    let deadline = Instant::now() + timeout;
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
        script: script.to_string(),
        status,
        output: transcript.text(),
    }
}
