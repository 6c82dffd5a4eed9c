//! Live previews and cancellation, end to end over loopback: partial images spread over the steps
//! and sent early, the final streamed image equal to the JSON one, a client that leaves (SSE or
//! plain JSON) frees the worker within about a step and is counted in /metrics, and the tiny
//! autoencoder preview path.
#[path = "common/server.rs"]
mod server;

use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::StreamExt;
use imago::config::Limits;
use imago::engine::PreviewDecoderToLoad;
use serde_json::{json, Value};
use server::{model, serve, start_engine, start_engine_with_decoders, TestServer};

const TINY: &str = "imago/tiny-sd";

/// The tests here compare times; they run one at a time so they don't share the two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const ROUTE: &str = "/api/v1/images";

async fn server_with(decoders: Vec<PreviewDecoderToLoad>) -> TestServer {
    let (engine, caps) = if decoders.is_empty() {
        start_engine(vec![model(TINY, TINY)], 16).await
    } else {
        start_engine_with_decoders(vec![model(TINY, TINY)], 16, decoders).await
    };
    serve(engine, caps, Vec::new(), Limits::default()).await
}

fn body(size: &str, steps: usize, partials: usize, extra: Value) -> Value {
    let mut body = json!({
        "model": TINY,
        "prompt": "a lighthouse at dusk",
        "size": size,
        "seed": 5,
        "provider": {"options": {"local": {"steps": steps, "partial_images": partials}}},
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            if k == "local" {
                if let Some(local) = b["provider"]["options"]["local"].as_object_mut() {
                    local.extend(v.as_object().cloned().unwrap_or_default());
                }
            } else {
                b.insert(k.clone(), v.clone());
            }
        }
    }
    body
}

/// One SSE event with the time it arrived.
struct Timed {
    at: Duration,
    name: Option<String>,
    data: String,
}

/// Reads an SSE response event by event, stopping after `stop_after` returns true.
async fn read_events(
    response: reqwest::Response,
    started: Instant,
    stop_after: impl Fn(&Timed) -> bool,
) -> Vec<Timed> {
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    let mut events = Vec::new();
    while let Some(chunk) = stream.next().await {
        buffer.push_str(&String::from_utf8_lossy(&chunk.expect("body chunk")));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut name = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = Some(v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if data.is_empty() {
                continue; // keep-alive comment
            }
            let event = Timed {
                at: started.elapsed(),
                name,
                data,
            };
            let stop = stop_after(&event);
            events.push(event);
            if stop {
                return events;
            }
        }
    }
    events
}

async fn post_stream(server: &TestServer, body: &Value) -> reqwest::Response {
    let response = reqwest::Client::new()
        .post(server.url(ROUTE))
        .json_body(body)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    response
}

trait JsonBody {
    fn json_body(self, body: &Value) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, body: &Value) -> Self {
        self.header("content-type", "application/json")
            .body(serde_json::to_vec(body).unwrap())
    }
}

fn b64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64")
}

async fn metric(server: &TestServer, name: &str) -> f64 {
    let text = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .and_then(|rest| rest.trim().parse::<f64>().ok())
        })
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
}

