//! Hostile clients, all on loopback and bounded in time: malformed and oversized input, a PNG
//! decompression bomb, a 48 MiB body, slowloris connections, reference URLs aimed at loopback
//! canaries, per-key quotas and rates, request ids in responses and JSON logs, SSE streams at
//! shutdown, and a bounded `cargo fuzz` run of the request validator. Tests that need the real
//! process (its memory, its flags, its logs) spawn `imago serve`; the others run in process.
#[path = "common/e2e.rs"]
mod e2e;
#[path = "common/png_bomb.rs"]
mod png_bomb;
#[path = "common/server.rs"]
mod server;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use imago::api::connections::ConnectionLimits;
use imago::config::Limits;
use serde_json::{json, Value};

const TINY: &str = "imago/tiny-sd";
const OR: &str = "/api/v1/images";
const OA: &str = "/v1/images/generations";

// ------------------------------------------------------------------------------------------------
// A minimal HTTP/1.1 client over std TCP (a raw socket is what hostile clients use, too)
// ------------------------------------------------------------------------------------------------

struct Reply {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_string())
        })
    }

    /// The error message of either envelope.
    fn message(&self) -> String {
        self.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

fn addr_of(base_url: &str) -> SocketAddr {
    base_url
        .trim_start_matches("http://")
        .parse()
        .expect("host:port")
}

/// Sends one request (`Connection: close`) and reads the whole answer, within 60 s.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        request.push_str("Content-Type: application/json\r\n");
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("send head");
    stream.write_all(body).expect("send body");
    read_reply(&mut stream)
}

fn read_reply(stream: &mut TcpStream) -> Reply {
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    parse_reply(&raw)
}

fn parse_reply(raw: &[u8]) -> Reply {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Reply { status, head, body }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&data[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = eol + 2;
        out.extend_from_slice(&data[start..(start + size).min(data.len())]);
        data = &data[(start + size + 2).min(data.len())..];
    }
    out
}

fn post_json(addr: SocketAddr, path: &str, key: Option<&str>, body: &Value) -> Reply {
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut headers = Vec::new();
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth.as_str()));
    }
    http(
        addr,
        "POST",
        path,
        &headers,
        &serde_json::to_vec(body).unwrap(),
    )
}

fn tiny_body(extra: Value) -> Value {
    let mut body = json!({
        "model": TINY,
        "prompt": "a lighthouse",
        "size": "64x64",
        "provider": {"options": {"local": {"steps": 1}}},
    });
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        for (k, v) in extra {
            if v.is_null() {
                body.remove(&k);
            } else {
                body.insert(k, v);
            }
        }
    }
    body
}

fn tiny_oa_body(extra: Value) -> Value {
    let mut body = json!({"model": TINY, "prompt": "a lighthouse", "size": "256x256"});
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    body
}

