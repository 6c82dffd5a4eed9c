//! Scale-out: real nginx (Debian's package, installed with apt-get when missing) in front of two
//! `imago serve` replicas on loopback, with the README's SSE-safe proxy settings. A JSON request and
//! a stream go through it; then one replica is killed and nginx keeps serving from the other.
//! nginx runs as the current user from a temporary folder (its pid, logs and temp files there),
//! listening on 127.0.0.1 only.
#[path = "common/e2e.rs"]
mod e2e;

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use e2e::{http_get_status, start_server_with_env};
use serde_json::{json, Value};

const KEY: &str = "nginx-test-key";

/// The nginx binary: on PATH or in /usr/sbin, else installed with `apt-get install -y nginx`
/// (after `apt-get update` if the first try fails). Panics with the fix when that is impossible.
fn ensure_nginx() -> PathBuf {
    let find = || {
        ["nginx", "/usr/sbin/nginx"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| {
                Command::new(p)
                    .arg("-v")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            })
    };
    if let Some(nginx) = find() {
        return nginx;
    }
    let apt = |args: &[&str]| -> Result<(), String> {
        // As root apt-get runs directly; otherwise through passwordless sudo when there is one.
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        let mut command = if root {
            Command::new("apt-get")
        } else {
            let mut sudo = Command::new("sudo");
            sudo.args(["-n", "apt-get"]);
            sudo
        };
        let output = command
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .map_err(|e| format!("cannot run apt-get: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "apt-get {} failed ({}): {}{}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    };
    let installed = apt(&["install", "-y", "-q", "nginx"]).or_else(|first| {
        apt(&["update", "-q"])
            .and_then(|()| apt(&["install", "-y", "-q", "nginx"]))
            .map_err(|second| format!("{first}\nthen: {second}"))
    });
    if let Err(err) = installed {
        panic!(
            "this test needs nginx and could not install it. Install Debian's nginx package \
             (`apt-get install nginx`, as root) and run the test again.\n{err}"
        );
    }
    find().expect("nginx was installed by apt-get but `nginx -v` does not run")
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// The README's proxy settings, made runnable by any user from `dir`.
fn nginx_config(dir: &Path, port: u16, replicas: &[&str]) -> String {
    let d = dir.display();
    let servers: String = replicas
        .iter()
        .map(|r| format!("        server {r} max_fails=1 fail_timeout=30s;\n"))
        .collect();
    format!(
        r#"daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;

    upstream imago {{
{servers}        keepalive 16;
    }}

    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 32m;

        location / {{
            proxy_pass http://imago;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_buffering off;
            proxy_cache off;
            proxy_read_timeout 600s;
            proxy_send_timeout 600s;
            proxy_connect_timeout 2s;
            proxy_next_upstream error timeout;
            proxy_next_upstream_tries 2;
        }}
    }}
}}
"#
    )
}

/// A running nginx, stopped when dropped.
struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
}

impl Nginx {
    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    /// SIGTERM lets the master stop its worker (SIGKILL would orphan it, still listening).
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_nginx(nginx: &Path, port: u16, replicas: &[&str]) -> Nginx {
    let dir = tempfile::Builder::new()
        .prefix("imago-nginx-")
        .tempdir()
        .expect("temp dir");
    let config = dir.path().join("nginx.conf");
    std::fs::write(&config, nginx_config(dir.path(), port, replicas)).expect("write nginx.conf");
    let child = Command::new(nginx)
        .arg("-p")
        .arg(dir.path())
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .arg("-c")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    let mut nginx = Nginx { child, dir };
    let address = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = nginx.child.try_wait() {
            panic!(
                "nginx exited ({status}); its error log:\n{}",
                nginx.error_log()
            );
        }
        if let Ok(200) = http_get_status(&address, "/health", Some(KEY)) {
            return nginx;
        }
        assert!(
            Instant::now() < deadline,
            "nginx on {address} never proxied /health; its error log:\n{}",
            nginx.error_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

async fn post(url: &str, body: &Value) -> (u16, String) {
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .post(url)
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("request through nginx");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

fn first_image(text: &str) -> Vec<u8> {
    let body: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    base64::engine::general_purpose::STANDARD
        .decode(body["data"][0]["b64_json"].as_str().expect("b64_json"))
        .expect("base64")
}

/// Event names and data of an SSE body.
fn sse_events(text: &str) -> Vec<(Option<String>, String)> {
    let mut events = Vec::new();
    for block in text.replace("\r\n", "\n").split("\n\n") {
        let name = block
            .lines()
            .find_map(|l| l.strip_prefix("event:"))
            .map(|n| n.trim().to_string());
        let data: Vec<&str> = block
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(str::trim_start)
            .collect();
        if !data.is_empty() {
            events.push((name, data.join("\n")));
        }
    }
    events
}

fn check_stream(text: &str) -> Vec<u8> {
    let events = sse_events(text);
    let names: Vec<&str> = events.iter().filter_map(|(n, _)| n.as_deref()).collect();
    assert_eq!(
        names,
        [
            "image_generation.partial_image",
            "image_generation.partial_image",
            "image_generation.completed"
        ],
        "{text}"
    );
    assert_eq!(events.last().map(|(_, d)| d.as_str()), Some("[DONE]"));
    let completed: Value = serde_json::from_str(&events[2].1).expect("JSON");
    base64::engine::general_purpose::STANDARD
        .decode(completed["b64_json"].as_str().expect("b64_json"))
        .expect("base64")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_in_front_of_two_replicas_survives_losing_one() {
    let nginx_bin = ensure_nginx();
    let args = ["--model", "imago/tiny-sd", "--no-playground"];
    let first = start_server_with_env(&args, Some(KEY), &[]);
    let second = start_server_with_env(&args, Some(KEY), &[]);
    let replicas: Vec<String> = [&first, &second]
        .iter()
        .map(|s| s.base_url.trim_start_matches("http://").to_string())
        .collect();
    let port = free_port();
    let nginx = start_nginx(
        &nginx_bin,
        port,
        &replicas.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let url = format!("http://127.0.0.1:{port}/api/v1/images");
    let request = json!({"model": "imago/tiny-sd", "prompt": "a red barn", "seed": 11});
    let mut stream_request = request.clone();
    stream_request["stream"] = json!(true);

    // Stateless replicas: the same image from either, directly or through nginx.
    let (status, direct) = post(&format!("{}/api/v1/images", first.base_url), &request).await;
    assert_eq!(status, 200, "{direct}");
    let reference = first_image(&direct);
    for _ in 0..2 {
        let (status, text) = post(&url, &request).await;
        assert_eq!(status, 200, "{text}\nnginx log:\n{}", nginx.error_log());
        assert_eq!(first_image(&text), reference);
    }
    let (status, text) = post(&url, &stream_request).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(check_stream(&text), reference);

    // One replica gone: nginx passes over it (connect refused) to the other.
    drop(first);
    for i in 0..4 {
        let (status, text) = post(&url, &request).await;
        assert_eq!(
            status,
            200,
            "request {i} after losing a replica: {text}\nnginx log:\n{}",
            nginx.error_log()
        );
        assert_eq!(first_image(&text), reference);
    }
    for _ in 0..2 {
        let (status, text) = post(&url, &stream_request).await;
        assert_eq!(status, 200, "{text}");
        assert_eq!(check_stream(&text), reference);
    }
    assert!(
        nginx.error_log().contains("Connection refused"),
        "nginx should have met the dead replica:\n{}",
        nginx.error_log()
    );
    drop(second);
}