async fn wait_for_metric(server: &TestServer, name: &str, at_least: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let value = metric(server, name).await;
        if value >= at_least || Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Time of a small request when the worker is free.
async fn small_request_time(server: &TestServer) -> Duration {
    let started = Instant::now();
    let reply = reqwest::Client::new()
        .post(server.url(ROUTE))
        .json_body(&body("64x64", 1, 0, json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    reply.bytes().await.unwrap();
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_previews_on_an_8_step_512_generation_come_early_then_the_final_image() {
    let _serial = SERIAL.lock().await;
    let server = server_with(Vec::new()).await;
    let started = Instant::now();
    let response = post_stream(&server, &body("512x512", 8, 3, json!({"stream": true}))).await;
    let events = read_events(response, started, |e| e.data == "[DONE]").await;
    let total = started.elapsed();
    let names: Vec<_> = events
        .iter()
        .map(|e| e.name.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        names,
        [
            "image_generation.partial_image",
            "image_generation.partial_image",
            "image_generation.partial_image",
            "image_generation.completed",
            ""
        ],
        "event order"
    );
    assert_eq!(events.last().unwrap().data, "[DONE]");
    for (i, event) in events[..3].iter().enumerate() {
        let data: Value = serde_json::from_str(&event.data).unwrap();
        assert_eq!(data["type"], "image_generation.partial_image");
        assert_eq!(data["partial_image_index"], i);
        let preview = image::load_from_memory(&b64(data["b64_json"].as_str().unwrap()))
            .expect("preview decodes");
        assert!(preview.width() <= 512 && preview.height() <= 512);
        assert!(preview.width() >= 64, "a preview is big enough to look at");
    }
    assert!(
        events[0].at < total / 2,
        "first preview at {:?} of {:?}: it must come well before half of the total",
        events[0].at,
        total
    );
    // The final streamed image is byte-identical to the non-streamed one.
    let completed: Value = serde_json::from_str(&events[3].data).unwrap();
    let plain = reqwest::Client::new()
        .post(server.url(ROUTE))
        .json_body(&body("512x512", 8, 3, json!({})))
        .send()
        .await
        .unwrap();
    assert!(plain.headers().contains_key("x-imago-step-ms"));
    let plain: Value = serde_json::from_slice(&plain.bytes().await.unwrap()).unwrap();
    assert_eq!(completed["b64_json"], plain["data"][0]["b64_json"]);
    assert!(wait_for_metric(&server, "imago_previews_sent_total", 3.0).await >= 3.0);
    assert!(metric(&server, "imago_time_to_first_preview_seconds_count").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_counts_follow_the_request_and_each_batch_image_gets_its_previews() {
    let _serial = SERIAL.lock().await;
    let server = server_with(Vec::new()).await;
    for partials in 0..=3usize {
        let started = Instant::now();
        let response = post_stream(
            &server,
            &body("64x64", 4, partials, json!({"stream": true, "n": 2})),
        )
        .await;
        let events = read_events(response, started, |e| e.data == "[DONE]").await;
        let partial: Vec<Value> = events
            .iter()
            .filter(|e| e.name.as_deref() == Some("image_generation.partial_image"))
            .map(|e| serde_json::from_str(&e.data).unwrap())
            .collect();
        assert_eq!(
            partial.len(),
            partials * 2,
            "{partials} previews for each of 2 images"
        );
        for (k, p) in partial.iter().enumerate() {
            assert_eq!(p["partial_image_index"], k / 2);
            assert_eq!(p["image_index"], k % 2);
        }
        let completed = events
            .iter()
            .filter(|e| e.name.as_deref() == Some("image_generation.completed"))
            .count();
        assert_eq!(completed, 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_client_that_leaves_frees_the_worker_within_about_a_step() {
    let _serial = SERIAL.lock().await;
    let server = server_with(Vec::new()).await;
    let idle = small_request_time(&server).await;
    // The step time of the long job, measured on a 2-step run of the same size.
    let probe = reqwest::Client::new()
        .post(server.url(ROUTE))
        .json_body(&body("256x256", 2, 0, json!({})))
        .send()
        .await
        .unwrap();
    let step_ms: f64 = probe.headers()["x-imago-step-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    probe.bytes().await.unwrap();

    let started = Instant::now();
    let response = post_stream(&server, &body("256x256", 50, 3, json!({"stream": true}))).await;
    let events = read_events(response, started, |e| {
        e.name.as_deref() == Some("image_generation.partial_image")
    })
    .await;
    assert_eq!(events.len(), 1, "stopped reading after the first preview");
    // `events` consumed the response: the connection is gone now.
    let cancelled = wait_for_metric(&server, "imago_cancelled_total", 1.0).await;
    assert_eq!(cancelled, 1.0, "the cancellation is counted");
    let after = small_request_time(&server).await;
    let allowed =
        idle * 2 + Duration::from_secs_f64(step_ms * 2.0 / 1000.0) + Duration::from_millis(500);
    assert!(
        after <= allowed,
        "small request took {after:?} after the disconnect (idle {idle:?}, step {step_ms} ms)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_client_that_leaves_cancels_its_job_and_a_queued_one_never_runs() {
    let _serial = SERIAL.lock().await;
    let server = server_with(Vec::new()).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(1500))
        .build()
        .unwrap();
    let long = body("256x256", 50, 0, json!({}));
    // Two long jobs: the first runs, the second waits; both clients give up after 1.5 s.
    let (a, b) = tokio::join!(
        client.post(server.url(ROUTE)).json_body(&long).send(),
        async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            client.post(server.url(ROUTE)).json_body(&long).send().await
        }
    );
    assert!(
        a.is_err() && b.is_err(),
        "both requests time out on the client side: {:?} {:?}",
        a.as_ref().map(|r| r.status()),
        b.as_ref().map(|r| r.status())
    );
    let cancelled = wait_for_metric(&server, "imago_cancelled_total", 2.0).await;
    assert_eq!(
        cancelled, 2.0,
        "the running job and the queued one are both cancelled"
    );
    assert_eq!(
        metric(&server, "imago_images_generated_total").await,
        0.0,
        "neither produced an image"
    );
    // The worker is free again.
    assert!(small_request_time(&server).await < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previews_from_a_tiny_autoencoder_when_one_is_configured() {
    let _serial = SERIAL.lock().await;
    let decoder = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/parity/taesd-decode/model");
    let server = server_with(vec![PreviewDecoderToLoad {
        model: None,
        source: decoder.display().to_string(),
    }])
    .await;
    let listing: Value = serde_json::from_slice(
        &reqwest::get(server.url("/api/v1/images/models"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(listing["data"][0]["id"], TINY);
    let mut previews = Vec::new();
    for mode in ["taesd", "latent"] {
        let started = Instant::now();
        let response = post_stream(
            &server,
            &body(
                "64x64",
                2,
                1,
                json!({"stream": true, "local": {"preview": mode}}),
            ),
        )
        .await;
        let events = read_events(response, started, |e| e.data == "[DONE]").await;
        let partial: Value = serde_json::from_str(&events[0].data).unwrap();
        assert_eq!(partial["type"], "image_generation.partial_image", "{mode}");
        let image = image::load_from_memory(&b64(partial["b64_json"].as_str().unwrap()))
            .unwrap()
            .to_rgb8();
        assert_eq!(
            image.dimensions(),
            (64, 64),
            "{mode}: the preview has the image's size"
        );
        previews.push(image);
    }
    assert_ne!(
        previews[0], previews[1],
        "the tiny autoencoder draws its own preview"
    );
}

/// FLUX streams previews too: the linear map fitted to its 16-channel VAE, or TAEF1 when one is
/// configured (chosen by latent channels), each the image's size and different from the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flux_previews_from_the_latents_and_from_taef1() {
    let _serial = SERIAL.lock().await;
    const FLUX: &str = "imago/tiny-flux";
    let taef1 = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/parity/taef1-decode/model");
    let (engine, caps) = start_engine_with_decoders(
        vec![model(FLUX, FLUX)],
        16,
        vec![PreviewDecoderToLoad {
            model: None,
            source: taef1.display().to_string(),
        }],
    )
    .await;
    let server = serve(engine, caps, Vec::new(), Limits::default()).await;
    let mut previews = Vec::new();
    for mode in ["taesd", "latent"] {
        let started = Instant::now();
        let mut request = body(
            "96x64",
            2,
            1,
            json!({"stream": true, "local": {"preview": mode}}),
        );
        request["model"] = json!(FLUX);
        let response = post_stream(&server, &request).await;
        let events = read_events(response, started, |e| e.data == "[DONE]").await;
        let kinds: Vec<String> = events
            .iter()
            .filter_map(|e| serde_json::from_str::<Value>(&e.data).ok())
            .map(|v| v["type"].as_str().unwrap_or_default().to_string())
            .collect();
        assert_eq!(
            kinds,
            [
                "image_generation.partial_image",
                "image_generation.completed"
            ],
            "{mode}"
        );
        let partial: Value = serde_json::from_str(&events[0].data).unwrap();
        let image = image::load_from_memory(&b64(partial["b64_json"].as_str().unwrap()))
            .unwrap()
            .to_rgb8();
        assert_eq!(image.dimensions(), (96, 64), "{mode}");
        previews.push(image);
    }
    assert_ne!(previews[0], previews[1], "TAEF1 draws its own preview");
}