/// Resident and peak memory of a process, in bytes (`VmRSS`, `VmHWM`).
fn memory_of(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

// ------------------------------------------------------------------------------------------------
// A PNG decompression bomb (tests/common/png_bomb.rs)
// ------------------------------------------------------------------------------------------------

fn data_url(bytes: &[u8], media_type: &str) -> String {
    format!(
        "data:{media_type};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

fn with_reference(url: &str) -> Value {
    tiny_body(json!({
        "input_references": [{"type": "image_url", "image_url": {"url": url}}],
        "provider": {"options": {"local": {"steps": 2}}},
    }))
}

#[test]
fn a_30000x30000_png_bomb_is_refused_fast_without_memory_growth() {
    let server = e2e::start_server(&["--model", TINY], None);
    let addr = addr_of(&server.base_url);
    let bomb = png_bomb::zero_png(30_000, 30_000);
    assert!(bomb.len() < 1_000_000, "bomb is {} bytes", bomb.len());
    let body = with_reference(&data_url(&bomb, "image/png"));
    // Warm the server up on the same path without a bomb (a first request allocates buffers).
    let warm = post_json(
        addr,
        OR,
        None,
        &with_reference(&data_url(b"<!DOCTYPE html>", "image/png")),
    );
    assert_eq!(warm.status, 400);
    let (rss_before, peak_before) = memory_of(server.pid());
    let mut slowest = Duration::ZERO;
    for _ in 0..3 {
        let start = Instant::now();
        let reply = post_json(addr, OR, None, &body);
        slowest = slowest.max(start.elapsed());
        assert_eq!(reply.status, 400, "{}", reply.message());
        let message = reply.message();
        assert!(
            message.contains("30000x30000") && message.contains("limit"),
            "{message}"
        );
        assert_eq!(
            reply.json()["error"]["metadata"]["field"],
            "input_references[0]"
        );
    }
    let (rss_after, peak_after) = memory_of(server.pid());
    eprintln!(
        "PNG bomb 30000x30000 ({} bytes, {} as a data URL): refused in at most {slowest:?}; \
         server RSS {} -> {} MiB, peak {} -> {} MiB",
        bomb.len(),
        body.to_string().len(),
        rss_before >> 20,
        rss_after >> 20,
        peak_before >> 20,
        peak_after >> 20
    );
    assert!(slowest < Duration::from_secs(1), "took {slowest:?}");
    // Decoding would need 2.7 GB; the request itself (a 1 MB body, its base64 decode) a few MB.
    assert!(
        peak_after.saturating_sub(peak_before) < 64 << 20,
        "peak memory grew from {peak_before} to {peak_after} bytes"
    );
}

// ------------------------------------------------------------------------------------------------
// Oversized and slow bodies, slowloris
// ------------------------------------------------------------------------------------------------

#[test]
fn a_48_mib_body_is_refused_with_413_before_it_is_read() {
    let server = e2e::start_server(&["--model", TINY], None);
    let addr = addr_of(&server.base_url);
    let (_, peak_before) = memory_of(server.pid());

    // Declared: answered from the head alone (none of the body is ever sent).
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let start = Instant::now();
    write!(
        stream,
        "POST {OR} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        48 << 20
    )
    .unwrap();
    let mut raw = vec![0u8; 4096];
    let n = stream.read(&mut raw).expect("an answer before the body");
    let reply = parse_reply(&raw[..n]);
    eprintln!("48 MiB declared body: 413 after {:?}", start.elapsed());
    assert_eq!(reply.status, 413);
    assert!(
        reply.message().contains("--max-body-bytes"),
        "{}",
        reply.message()
    );
    assert_eq!(reply.json()["error"]["code"], 413);

    // Chunked (no length up front): refused once past the limit, while the client still sends.
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "POST {OA} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let chunk = vec![b' '; 1 << 20];
        let mut sent = 0usize;
        for _ in 0..48 {
            if write!(writer, "{:x}\r\n", chunk.len()).is_err()
                || writer.write_all(&chunk).is_err()
                || writer.write_all(b"\r\n").is_err()
            {
                break;
            }
            sent += chunk.len();
        }
        sent
    });
    let reply = read_reply(&mut stream);
    let sent = sender.join().unwrap();
    eprintln!(
        "48 MiB chunked body: 413 after the client sent {} MiB",
        sent >> 20
    );
    assert_eq!(reply.status, 413);
    assert_eq!(reply.json()["error"]["code"], "request_too_large");
    let (_, peak_after) = memory_of(server.pid());
    eprintln!(
        "server peak memory {} -> {} MiB",
        peak_before >> 20,
        peak_after >> 20
    );
    assert!(
        peak_after.saturating_sub(peak_before) < 48 << 20,
        "the server's peak memory grew by {} MiB",
        (peak_after - peak_before) >> 20
    );
}

#[test]
fn slowloris_clients_are_disconnected_and_others_are_served() {
    let server = e2e::start_server(
        &[
            "--model",
            TINY,
            "--header-timeout",
            "1",
            "--idle-timeout",
            "1",
        ],
        None,
    );
    let addr = addr_of(&server.base_url);
    let head = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nX-Padding: ");
    // Twenty clients each sending their head one byte every 200 ms, never finishing it.
    let clients: Vec<_> = (0..20)
        .map(|_| {
            let head = head.clone();
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(addr).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_millis(10)))
                    .unwrap();
                let start = Instant::now();
                for byte in head.bytes().chain(std::iter::repeat(b'a')) {
                    if start.elapsed() > Duration::from_secs(10) {
                        return None;
                    }
                    let mut probe = [0u8; 512];
                    match stream.read(&mut probe) {
                        Ok(_) => return Some(start.elapsed()), // an answer (408) or EOF: closed
                        Err(e)
                            if e.kind() == std::io::ErrorKind::WouldBlock
                                || e.kind() == std::io::ErrorKind::TimedOut => {}
                        Err(_) => return Some(start.elapsed()),
                    }
                    if stream.write_all(&[byte]).is_err() {
                        return Some(start.elapsed());
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                None
            })
        })
        .collect();
    // Meanwhile a normal client is answered at once.
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    assert_eq!(http(addr, "GET", "/health", &[], b"").status, 200);
    assert!(start.elapsed() < Duration::from_secs(1));
    let mut closed_after = Vec::new();
    for client in clients {
        let elapsed = client
            .join()
            .unwrap()
            .expect("a slowloris connection stayed open for 10 s");
        closed_after.push(elapsed);
    }
    let latest = closed_after.iter().max().unwrap();
    eprintln!("20 slowloris connections (1 byte / 200 ms) closed after at most {latest:?} with --header-timeout 1");
    assert!(*latest < Duration::from_secs(3), "{latest:?}");

    // An idle keep-alive connection is closed too, and a stalled body gets 408.
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let start = Instant::now();
    let mut sink = Vec::new();
    let _ = idle.read_to_end(&mut sink);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );

    // A slow prefix of the HTTP/2 preface (before hyper's own timers run) is bounded too.
    let mut preface = TcpStream::connect(addr).unwrap();
    preface
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    preface.write_all(b"PRI * HT").unwrap();
    let start = Instant::now();
    let _ = preface.read_to_end(&mut sink);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );

    let mut stalled = TcpStream::connect(addr).unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stalled,
        "POST {OR} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"model\""
    )
    .unwrap();
    let start = Instant::now();
    let reply = read_reply(&mut stalled);
    eprintln!("stalled body: {} after {:?}", reply.status, start.elapsed());
    assert_eq!(reply.status, 408);
    assert!(
        reply.message().contains("--idle-timeout"),
        "{}",
        reply.message()
    );
    assert!(start.elapsed() < Duration::from_secs(3));
}

