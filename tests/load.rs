//! The server under load, over loopback only and bounded in time: a burst against a small queue
//! (200 or 429 with an estimated Retry-After, memory back near its baseline), streaming clients
//! that leave mid-stream (nothing leaks), batching (same bytes as one by one, timed), the
//! request timeout, the pixel limit, readiness while the queue is full, and SIGTERM on a spawned
//! `imago serve` with requests in flight.
#[path = "common/server.rs"]
mod server;

use std::time::{Duration, Instant};

use base64::Engine as _;
use imago::config::Limits;
use imago::domain::request::PreviewMode;
use imago::engine::{Engine, EngineConfig, Scheduling};
use imago_models::device::{DTypeChoice, DeviceChoice};
use imago_models::pipeline::GenerationRequest;
use serde_json::{json, Value};
use server::{model, serve, start_engine_with_config, TestServer};

const TINY: &str = "imago/tiny-sd";
const ROUTE: &str = "/api/v1/images";

/// The tests here measure time and memory; they run one at a time so they don't share the cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn server_with(max_queue: usize, scheduling: Scheduling) -> TestServer {
    let config = EngineConfig {
        device: DeviceChoice::Cpu,
        dtype: DTypeChoice::F32,
        max_queue,
        preview_decoders: Vec::new(),
        load_options: Default::default(),
        scheduling,
    };
    let (engine, caps) = start_engine_with_config(config, vec![model(TINY, TINY)]).await;
    serve(engine, caps, Vec::new(), Limits::default()).await
}

fn scheduling(max_batch: usize) -> Scheduling {
    Scheduling {
        max_batch,
        ..Scheduling::default()
    }
}

fn body(prompt: &str, seed: u64, size: &str, steps: usize) -> Value {
    json!({
        "model": TINY,
        "prompt": prompt,
        "size": size,
        "seed": seed,
        "provider": {"options": {"local": {"steps": steps}}},
    })
}

async fn post(client: &reqwest::Client, server: &TestServer, body: &Value) -> reqwest::Response {
    client
        .post(server.url(ROUTE))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(body).unwrap())
        .send()
        .await
        .expect("send")
}

/// The images of a 200 answer, decoded from base64 (PNG bytes).
async fn images(response: reqwest::Response) -> Vec<Vec<u8>> {
    assert_eq!(response.status(), 200);
    let body: Value =
        serde_json::from_slice(&response.bytes().await.expect("body")).expect("JSON body");
    body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|d| {
            base64::engine::general_purpose::STANDARD
                .decode(d["b64_json"].as_str().expect("b64_json"))
                .expect("base64")
        })
        .collect()
}

/// Resident memory of this process in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

