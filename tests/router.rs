//! A router imago in front of an upstream imago, both real `imago serve` processes on loopback:
//! routing by `provider.order`, fallback past a dead upstream (nothing listening) and a failing one
//! (a 503 spy that records what it was sent), 502 when fallbacks are off, the merged model lists,
//! streams relayed event by event on both APIs, and the same bytes as asking the upstream directly.
#[path = "common/e2e.rs"]
mod e2e;

use std::net::TcpListener as StdListener;
use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;
use base64::Engine as _;
use e2e::{start_server_with_env, Server};
use serde_json::{json, Value};

const CLIENT_KEY: &str = "client-secret-never-forwarded";
const UPSTREAM_KEY: &str = "upstream-secret";
const SPY_KEY: &str = "spy-secret";
const PROMPT: &str = "a lighthouse at dusk";

/// A loopback port with nothing listening (bound, then released).
fn dead_port() -> u16 {
    let listener = StdListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// An upstream that always answers 503 and records the Authorization headers it got.
async fn start_spy() -> (String, Arc<Mutex<Vec<String>>>) {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let record = seen.clone();
    let app = axum::Router::new().fallback(move |headers: HeaderMap| {
        let record = record.clone();
        async move {
            let auth = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("(none)")
                .to_string();
            record.lock().unwrap().push(auth);
            (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(
                    json!({"error": {"code": 503, "message": "the spy is down for maintenance"}}),
                ),
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind spy");
    let addr = listener.local_addr().expect("spy addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/api/v1"), seen)
}

struct Setup {
    upstream: Server,
    router: Server,
    spy_seen: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let upstream = start_server_with_env(
        &["--model", "up-model=imago/tiny-sd", "--no-playground"],
        Some(UPSTREAM_KEY),
        &[],
    );
    let (spy_url, spy_seen) = start_spy().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let providers = dir.path().join("providers.toml");
    let dead = dead_port();
    std::fs::write(
        &providers,
        format!(
            r#"
[[providers]]
slug = "dead"
kind = "openrouter"
base_url = "http://127.0.0.1:{dead}/api/v1"
models = ["up-model"]

[[providers]]
slug = "spy"
kind = "openrouter"
base_url = "{spy_url}"
api_key_env = "ROUTER_TEST_SPY_KEY"
models = ["up-model"]

[[providers]]
slug = "good"
kind = "openrouter"
base_url = "{up}/api/v1"
api_key_env = "ROUTER_TEST_UPSTREAM_KEY"
models = ["up-model"]

[[providers]]
slug = "good-openai"
kind = "openai"
base_url = "{up}/v1"
api_key_env = "ROUTER_TEST_UPSTREAM_KEY"
models = ["up-model"]
"#,
            up = upstream.base_url
        ),
    )
    .expect("write providers file");
    let providers_arg = providers.to_str().expect("utf-8 path").to_string();
    let router = start_server_with_env(
        &[
            "--model",
            "local-model=imago/tiny-sd",
            "--no-playground",
            "--providers-file",
            &providers_arg,
        ],
        Some(CLIENT_KEY),
        &[
            ("ROUTER_TEST_UPSTREAM_KEY", UPSTREAM_KEY),
            ("ROUTER_TEST_SPY_KEY", SPY_KEY),
        ],
    );
    Setup {
        upstream,
        router,
        spy_seen,
        _dir: dir,
    }
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    fn provider(&self) -> &str {
        self.headers
            .get("x-imago-provider")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

async fn post(base: &str, key: &str, path: &str, body: &Value) -> Reply {
    let response = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("request");
    Reply {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        text: response.text().await.expect("body"),
    }
}

async fn get(base: &str, key: &str, path: &str) -> Value {
    let response = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(key)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    assert_eq!(status, 200, "GET {path}: {text}");
    serde_json::from_str(&text).expect("JSON")
}

fn image_bytes(b64: &Value) -> Vec<u8> {
    let text = b64.as_str().expect("b64_json is a string");
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64")
}

/// `(event name, data)` of an SSE body.
fn sse_events(text: &str) -> Vec<(Option<String>, String)> {
    let mut events = Vec::new();
    for block in text.replace("\r\n", "\n").split("\n\n") {
        let mut name = None;
        let mut data = Vec::new();
        for line in block.lines() {
            if let Some(value) = line.strip_prefix("event:") {
                name = Some(value.trim().to_string());
            } else if let Some(value) = line.strip_prefix("data:") {
                data.push(value.trim_start().to_string());
            }
        }
        if !data.is_empty() {
            events.push((name, data.join("\n")));
        }
    }
    events
}

fn generation(order: Value, allow_fallbacks: Option<bool>) -> Value {
    let mut provider = json!({"order": order});
    if let Some(allow) = allow_fallbacks {
        provider["allow_fallbacks"] = json!(allow);
    }
    json!({"model": "up-model", "prompt": PROMPT, "seed": 7, "provider": provider})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_in_front_of_an_upstream_imago() {
    let s = setup().await;
    let (up, router) = (s.upstream.base_url.as_str(), s.router.base_url.as_str());

    // The reference: the upstream asked directly.
    let direct = post(
        up,
        UPSTREAM_KEY,
        "/api/v1/images",
        &json!({"model": "up-model", "prompt": PROMPT, "seed": 7}),
    )
    .await;
    assert_eq!(direct.status, 200, "{}", direct.text);
    let reference = image_bytes(&direct.json()["data"][0]["b64_json"]);
    assert!(reference.starts_with(b"\x89PNG"), "a PNG");

    // Through the router, to the good upstream: the same bytes.
    let routed = post(
        router,
        CLIENT_KEY,
        "/api/v1/images",
        &generation(json!(["good"]), None),
    )
    .await;
    assert_eq!(routed.status, 200, "{}", routed.text);
    assert_eq!(routed.provider(), "good");
    assert_eq!(
        image_bytes(&routed.json()["data"][0]["b64_json"]),
        reference
    );
    assert_eq!(
        routed
            .headers
            .get("x-imago-seed")
            .and_then(|v| v.to_str().ok()),
        Some("7")
    );

    // order ["dead", "good"] with fallbacks: the dead one is passed over.
    let fallback = post(
        router,
        CLIENT_KEY,
        "/api/v1/images",
        &generation(json!(["dead", "good"]), None),
    )
    .await;
    assert_eq!(fallback.status, 200, "{}", fallback.text);
    assert_eq!(fallback.provider(), "good");
    assert_eq!(
        image_bytes(&fallback.json()["data"][0]["b64_json"]),
        reference
    );

    // order ["dead"] without fallbacks: a 502 that says why.
    let refused = post(
        router,
        CLIENT_KEY,
        "/api/v1/images",
        &generation(json!(["dead"]), Some(false)),
    )
    .await;
    assert_eq!(refused.status, 502, "{}", refused.text);
    let message = refused.json()["error"]["message"]
        .as_str()
        .expect("message")
        .to_string();
    assert!(
        message.contains("provider dead") && message.contains("cannot connect"),
        "{message}"
    );

    // A 5xx upstream without fallbacks: its own reason in the 502.
    let spy_down = post(
        router,
        CLIENT_KEY,
        "/api/v1/images",
        &generation(json!(["spy"]), Some(false)),
    )
    .await;
    assert_eq!(spy_down.status, 502, "{}", spy_down.text);
    assert!(
        spy_down.text.contains("HTTP 503")
            && spy_down.text.contains("the spy is down for maintenance"),
        "{}",
        spy_down.text
    );

    // The file's order (dead, spy, good): two failures, then the image.
    let default_order = post(
        router,
        CLIENT_KEY,
        "/api/v1/images",
        &json!({"model": "up-model", "prompt": PROMPT, "seed": 7}),
    )
    .await;
    assert_eq!(default_order.status, 200, "{}", default_order.text);
    assert_eq!(default_order.provider(), "good");
    assert_eq!(
        image_bytes(&default_order.json()["data"][0]["b64_json"]),
        reference
    );

    // Keys: each upstream got its own key from the environment, never the client's.
    let seen = s.spy_seen.lock().unwrap().clone();
    assert!(!seen.is_empty(), "the spy was asked");
    assert!(
        seen.iter().all(|auth| auth == &format!("Bearer {SPY_KEY}")),
        "{seen:?}"
    );
    assert!(!seen.iter().any(|auth| auth.contains(CLIENT_KEY)));
    // (the good upstream only accepts UPSTREAM_KEY: its 200s above prove it was sent.)

    // A client error upstream is relayed as it is (status, envelope, field).
    let bad = post(
        router,
        CLIENT_KEY,
        "/api/v1/images",
        &json!({"model": "up-model", "prompt": PROMPT, "n": 99, "provider": {"order": ["good"]}}),
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.text);
    assert_eq!(bad.json()["error"]["metadata"]["field"], "n");

    // Options for the upstream's slug reach it as its `local` options.
    let steps = post(
        router,
        CLIENT_KEY,
        "/api/v1/images",
        &json!({"model": "up-model", "prompt": PROMPT, "seed": 7,
                "provider": {"order": ["good"], "options": {"good": {"steps": 2}}}}),
    )
    .await;
    assert_eq!(steps.status, 200, "{}", steps.text);
    assert_eq!(
        steps
            .headers
            .get("x-imago-steps")
            .and_then(|v| v.to_str().ok()),
        Some("2")
    );

    // The local model still answers locally; unknown models list the upstream ones too.
    let local = post(
        router,
        CLIENT_KEY,
        "/api/v1/images",
        &json!({"model": "local-model", "prompt": PROMPT, "seed": 7}),
    )
    .await;
    assert_eq!(local.status, 200, "{}", local.text);
    assert_eq!(local.provider(), "local");
    let unknown = post(
        router,
        CLIENT_KEY,
        "/api/v1/images",
        &json!({"model": "nope", "prompt": PROMPT}),
    )
    .await;
    assert_eq!(unknown.status, 404);
    assert!(unknown.text.contains("up-model") && unknown.text.contains("local-model"));

    // Merged model lists: the upstream's item as the upstream lists it (endpoints path aside).
    let listed = get(router, CLIENT_KEY, "/api/v1/images/models").await;
    let upstream_listed = get(up, UPSTREAM_KEY, "/api/v1/images/models").await;
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, ["local-model", "up-model"]);
    assert_eq!(
        listed["data"][1]["supported_parameters"],
        upstream_listed["data"][0]["supported_parameters"]
    );
    assert_eq!(
        listed["data"][1]["name"],
        upstream_listed["data"][0]["name"]
    );
    let endpoints = get(
        router,
        CLIENT_KEY,
        "/api/v1/images/models/up-model/endpoints",
    )
    .await;
    let slugs: Vec<&str> = endpoints["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .filter_map(|e| e["provider_slug"].as_str())
        .collect();
    assert_eq!(slugs, ["dead", "spy", "good", "good-openai"]);
    assert_eq!(
        endpoints["endpoints"][2]["supported_parameters"],
        upstream_listed["data"][0]["supported_parameters"]
    );
    let openai_listed = get(router, CLIENT_KEY, "/v1/models").await;
    let ids: Vec<&str> = openai_listed["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, ["local-model", "up-model"]);

    // A stream through the router: partial images, then the completed image, then [DONE].
    let mut body = generation(json!(["dead", "good"]), None);
    body["stream"] = json!(true);
    let streamed = post(router, CLIENT_KEY, "/api/v1/images", &body).await;
    assert_eq!(streamed.status, 200, "{}", streamed.text);
    assert!(streamed
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream")));
    assert_eq!(streamed.provider(), "good");
    let events = sse_events(&streamed.text);
    let names: Vec<&str> = events.iter().filter_map(|(n, _)| n.as_deref()).collect();
    assert!(names.len() >= 2, "{names:?}");
    assert!(names[..names.len() - 1]
        .iter()
        .all(|n| *n == "image_generation.partial_image"));
    assert_eq!(names.last(), Some(&"image_generation.completed"));
    assert_eq!(events.last().map(|(_, d)| d.as_str()), Some("[DONE]"));
    let completed: Value = serde_json::from_str(&events[events.len() - 2].1).expect("JSON");
    assert_eq!(image_bytes(&completed["b64_json"]), reference);
    // The upstream's own stream, event for event.
    let direct_body = json!({"model": "up-model", "prompt": PROMPT, "seed": 7, "stream": true});
    let direct_stream = post(up, UPSTREAM_KEY, "/api/v1/images", &direct_body).await;
    let direct_events = sse_events(&direct_stream.text);
    assert_eq!(direct_events.len(), events.len());
    for ((name_a, data_a), (name_b, data_b)) in direct_events.iter().zip(&events) {
        assert_eq!(name_a, name_b);
        let strip = |d: &str| {
            let mut v: Value = serde_json::from_str(d).unwrap_or(json!(d));
            if let Some(o) = v.as_object_mut() {
                o.remove("created");
                o.remove("created_at");
            }
            v
        };
        assert_eq!(strip(data_a), strip(data_b));
    }

    // OpenAI's API through the router to an OpenRouter-kind upstream: translated both ways.
    let openai_stream = post(
        router,
        CLIENT_KEY,
        "/v1/images/generations",
        &json!({"model": "up-model", "prompt": PROMPT, "stream": true, "partial_images": 1}),
    )
    .await;
    assert_eq!(openai_stream.status, 200, "{}", openai_stream.text);
    let events = sse_events(&openai_stream.text);
    let names: Vec<&str> = events.iter().filter_map(|(n, _)| n.as_deref()).collect();
    assert_eq!(
        names,
        [
            "image_generation.partial_image",
            "image_generation.completed"
        ],
        "{}",
        openai_stream.text
    );
    let completed: Value = serde_json::from_str(&events[1].1).expect("JSON");
    assert!(
        completed["usage"]["output_tokens"].as_u64().unwrap_or(0) > 0,
        "{completed}"
    );
    assert!(image_bytes(&completed["b64_json"]).starts_with(b"\x89PNG"));

    // OpenRouter's API to an OpenAI-kind upstream: a JSON answer in OpenRouter's shape.
    let to_openai = post(
        router,
        CLIENT_KEY,
        "/api/v1/images",
        &json!({"model": "up-model", "prompt": PROMPT,
                "provider": {"order": ["good-openai"], "allow_fallbacks": false}}),
    )
    .await;
    assert_eq!(to_openai.status, 200, "{}", to_openai.text);
    assert_eq!(to_openai.provider(), "good-openai");
    let answer = to_openai.json();
    assert_eq!(answer["data"][0]["media_type"], "image/png");
    assert!(
        answer["usage"]["completion_tokens"].as_u64().unwrap_or(0) > 0,
        "{answer}"
    );
    // A seed cannot be carried by OpenAI's API: a 400 naming it.
    let seeded = post(
        router,
        CLIENT_KEY,
        "/api/v1/images",
        &generation(json!(["good-openai"]), Some(false)),
    )
    .await;
    assert_eq!(seeded.status, 400, "{}", seeded.text);
    assert_eq!(seeded.json()["error"]["metadata"]["field"], "seed");
}

#[test]
fn a_missing_key_variable_is_a_startup_error_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let providers = dir.path().join("providers.toml");
    std::fs::write(
        &providers,
        "[[providers]]\nslug = \"lab\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\
         api_key_env = \"ROUTER_TEST_UNSET_KEY\"\nmodels = [\"m\"]\n",
    )
    .expect("write");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_imago"))
        .args([
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--model",
            "imago/tiny-sd",
        ])
        .arg("--providers-file")
        .arg(&providers)
        .env_remove("ROUTER_TEST_UNSET_KEY")
        .output()
        .expect("run imago serve");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("ROUTER_TEST_UNSET_KEY") && stderr.contains("lab"),
        "{stderr}"
    );
}