// ------------------------------------------------------------------------------------------------
// Malformed input (what tests/http.rs does not already cover)
// ------------------------------------------------------------------------------------------------

#[tokio::test]
async fn malformed_and_oversized_requests_are_4xx_naming_the_problem() {
    let (engine, caps) = server::start_engine(vec![server::model(TINY, TINY)], 8).await;
    let limits = Limits {
        max_pixels_per_request: 2 * 64 * 64,
        ..Limits::default()
    };
    let hardened =
        server::serve_hardened(engine, caps, vec![], limits, ConnectionLimits::default()).await;
    let addr = hardened.server.addr;
    let raw = |path: &'static str, body: &'static [u8]| async move {
        tokio::task::spawn_blocking(move || http(addr, "POST", path, &[], body))
            .await
            .unwrap()
    };
    let json_post = |path: &'static str, body: Value| async move {
        tokio::task::spawn_blocking(move || post_json(addr, path, None, &body))
            .await
            .unwrap()
    };
    for path in [OR, OA] {
        for (what, body) in [
            (
                "truncated JSON",
                &b"{\"model\": \"imago/tiny-sd\", \"prompt\": "[..],
            ),
            ("not JSON", b"prompt=a+cat"),
            ("a JSON array", b"[1, 2, 3]"),
            ("empty body", b""),
            ("a bare key", b"{bad"),
        ] {
            let reply = raw(path, body).await;
            assert_eq!(reply.status, 400, "{path} {what}: {}", reply.message());
            assert!(!reply.message().is_empty(), "{path} {what}");
            // Broken syntax is named as such, not blamed on a field.
            if what != "a JSON array" {
                assert!(
                    reply.message().contains("not valid JSON"),
                    "{path} {what}: {}",
                    reply.message()
                );
            }
        }
    }
    let huge_prompt = "a".repeat(32_001);
    let cases: Vec<(&str, &'static str, Value, &str, &str)> = vec![
        (
            "prompt a number",
            OR,
            tiny_body(json!({"prompt": 5})),
            "prompt",
            "string",
        ),
        (
            "n a string",
            OA,
            tiny_oa_body(json!({"n": "two"})),
            "n",
            "two",
        ),
        (
            "size 0x0",
            OR,
            tiny_body(json!({"size": "0x0"})),
            "size",
            "0x0",
        ),
        (
            "size 0x0",
            OA,
            tiny_oa_body(json!({"size": "0x0"})),
            "size",
            "0x0",
        ),
        (
            "size 100000x100000",
            OR,
            tiny_body(json!({"size": "100000x100000"})),
            "size",
            "100000",
        ),
        (
            "size 100000x100000",
            OA,
            tiny_oa_body(json!({"size": "100000x100000"})),
            "size",
            "100000",
        ),
        (
            "prompt over 32000 characters",
            OR,
            tiny_body(json!({"prompt": huge_prompt})),
            "prompt",
            "32000",
        ),
        (
            "n x pixels over --max-pixels-per-request",
            OR,
            tiny_body(json!({"n": 3})),
            "n",
            "--max-pixels-per-request",
        ),
        (
            "n x pixels over --max-pixels-per-request",
            OA,
            tiny_oa_body(json!({"n": 2})),
            "n",
            "--max-pixels-per-request",
        ),
        (
            "file: URL",
            OR,
            with_reference("file:///etc/passwd"),
            "input_references[0].image_url.url",
            "file:///etc/passwd",
        ),
        (
            "gopher: URL",
            OR,
            with_reference("gopher://127.0.0.1:70/x"),
            "input_references[0].image_url.url",
            "gopher",
        ),
        (
            "an HTML page as a data URL image",
            OR,
            with_reference(&data_url(b"<!DOCTYPE html><html></html>", "image/png")),
            "input_references[0]",
            "not an image",
        ),
        (
            "a GIF",
            OR,
            with_reference(&data_url(
                b"GIF89a\x01\x00\x01\x00\x00\x00\x00;",
                "image/png",
            )),
            "input_references[0]",
            "gif",
        ),
        (
            "bad base64",
            OR,
            with_reference("data:image/png;base64,iVBOR!!w0KGgo="),
            "input_references[0].image_url.url",
            "base64",
        ),
        (
            "17 references",
            OR,
            tiny_body(
                json!({"input_references": vec![json!({"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}); 17]}),
            ),
            "input_references",
            "16",
        ),
    ];
    for (what, path, body, field, words) in cases {
        let reply = json_post(path, body).await;
        assert_eq!(reply.status, 400, "{path} {what}: {}", reply.message());
        let envelope = reply.json();
        let named = if path == OA {
            envelope["error"]["param"].as_str().map(str::to_string)
        } else {
            envelope["error"]["metadata"]["field"]
                .as_str()
                .map(str::to_string)
        };
        assert_eq!(named.as_deref(), Some(field), "{path} {what}: {envelope}");
        assert!(
            reply.message().contains(words),
            "{path} {what}: {:?} should mention {words:?}",
            reply.message()
        );
    }
    // At the cap it is served.
    let reply = json_post(OR, tiny_body(json!({"n": 2}))).await;
    assert_eq!(reply.status, 200, "{}", reply.message());
}

// ------------------------------------------------------------------------------------------------
// SSRF: reference URLs aimed at loopback canaries
// ------------------------------------------------------------------------------------------------

#[tokio::test]
async fn reference_urls_to_loopback_never_reach_the_canary() {
    let (engine, caps) = server::start_engine(vec![server::model(TINY, TINY)], 8).await;
    let hardened = server::serve_hardened(
        engine,
        caps,
        vec![],
        Limits::default(),
        ConnectionLimits::default(),
    )
    .await;
    let addr = hardened.server.addr;
    // Bare listeners: they record any connection attempt, not only HTTP requests.
    let canary4 = TcpListener::bind("127.0.0.1:0").unwrap();
    canary4.set_nonblocking(true).unwrap();
    let port4 = canary4.local_addr().unwrap().port();
    let canary6 = TcpListener::bind("[::1]:0").ok();
    if let Some(c) = &canary6 {
        c.set_nonblocking(true).unwrap();
    }
    let port6 = canary6
        .as_ref()
        .map_or(port4, |c| c.local_addr().unwrap().port());
    let urls = [
        format!("http://127.0.0.1:{port4}/cat.png"),
        format!("http://localhost:{port4}/cat.png"),
        format!("http://[::1]:{port6}/cat.png"),
        format!("http://127.1:{port4}/cat.png"),
        format!("http://2130706433:{port4}/cat.png"),
        format!("http://[::ffff:127.0.0.1]:{port4}/cat.png"),
        format!("https://127.0.0.1:{port4}/cat.png"),
    ];
    for url in urls {
        let body = with_reference(&url);
        let reply = tokio::task::spawn_blocking(move || post_json(addr, OR, None, &body))
            .await
            .unwrap();
        assert_eq!(reply.status, 400, "{url}: {}", reply.message());
        assert!(
            reply.message().contains("not a public address"),
            "{url}: {}",
            reply.message()
        );
    }
    for (name, canary) in [("127.0.0.1", Some(&canary4)), ("[::1]", canary6.as_ref())] {
        let Some(canary) = canary else {
            eprintln!("no IPv6 loopback here: the [::1] URL was refused without a canary");
            continue;
        };
        match canary.accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("the server connected to the {name} canary: {other:?}"),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Per-key quotas and rates, request ids, JSON logs
// ------------------------------------------------------------------------------------------------

#[test]
fn key_quotas_rates_and_request_ids() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    std::fs::write(
        &keys,
        "[[keys]]\nname = \"metered\"\nkey = \"sk-metered\"\nquota_images = 3\n\n\
         [[keys]]\nname = \"paced\"\nkey = \"sk-paced\"\nrate_per_minute = 2\n\n\
         [[keys]]\nname = \"open\"\nkey = \"sk-open\"\n",
    )
    .unwrap();
    let server = e2e::start_server(
        &[
            "--model",
            TINY,
            "--api-keys-file",
            keys.to_str().unwrap(),
            "--log-format",
            "json",
            "--log",
            "info",
        ],
        None,
    );
    let addr = addr_of(&server.base_url);

    // Quota: 2 + 1 images pass, the next is 402 in either envelope and names the quota.
    assert_eq!(
        post_json(addr, OR, Some("sk-metered"), &tiny_body(json!({"n": 2}))).status,
        200
    );
    let over = post_json(addr, OR, Some("sk-metered"), &tiny_body(json!({"n": 2})));
    assert_eq!(over.status, 402, "{}", over.message());
    let envelope = over.json();
    assert_eq!(envelope["error"]["code"], 402);
    assert_eq!(envelope["error"]["metadata"]["quota_images"], 3);
    assert_eq!(envelope["error"]["metadata"]["used_images"], 2);
    assert!(
        over.message().contains("quota_images"),
        "{}",
        over.message()
    );
    assert_eq!(
        post_json(addr, OR, Some("sk-metered"), &tiny_body(json!({}))).status,
        200
    );
    let over = post_json(addr, OA, Some("sk-metered"), &tiny_oa_body(json!({})));
    assert_eq!(over.status, 402);
    assert_eq!(over.json()["error"]["type"], "insufficient_quota");

    // Rate: two requests a minute, the third is 429 with Retry-After; refusals are not counted.
    for _ in 0..2 {
        assert_eq!(
            post_json(addr, OR, Some("sk-paced"), &tiny_body(json!({}))).status,
            200
        );
    }
    let limited = post_json(addr, OA, Some("sk-paced"), &tiny_oa_body(json!({})));
    assert_eq!(limited.status, 429, "{}", limited.message());
    let retry: u64 = limited
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(limited.json()["error"]["code"], "rate_limit_exceeded");
    assert!(limited.message().contains("rate_per_minute"));

    // Request ids: generated when absent, echoed when sane, replaced when not.
    let generated = http(addr, "GET", "/health", &[], b"");
    let id = generated.header("x-request-id").expect("X-Request-ID");
    assert_eq!(id.len(), 36, "{id}");
    assert_eq!(id.matches('-').count(), 4, "{id}");
    let echoed = http(
        addr,
        "GET",
        "/health",
        &[("X-Request-ID", "hostile-7-abc")],
        b"",
    );
    assert_eq!(
        echoed.header("x-request-id").as_deref(),
        Some("hostile-7-abc")
    );
    let long = "x".repeat(200);
    let replaced = http(addr, "GET", "/health", &[("X-Request-ID", &long)], b"");
    let new_id = replaced.header("x-request-id").unwrap();
    assert_ne!(new_id, long);
    assert_eq!(new_id.len(), 36);
    let refused = post_json(addr, OR, Some("nope"), &tiny_body(json!({})));
    assert!(
        refused.header("x-request-id").is_some(),
        "errors carry an id too"
    );
    let missing = http(addr, "GET", "/no/such/route", &[], b"");
    assert_eq!(missing.status, 404);
    assert!(missing.header("x-request-id").is_some());

    // ...and in every log line of the request, as JSON.
    let traced = http(
        addr,
        "POST",
        OR,
        &[
            ("X-Request-ID", "trace-me-42"),
            ("Authorization", "Bearer sk-paced"),
        ],
        &serde_json::to_vec(&tiny_body(json!({"n": 0}))).unwrap(),
    );
    assert_eq!(traced.status, 400);
    std::thread::sleep(Duration::from_millis(200));
    let log = server.log.text();
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| l.contains("trace-me-42"))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        !lines.is_empty(),
        "no log line has the request id; log:\n{log}"
    );
    for line in &lines {
        assert_eq!(line["span"]["request_id"], "trace-me-42", "{line}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "request refused"),
        "{lines:?}"
    );

    // The engine thread logs under the request's span too.
    let ran = http(
        addr,
        "POST",
        OR,
        &[
            ("X-Request-ID", "trace-run-7"),
            ("Authorization", "Bearer sk-open"),
        ],
        &serde_json::to_vec(&tiny_body(json!({}))).unwrap(),
    );
    assert_eq!(ran.status, 200, "{}", String::from_utf8_lossy(&ran.body));
    std::thread::sleep(Duration::from_millis(200));
    let log = server.log.text();
    let finished: Vec<Value> = log
        .lines()
        .filter(|l| l.contains("job finished"))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        finished
            .iter()
            .any(|l| l["span"]["request_id"] == "trace-run-7"),
        "the engine's line lacks the request id: {finished:?}"
    );
}

// ------------------------------------------------------------------------------------------------
// Shutdown with an open event stream
// ------------------------------------------------------------------------------------------------

#[tokio::test]
async fn open_event_streams_end_at_shutdown_instead_of_holding_it() {
    let (engine, caps) = server::start_engine(vec![server::model(TINY, TINY)], 8).await;
    let mut hardened = server::serve_hardened(
        engine,
        caps,
        vec![],
        Limits::default(),
        ConnectionLimits {
            shutdown_grace: Duration::from_millis(500),
            ..ConnectionLimits::default()
        },
    )
    .await;
    let addr = hardened.server.addr;
    // A long job ahead keeps the stream's own job waiting: the stream is open and silent.
    let slow =
        tiny_body(json!({"size": "1024x1024", "provider": {"options": {"local": {"steps": 50}}}}));
    let mut ahead = TcpStream::connect(addr).unwrap();
    let body = serde_json::to_vec(&slow).unwrap();
    write!(
        ahead,
        "POST {OR} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    ahead.write_all(&body).unwrap();
    std::thread::sleep(Duration::from_millis(200));

    let mut stream_body = slow.clone();
    stream_body["stream"] = json!(true);
    let body = serde_json::to_vec(&stream_body).unwrap();
    let mut sse = TcpStream::connect(addr).unwrap();
    sse.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        sse,
        "POST {OR} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    sse.write_all(&body).unwrap();
    let mut first = [0u8; 1024];
    let n = sse.read(&mut first).expect("stream head");
    assert!(
        String::from_utf8_lossy(&first[..n]).contains("text/event-stream"),
        "{}",
        String::from_utf8_lossy(&first[..n])
    );

    let start = Instant::now();
    hardened.stop.take().unwrap().send(()).unwrap();
    let reader = std::thread::spawn(move || {
        let mut rest = Vec::new();
        let _ = sse.read_to_end(&mut rest);
        (first[..n].to_vec(), rest)
    });
    tokio::time::timeout(Duration::from_secs(10), &mut hardened.stopped)
        .await
        .expect("the server's shutdown waited on the open stream")
        .unwrap();
    let stopped_after = start.elapsed();
    let (head, rest) = tokio::task::spawn_blocking(move || reader.join().unwrap())
        .await
        .unwrap();
    let mut raw = head;
    raw.extend(rest);
    let text = String::from_utf8_lossy(&parse_reply(&raw).body).into_owned();
    eprintln!("shutdown with an open stream (grace 0.5 s) returned after {stopped_after:?}");
    assert!(stopped_after < Duration::from_secs(4), "{stopped_after:?}");
    assert!(text.contains("event: error"), "{text}");
    assert!(text.contains("shutting down"), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    drop(ahead);
}

// ------------------------------------------------------------------------------------------------
// Fuzzing the request validator
// ------------------------------------------------------------------------------------------------

/// Seconds of fuzzing (`IMAGO_FUZZ_SECONDS` to change it).
fn fuzz_seconds() -> u64 {
    std::env::var("IMAGO_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
}

fn cargo_fuzz_available() -> bool {
    Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn fuzz_the_request_validator_for_a_bounded_time() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if !cargo_fuzz_available() {
        eprintln!("cargo-fuzz is missing: installing it from crates.io (cargo install cargo-fuzz --locked)");
        let install = Command::new("cargo")
            .args(["install", "cargo-fuzz", "--locked"])
            .status()
            .expect("run cargo install");
        if !install.success() || !cargo_fuzz_available() {
            // Only an offline machine without cargo-fuzz gets here; say so loudly, do not pass quietly.
            panic!(
                "cannot run the fuzz target: cargo-fuzz is not installed and `cargo install cargo-fuzz --locked` failed \
                 (offline?); install it and the nightly toolchain, then rerun"
            );
        }
    }
    let work = tempfile::tempdir().unwrap();
    let corpus = work.path().join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-target");
    let seconds = fuzz_seconds();
    let start = Instant::now();
    let output = Command::new("cargo")
        .current_dir(root)
        .env("CARGO_TARGET_DIR", &target_dir)
        .args([
            "+nightly",
            "fuzz",
            "run",
            "--dev",
            "--sanitizer",
            "none",
            "validate_request",
        ])
        .arg(&corpus)
        .arg(root.join("fuzz/seeds/validate_request"))
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg("-max_len=4096")
        .arg(format!("-artifact_prefix={}/", work.path().display()))
        .output()
        .expect("run cargo fuzz");
    let log = String::from_utf8_lossy(&output.stderr);
    let tail: String = log
        .lines()
        .rev()
        .take(25)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        output.status.success(),
        "the fuzz run failed (a crash leaves its input in {}):\n{tail}",
        work.path().display()
    );
    let runs = log
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("Done ").map(str::to_string))
        .unwrap_or_default();
    eprintln!(
        "fuzzed validate_request for {seconds} s ({:?} with the build): {runs}",
        start.elapsed()
    );
    assert!(
        runs.contains("runs"),
        "libFuzzer did not report its runs:\n{tail}"
    );
}