async fn wait_idle(engine: &Engine, within: Duration) {
    let started = Instant::now();
    while engine.in_flight() > 0 || engine.queue_depth() > 0 {
        assert!(
            started.elapsed() < within,
            "engine still busy after {within:?}: {} running, {} waiting",
            engine.in_flight(),
            engine.queue_depth()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn metrics_text(server: &TestServer) -> String {
    reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn forty_concurrent_requests_get_200_or_429_with_retry_after() {
    let _serial = SERIAL.lock().await;
    // The allocator setting every `imago` command runs with (freed blocks below its trim
    // threshold stay with the process for reuse), so the memory figures are the server's.
    imago_models::allocator::keep_tensor_pages();
    let server = server_with(4, scheduling(4)).await;
    let client = reqwest::Client::new();
    // Warm up (first-use allocations) before the baseline.
    for seed in 0..2 {
        images(post(&client, &server, &body("warm up", seed, "64x64", 4)).await).await;
    }
    let baseline = rss_kib();
    let started = Instant::now();
    let replies = futures_util::future::join_all((0..40u64).map(|i| {
        let (client, server) = (client.clone(), server.clone());
        async move {
            let r = post(&client, &server, &body("a burst", i, "128x128", 6)).await;
            let status = r.status().as_u16();
            let retry = r.headers().get("retry-after").map(|v| {
                v.to_str()
                    .unwrap()
                    .parse::<u64>()
                    .expect("Retry-After seconds")
            });
            let text = r.text().await.unwrap();
            (status, retry, text)
        }
    }))
    .await;
    let elapsed = started.elapsed();
    let ok = replies.iter().filter(|r| r.0 == 200).count();
    let limited: Vec<_> = replies.iter().filter(|r| r.0 == 429).collect();
    for (status, retry, text) in &replies {
        assert!(*status == 200 || *status == 429, "{status}: {text}");
        if *status == 429 {
            let retry = retry.expect("429 without Retry-After");
            assert!((1..=3600).contains(&retry), "Retry-After {retry}");
            assert!(text.contains("queue is full"), "{text}");
        }
    }
    assert!(ok >= 4, "only {ok} of 40 served");
    assert!(!limited.is_empty(), "a queue of 4 took 40 requests at once");
    let retries: Vec<u64> = limited.iter().filter_map(|r| r.1).collect();
    let per_job = server.engine.recent_job_time().expect("jobs have run");
    println!(
        "burst: {ok} x 200, {} x 429 in {elapsed:.2?}; Retry-After {}..={} s; recent engine time per job {per_job:?}",
        limited.len(),
        retries.iter().min().unwrap(),
        retries.iter().max().unwrap(),
    );
    // The estimate: (waiting + 1) jobs x the recent time per job, rounded up.
    let depth = server.engine.max_queue() as u64;
    let bound = ((depth + 1) * per_job.as_millis() as u64)
        .div_ceil(1000)
        .max(1)
        * 4;
    assert!(
        retries.iter().all(|r| *r <= bound),
        "Retry-After {retries:?} beyond 4x the estimate {bound}"
    );

    wait_idle(&server.engine, Duration::from_secs(30)).await;
    let after = rss_kib();
    println!(
        "RSS: baseline {} MiB, after the burst {} MiB",
        baseline / 1024,
        after / 1024
    );
    assert!(
        after < baseline + 256 * 1024,
        "RSS grew from {baseline} KiB to {after} KiB"
    );
    // And it answers normally afterwards.
    let started = Instant::now();
    images(post(&client, &server, &body("after", 1, "64x64", 4)).await).await;
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[tokio::test]
async fn a_hundred_sse_clients_leaving_mid_stream_leak_nothing() {
    let _serial = SERIAL.lock().await;
    let server = server_with(128, scheduling(4)).await;
    let client = reqwest::Client::new();
    let cancelled_before = server.engine.metrics().cancelled.get();
    futures_util::future::join_all((0..100u64).map(|i| {
        let (client, server) = (client.clone(), server.clone());
        async move {
            let mut streaming = body("leaving", i, "128x128", 40);
            streaming["stream"] = json!(true);
            streaming["provider"]["options"]["local"]["partial_images"] = json!(3);
            let mut response = post(&client, &server, &streaming).await;
            assert_eq!(response.status(), 200);
            // Some read a little of the stream, the others leave at once.
            if i % 2 == 0 {
                let _ = tokio::time::timeout(Duration::from_millis(200), response.chunk()).await;
            }
            drop(response);
        }
    }))
    .await;
    wait_idle(&server.engine, Duration::from_secs(60)).await;
    assert_eq!(server.engine.in_flight(), 0);
    let cancelled = server.engine.metrics().cancelled.get() - cancelled_before;
    assert!(
        cancelled >= 90,
        "only {cancelled} of 100 jobs were cancelled"
    );
    let text = metrics_text(&server).await;
    assert!(text.contains("imago_in_flight 0"), "{text}");
    assert!(text.contains("imago_queue_depth 0"), "{text}");
    // The worker is free: a following request is served at once.
    let started = Instant::now();
    images(post(&client, &server, &body("after", 1, "64x64", 4)).await).await;
    let took = started.elapsed();
    println!("100 SSE clients left; {cancelled} jobs cancelled; next request served in {took:.2?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[tokio::test]
async fn batched_requests_give_the_bytes_of_sequential_ones() {
    let _serial = SERIAL.lock().await;
    let sequential = server_with(16, scheduling(1)).await;
    let batched = server_with(16, scheduling(8)).await;
    let client = reqwest::Client::new();
    let request = |i: u64| body(&format!("a lighthouse, variant {i}"), 100 + i, "128x128", 8);
    // Warm both (first-use allocations).
    images(post(&client, &sequential, &request(99)).await).await;
    images(post(&client, &batched, &request(99)).await).await;

    let started = Instant::now();
    let mut one_by_one = Vec::new();
    for i in 0..8 {
        one_by_one.push(images(post(&client, &sequential, &request(i)).await).await);
    }
    let sequential_time = started.elapsed();

    let batches_before = batched.engine.metrics().engine_batch_requests.count();
    let started = Instant::now();
    let together = futures_util::future::join_all((0..8).map(|i| {
        let (client, server) = (client.clone(), batched.clone());
        async move { images(post(&client, &server, &request(i)).await).await }
    }))
    .await;
    let batched_time = started.elapsed();
    let batches = batched.engine.metrics().engine_batch_requests.count() - batches_before;

    for (i, (a, b)) in one_by_one.iter().zip(&together).enumerate() {
        assert!(
            a == b,
            "request {i}: batched PNG differs from the sequential one"
        );
    }
    println!(
        "8 requests 128x128, 8 steps, tiny-sd: sequential {sequential_time:.2?}, concurrent with \
         --max-batch 8 {batched_time:.2?} in {batches} engine batches (x{:.2})",
        sequential_time.as_secs_f64() / batched_time.as_secs_f64()
    );
    // Byte identity is the criterion; the time is reported, not asserted: each request keeps its
    // own UNet call (see models/src/pipeline/batch.rs), so the gain depends on idle cores.
    assert!(
        batches < 8,
        "8 concurrent requests ran in {batches} batches"
    );
}

#[tokio::test]
async fn a_request_past_its_timeout_gets_504() {
    let _serial = SERIAL.lock().await;
    let server = server_with(
        4,
        Scheduling {
            request_timeout: Duration::from_secs(1),
            ..Scheduling::default()
        },
    )
    .await;
    let client = reqwest::Client::new();
    let started = Instant::now();
    let reply = post(&client, &server, &body("slow", 1, "512x512", 50)).await;
    let took = started.elapsed();
    assert_eq!(reply.status(), 504);
    let text = reply.text().await.unwrap();
    assert!(
        text.contains("--request-timeout") && text.contains("1 s"),
        "{text}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(metrics_text(&server)
        .await
        .contains("imago_timeouts_total 1"));
}

#[tokio::test]
async fn too_many_pixels_are_refused_before_queueing() {
    let _serial = SERIAL.lock().await;
    let server = server_with(
        4,
        Scheduling {
            max_pixels: Some(2 * 64 * 64),
            ..Scheduling::default()
        },
    )
    .await;
    let client = reqwest::Client::new();
    let mut three = body("many", 1, "64x64", 2);
    three["n"] = json!(3);
    let started = Instant::now();
    let reply = post(&client, &server, &three).await;
    assert_eq!(reply.status(), 400);
    let text = reply.text().await.unwrap();
    assert!(
        text.contains("12288 pixels") && text.contains("8192") && text.contains("--max-pixels"),
        "{text}"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    let mut two = body("fits", 1, "64x64", 2);
    two["n"] = json!(2);
    assert_eq!(images(post(&client, &server, &two).await).await.len(), 2);
    let metrics = metrics_text(&server).await;
    assert!(
        metrics.contains("imago_refused_too_large_total 1"),
        "{metrics}"
    );
    // Without --max-pixels the CPU limit comes from the memory estimate.
    let estimated = server_with(4, Scheduling::default()).await;
    let limit = estimated.engine.pixel_limit(TINY).expect("a CPU limit");
    println!("memory-estimate pixel limit on this machine: {limit} pixels");
    assert!(limit >= 64 * 64, "{limit}");
}

#[tokio::test]
async fn ready_is_503_while_the_queue_is_full_and_left_places_free_up() {
    let _serial = SERIAL.lock().await;
    let server = server_with(1, scheduling(1)).await;
    let engine = &server.engine;
    let request = GenerationRequest {
        prompt: "busy".into(),
        negative_prompt: None,
        seed: 1,
        steps: 400,
        guidance_scale: 0.0,
        width: 128,
        height: 128,
        batch_size: 1,
        scheduler: None,
        init_image: None,
        max_sequence_length: None,
    };
    assert_eq!(
        reqwest::get(server.url("/ready")).await.unwrap().status(),
        200
    );
    let running = engine
        .submit(TINY, request.clone(), 0, PreviewMode::Auto)
        .expect("first job");
    let started = Instant::now();
    while engine.in_flight() == 0 {
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let waiting = engine
        .submit(TINY, request, 0, PreviewMode::Auto)
        .expect("second job");
    let ready = reqwest::get(server.url("/ready")).await.unwrap();
    assert_eq!(ready.status(), 503);
    let refused = post(&reqwest::Client::new(), &server, &body("x", 1, "64x64", 2)).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    // A waiting job whose client leaves frees its place at the next step of the running one.
    drop(waiting);
    let started = Instant::now();
    while engine.queue_depth() > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the place was not freed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(engine.in_flight(), 1, "the running job should still run");
    assert_eq!(
        reqwest::get(server.url("/ready")).await.unwrap().status(),
        200
    );
    drop(running);
    wait_idle(engine, Duration::from_secs(20)).await;
    assert_eq!(
        reqwest::get(server.url("/ready")).await.unwrap().status(),
        200
    );
}

/// A spawned `imago serve`; its address from the line it prints.
struct Spawned {
    child: std::process::Child,
    addr: String,
}

fn spawn_serve(extra: &[&str]) -> Spawned {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_imago"))
        .args([
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--model",
            TINY,
        ])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn imago serve");
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .expect("listening line")
        .to_string();
    Spawned { child, addr }
}

/// Sends a raw HTTP/1.1 POST and returns the stream to read the answer from.
fn send_raw(addr: &str, body: &str) -> std::io::Result<std::net::TcpStream> {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(addr)?;
    write!(
        stream,
        "POST {ROUTE} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    Ok(stream)
}

fn read_all(mut stream: std::net::TcpStream) -> String {
    use std::io::Read;
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

fn sigterm(child: &std::process::Child) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_exit(child: &mut std::process::Child, within: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(exit) = child.try_wait().unwrap() {
            return exit;
        }
        if started.elapsed() > within {
            let _ = child.kill();
            panic!("the server did not exit within {within:?} after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn sigterm_finishes_three_requests_in_flight_refuses_new_ones_and_exits_0() {
    let _serial = SERIAL.lock().await;
    let mut server = spawn_serve(&[]);
    let body = |seed: u64| {
        format!(
            r#"{{"model":"{TINY}","prompt":"drain {seed}","seed":{seed},"size":"256x256","provider":{{"options":{{"local":{{"steps":12}}}}}}}}"#
        )
    };
    let streams: Vec<_> = (0..3)
        .map(|i| send_raw(&server.addr, &body(i)).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    sigterm(&server.child);
    std::thread::sleep(Duration::from_millis(300));
    // Not accepted any more: the connection is refused, or answered without a 200.
    let late = send_raw(&server.addr, &body(9)).map(read_all);
    if let Ok(response) = &late {
        assert!(
            !response.starts_with("HTTP/1.1 200"),
            "a request after SIGTERM was served"
        );
    }
    let readers: Vec<_> = streams
        .into_iter()
        .map(|s| std::thread::spawn(move || read_all(s)))
        .collect();
    for reader in readers {
        let response = reader.join().unwrap();
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "{}",
            &response[..response.len().min(300)]
        );
    }
    let exit = wait_exit(&mut server.child, Duration::from_secs(60));
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test]
async fn past_the_shutdown_grace_running_work_is_cancelled_and_the_server_exits_0() {
    let _serial = SERIAL.lock().await;
    let mut server = spawn_serve(&["--shutdown-grace", "1"]);
    let body = format!(
        r#"{{"model":"{TINY}","prompt":"long","size":"512x512","provider":{{"options":{{"local":{{"steps":50}}}}}}}}"#
    );
    let stream = send_raw(&server.addr, &body).expect("connect");
    std::thread::sleep(Duration::from_millis(500));
    let signalled = Instant::now();
    sigterm(&server.child);
    let response = read_all(stream);
    assert!(
        response.starts_with("HTTP/1.1 502") && response.contains("engine stopped"),
        "{}",
        &response[..response.len().min(300)]
    );
    let exit = wait_exit(&mut server.child, Duration::from_secs(20));
    assert!(exit.success(), "{exit:?}");
    let took = signalled.elapsed();
    println!("SIGTERM with --shutdown-grace 1: exited in {took:.2?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}
