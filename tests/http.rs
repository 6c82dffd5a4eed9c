//! The HTTP API end to end, in process: the real router and engine on 127.0.0.1:0, driven with
//! reqwest. Every request field and error of issue 3 on both surfaces (`/api/v1/images`, OpenRouter
//! shapes; `/v1/images/generations`, OpenAI shapes), the listings, auth, limits and failures.
//! Generations are tiny (64x64, 1-2 steps) unless the size is what is tested.
#[path = "common/server.rs"]
mod server;

use std::io::Cursor;
use std::time::Duration;

use base64::Engine as _;
use imago::config::{read_keys_file, Limits};
use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_TYPE};
use serde_json::{json, Value};
use server::{fixture_model_copy, model, serve, serve_with_playground, start_engine, TestServer};
use tokio::sync::OnceCell;

const TINY: &str = "imago/tiny-sd";
/// The parity fixture folder served under an id of our choosing.
const FIXTURE: &str = "fixture-sd-turbo";
/// A fixture copy whose scheduler config only fails when a generation builds the scheduler.
const BROKEN: &str = "broken-scheduler";
/// The FLUX parity fixture (schnell-like) served under an id of our choosing.
const FLUX: &str = "fixture-flux";
const KEY: &str = "sk-test-full";
/// A key whose allow-list (in the keys file) holds only the tiny model.
const LIMITED_KEY: &str = "sk-test-limited";

// ------------------------------------------------------------------------------------------------
// Servers
// ------------------------------------------------------------------------------------------------

/// The server most tests share: tiny-sd, the fixture model and the broken copy, keys from a keys
/// file, default limits (private reference URLs refused).
async fn main_server() -> &'static TestServer {
    static MAIN: OnceCell<TestServer> = OnceCell::const_new();
    MAIN.get_or_init(|| async {
        let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/parity/sd-turbo-1step/model");
        let flux = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/parity/flux-schnell-4step/model");
        let broken = fixture_model_copy("sd-turbo-1step", BROKEN, |config| {
            config["timestep_spacing"] = json!("bogus");
        });
        let (engine, caps) = start_engine(
            vec![
                model(TINY, TINY),
                model(FIXTURE, fixture.to_string_lossy()),
                model(BROKEN, broken.to_string_lossy()),
                model(FLUX, flux.to_string_lossy()),
            ],
            64,
        )
        .await;
        let keys_dir = tempfile::tempdir().unwrap();
        let keys_path = keys_dir.path().join("keys.toml");
        std::fs::write(
            &keys_path,
            format!(
                "[[keys]]\nname = \"full\"\nkey = \"{KEY}\"\n\n\
                 [[keys]]\nname = \"limited\"\nkey = \"{LIMITED_KEY}\"\nmodels = [\"{TINY}\"]\n"
            ),
        )
        .unwrap();
        let keys = read_keys_file(&keys_path).unwrap();
        serve(engine, caps, keys, Limits::default()).await
    })
    .await
}

fn client(key: Option<&str>) -> reqwest::Client {
    let mut headers = HeaderMap::new();
    if let Some(key) = key {
        headers.insert(AUTHORIZATION, format!("Bearer {key}").parse().unwrap());
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(120))
        .no_proxy()
        .build()
        .unwrap()
}

struct Reply {
    status: u16,
    headers: HeaderMap,
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

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header; headers: {:?}", self.headers))
            .to_str()
            .unwrap()
    }

    fn header_u64(&self, name: &str) -> u64 {
        self.header(name)
            .parse()
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// `x-imago-size` as (width, height).
    fn size(&self) -> (u32, u32) {
        parse_size(self.header("x-imago-size"))
    }

    fn expect(self, status: u16) -> Self {
        assert_eq!(self.status, status, "body: {}", self.text());
        self
    }
}

/// The size a generation would have, from a stream's `x-imago-size` header (sent before the job
/// runs); the client leaves at once, which cancels the job. A refused request comes back whole.
async fn planned_size(server: &TestServer, body: &Value) -> Result<(u32, u32), Reply> {
    let response = client(Some(KEY))
        .post(server.url(OR))
        .header(CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(body).unwrap())
        .send()
        .await
        .expect("request");
    if response.status() != 200 {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.expect("body").to_vec();
        return Err(Reply {
            status,
            headers,
            body,
        });
    }
    let size = response
        .headers()
        .get("x-imago-size")
        .expect("x-imago-size on a stream")
        .to_str()
        .unwrap();
    Ok(parse_size(size))
}

fn parse_size(text: &str) -> (u32, u32) {
    let (w, h) = text.split_once('x').expect("WxH");
    (w.parse().unwrap(), h.parse().unwrap())
}

async fn send(request: reqwest::RequestBuilder) -> Reply {
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.bytes().await.expect("body").to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

async fn post_raw(server: &TestServer, key: Option<&str>, path: &str, body: Vec<u8>) -> Reply {
    send(
        client(key)
            .post(server.url(path))
            .header(CONTENT_TYPE, "application/json")
            .body(body),
    )
    .await
}

async fn post(server: &TestServer, path: &str, body: &Value) -> Reply {
    post_raw(server, Some(KEY), path, serde_json::to_vec(body).unwrap()).await
}

async fn get(server: &TestServer, key: Option<&str>, path: &str) -> Reply {
    send(client(key).get(server.url(path))).await
}

const OR: &str = "/api/v1/images";
const OA: &str = "/v1/images/generations";

/// A cheap valid OpenRouter request on the tiny model with `extra` fields merged in (a `null`
/// value removes the field).
fn or_body(extra: Value) -> Value {
    let mut body = json!({
        "model": TINY,
        "prompt": "a lighthouse at dusk",
        "size": "64x64",
        "provider": {"options": {"local": {"steps": 1}}},
    });
    merge(&mut body, extra);
    body
}

/// A cheap valid OpenAI request on the tiny model (its low quality is 2 steps).
fn oa_body(extra: Value) -> Value {
    let mut body = json!({
        "model": TINY,
        "prompt": "a lighthouse at dusk",
        "size": "64x64",
        "quality": "low",
    });
    merge(&mut body, extra);
    body
}

fn merge(body: &mut Value, extra: Value) {
    let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) else {
        panic!("objects expected");
    };
    for (k, v) in extra {
        if v.is_null() {
            body.remove(&k);
        } else {
            body.insert(k, v);
        }
    }
}

fn b64_decode(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64")
}

/// The decoded images of a JSON generation response (either surface).
fn images(reply: &Reply) -> Vec<Vec<u8>> {
    reply.json()["data"]
        .as_array()
        .expect("data array")
        .iter()
        .map(|d| b64_decode(d["b64_json"].as_str().expect("b64_json")))
        .collect()
}

fn is_png(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\x89PNG\r\n\x1a\n")
}

fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, 0xD8, 0xFF])
}

fn is_webp(bytes: &[u8]) -> bool {
    bytes.len() > 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP"
}

fn dimensions(bytes: &[u8]) -> (u32, u32) {
    let img = image::load_from_memory(bytes).expect("decodable image");
    (img.width(), img.height())
}

/// An OpenRouter 400 that names `field` in `error.metadata.field`.
fn assert_or_field_error(reply: &Reply, field: &str, what: &str) {
    assert_eq!(reply.status, 400, "{what}: {}", reply.text());
    let body = reply.json();
    assert_eq!(body["error"]["code"], 400, "{what}: {body}");
    assert_eq!(body["error"]["metadata"]["field"], field, "{what}: {body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.contains(field),
        "{what}: message {message:?} does not name {field}"
    );
    assert!(
        !message.contains(&format!("{field}: {field}:")),
        "{what}: field named twice: {message:?}"
    );
}

/// An OpenAI 400 that names `param`.
fn assert_oa_field_error(reply: &Reply, param: &str, what: &str) {
    assert_eq!(reply.status, 400, "{what}: {}", reply.text());
    let body = reply.json();
    assert_oa_envelope(&body, "invalid_request_error");
    assert_eq!(body["error"]["param"], param, "{what}: {body}");
}

/// A 400 for a body serde refused: the message names the field (no metadata.field then).
fn assert_body_error_names(reply: &Reply, field: &str, openai: bool, what: &str) {
    assert_eq!(reply.status, 400, "{what}: {}", reply.text());
    let body = reply.json();
    if openai {
        assert_oa_envelope(&body, "invalid_request_error");
    } else {
        assert_eq!(body["error"]["code"], 400, "{what}: {body}");
        assert!(body["error"]["metadata"].is_object(), "{what}: {body}");
    }
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.contains(field),
        "{what}: message {message:?} does not name {field}"
    );
}

/// OpenAI's envelope: exactly message, type, param and code.
fn assert_oa_envelope(body: &Value, kind: &str) {
    let error = body["error"]
        .as_object()
        .unwrap_or_else(|| panic!("no error object: {body}"));
    let mut keys: Vec<&str> = error.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["code", "message", "param", "type"], "{body}");
    assert!(error["message"].is_string(), "{body}");
    assert_eq!(error["type"], kind, "{body}");
}

/// OpenRouter's envelope: code (the HTTP status), message, metadata.
fn assert_or_envelope(body: &Value, status: u16) {
    let error = body["error"]
        .as_object()
        .unwrap_or_else(|| panic!("no error object: {body}"));
    assert_eq!(error["code"], status, "{body}");
    assert!(error["message"].is_string(), "{body}");
    assert!(error["metadata"].is_object(), "{body}");
}

fn png_data_url(width: u32, height: u32) -> String {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 4) as u8, ((x + y) * 2) as u8])
    });
    let mut bytes = Vec::new();
    img.write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
        .unwrap();
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

// ------------------------------------------------------------------------------------------------
// 400s, table-driven
// ------------------------------------------------------------------------------------------------

#[tokio::test]
async fn openrouter_invalid_fields_are_400s_naming_the_field() {
    let server = main_server().await;
    let data_url = png_data_url(16, 16);
    let reference = |url: &str| json!({"type": "image_url", "image_url": {"url": url}});
    let local = |options: Value| json!({"provider": {"options": {"local": options}}});
    let cases: Vec<(&str, Value, &str)> = vec![
        ("empty prompt", json!({"prompt": ""}), "prompt"),
        ("size not WxH or tier", json!({"size": "big"}), "size"),
        ("size not a multiple of 8", json!({"size": "68x64"}), "size"),
        (
            "size below the model's minimum",
            json!({"size": "32x32"}),
            "size",
        ),
        (
            "size above the model's maximum",
            json!({"size": "2048x2048"}),
            "size",
        ),
        (
            "size WxH disagrees with resolution",
            json!({"size": "512x512", "resolution": "1K"}),
            "resolution",
        ),
        (
            "size WxH disagrees with aspect_ratio",
            json!({"size": "512x512", "aspect_ratio": "16:9"}),
            "aspect_ratio",
        ),
        (
            "size tier disagrees with resolution",
            json!({"size": "1K", "resolution": "512"}),
            "resolution",
        ),
        ("n 0", json!({"n": 0}), "n"),
        ("n 11", json!({"n": 11}), "n"),
        ("seed -1", json!({"seed": -1}), "seed"),
        ("seed 1.5", json!({"seed": 1.5}), "seed"),
        ("seed 1e3 (a float)", json!({"seed": 1e3}), "seed"),
        (
            "output_format svg",
            json!({"output_format": "svg"}),
            "output_format",
        ),
        (
            "output_compression 101",
            json!({"output_compression": 101}),
            "output_compression",
        ),
        (
            "output_compression -1",
            json!({"output_compression": -1}),
            "output_compression",
        ),
        (
            "transparent with jpeg",
            json!({"background": "transparent", "output_format": "jpeg"}),
            "background",
        ),
        (
            "transparent with png on a model without alpha",
            json!({"background": "transparent", "output_format": "png"}),
            "background",
        ),
        (
            "two references (the model takes one)",
            json!({"input_references": [reference(&data_url), reference(&data_url)]}),
            "input_references",
        ),
        (
            "ftp reference",
            json!({"input_references": [reference("ftp://example.com/a.png")]}),
            "input_references[0].image_url.url",
        ),
        (
            "data URL that is not an image",
            json!({"input_references": [reference("data:text/plain;base64,aGVsbG8=")]}),
            "input_references[0].image_url.url",
        ),
        (
            "data URL that is not base64",
            json!({"input_references": [reference("data:image/png;base64,@@@")]}),
            "input_references[0].image_url.url",
        ),
        (
            "data URL whose bytes are not a PNG",
            json!({"input_references": [reference("data:image/png;base64,aGVsbG8gd29ybGQ=")],
                   "provider": {"options": {"local": {"steps": 2}}}}),
            "input_references[0]",
        ),
        (
            "a reference with too few steps for its strength",
            json!({"input_references": [reference(&data_url)]}),
            "provider.options.local.steps",
        ),
        (
            "provider.only without local",
            json!({"provider": {"only": ["openai"]}}),
            "provider.only",
        ),
        (
            "provider.ignore with local",
            json!({"provider": {"ignore": ["local"]}}),
            "provider.ignore",
        ),
        (
            "unknown local option",
            local(json!({"cfg": 3})),
            "provider.options.local.cfg",
        ),
        (
            "steps 0",
            local(json!({"steps": 0})),
            "provider.options.local.steps",
        ),
        (
            "steps over max_steps",
            local(json!({"steps": 51})),
            "provider.options.local.steps",
        ),
        (
            "steps 1.5",
            local(json!({"steps": 1.5})),
            "provider.options.local.steps",
        ),
        (
            "guidance_scale negative",
            local(json!({"steps": 1, "guidance_scale": -1})),
            "provider.options.local.guidance_scale",
        ),
        (
            "negative_prompt not a string",
            local(json!({"steps": 1, "negative_prompt": 3})),
            "provider.options.local.negative_prompt",
        ),
        (
            "unknown scheduler",
            local(json!({"steps": 1, "scheduler": "lms"})),
            "provider.options.local.scheduler",
        ),
        (
            "strength without a reference",
            local(json!({"steps": 1, "strength": 0.5})),
            "provider.options.local.strength",
        ),
        (
            "strength 0 with a reference",
            json!({"provider": {"options": {"local": {"steps": 1, "strength": 0}}},
                   "input_references": [reference(&data_url)]}),
            "provider.options.local.strength",
        ),
        (
            "partial_images 4",
            local(json!({"steps": 1, "partial_images": 4})),
            "provider.options.local.partial_images",
        ),
        (
            "unknown preview",
            local(json!({"steps": 1, "preview": "vae"})),
            "provider.options.local.preview",
        ),
    ];
    for (what, extra, field) in cases {
        let reply = post(server, OR, &or_body(extra)).await;
        assert_or_field_error(&reply, field, what);
    }

    // Bodies serde refuses: the field serde was reading is named (its path when it has one).
    let mut missing_model = or_body(json!({}));
    missing_model.as_object_mut().unwrap().remove("model");
    let mut missing_prompt = or_body(json!({}));
    missing_prompt.as_object_mut().unwrap().remove("prompt");
    let serde_cases: Vec<(&str, Value, Option<&str>, &str)> = vec![
        ("model missing", missing_model, None, "model"),
        ("prompt missing", missing_prompt, None, "prompt"),
        (
            "unknown top-level field",
            or_body(json!({"steps": 4})),
            Some("steps"),
            "steps",
        ),
        (
            "unknown aspect_ratio",
            or_body(json!({"aspect_ratio": "3:7"})),
            Some("aspect_ratio"),
            "3:7",
        ),
        (
            "unknown resolution",
            or_body(json!({"resolution": "3K"})),
            Some("resolution"),
            "3K",
        ),
        (
            "unknown quality",
            or_body(json!({"quality": "ultra"})),
            Some("quality"),
            "ultra",
        ),
        (
            "unknown background",
            or_body(json!({"background": "clear"})),
            Some("background"),
            "clear",
        ),
        (
            "unknown output_format",
            or_body(json!({"output_format": "gif"})),
            Some("output_format"),
            "gif",
        ),
        (
            "n not an integer",
            or_body(json!({"n": "two"})),
            Some("n"),
            "two",
        ),
        (
            "stream not a boolean",
            or_body(json!({"stream": "yes"})),
            Some("stream"),
            "yes",
        ),
        (
            "size not a string",
            or_body(json!({"size": 512})),
            Some("size"),
            "512",
        ),
        (
            "reference part of another type",
            or_body(json!({"input_references": [{"type": "text"}]})),
            Some("input_references[0].type"),
            "text",
        ),
        (
            "unknown key in a reference",
            or_body(json!({"input_references": [{"detail": "high"}]})),
            Some("input_references[0].detail"),
            "detail",
        ),
        (
            "unknown provider field",
            or_body(json!({"provider": {"fastest": true}})),
            Some("provider.fastest"),
            "fastest",
        ),
        (
            "unknown provider.sort",
            or_body(json!({"provider": {"sort": "cheapest"}})),
            Some("provider.sort"),
            "sort",
        ),
    ];
    for (what, body, path, named) in serde_cases {
        let reply = post(server, OR, &body).await;
        match path {
            Some(field) => assert_or_field_error(&reply, field, what),
            None => assert_body_error_names(&reply, named, false, what),
        }
        assert!(reply.text().contains(named), "{what}: {}", reply.text());
    }
    // seed 2^64 (one past u64::MAX), as raw JSON.
    let raw =
        format!(r#"{{"model":"{TINY}","prompt":"x","size":"64x64","seed":18446744073709551616}}"#);
    assert_or_field_error(
        &post_raw(server, Some(KEY), OR, raw.into_bytes()).await,
        "seed",
        "seed 2^64",
    );
    let reply = post_raw(server, Some(KEY), OR, b"{not json".to_vec()).await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert_or_envelope(&reply.json(), 400);
}

#[tokio::test]
async fn openai_invalid_fields_are_400s_naming_the_param() {
    let server = main_server().await;
    let cases: Vec<(&str, Value, &str)> = vec![
        ("empty prompt", json!({"prompt": ""}), "prompt"),
        ("size not WxH", json!({"size": "huge"}), "size"),
        ("size not a multiple of 8", json!({"size": "64x60"}), "size"),
        ("n 0", json!({"n": 0}), "n"),
        ("n 11", json!({"n": 11}), "n"),
        (
            "output_format svg",
            json!({"output_format": "svg"}),
            "output_format",
        ),
        (
            "output_format gif",
            json!({"output_format": "gif"}),
            "output_format",
        ),
        (
            "output_compression 101",
            json!({"output_compression": 101}),
            "output_compression",
        ),
        (
            "transparent with jpeg",
            json!({"background": "transparent", "output_format": "jpeg"}),
            "background",
        ),
        (
            "transparent with png on a model without alpha",
            json!({"background": "transparent"}),
            "background",
        ),
        (
            "response_format url",
            json!({"response_format": "url"}),
            "response_format",
        ),
        ("style (DALL-E 3 only)", json!({"style": "vivid"}), "style"),
        (
            "partial_images 4",
            json!({"partial_images": 4}),
            "partial_images",
        ),
        (
            "partial_images -1",
            json!({"partial_images": -1}),
            "partial_images",
        ),
    ];
    for (what, extra, param) in cases {
        let reply = post(server, OA, &oa_body(extra)).await;
        assert_oa_field_error(&reply, param, what);
    }
    let serde_cases: Vec<(&str, Value, &str)> = vec![
        ("prompt missing", oa_body(json!({"prompt": null})), "prompt"),
        ("unknown field", oa_body(json!({"seed": 3})), "seed"),
    ];
    for (what, body, field) in serde_cases {
        let reply = post(server, OA, &body).await;
        assert_body_error_names(&reply, field, true, what);
    }
    for (what, extra, param) in [
        ("unknown quality", json!({"quality": "ultra"}), "quality"),
        (
            "unknown moderation",
            json!({"moderation": "strict"}),
            "moderation",
        ),
        ("n not an integer", json!({"n": 1.5}), "n"),
    ] {
        let reply = post(server, OA, &oa_body(extra)).await;
        assert_oa_field_error(&reply, param, what);
    }
}

// ------------------------------------------------------------------------------------------------
// Sizes
// ------------------------------------------------------------------------------------------------

/// Acceptance: resolution 512 with 16:9 gives sides that are multiples of 8, the ratio within 3%
/// and the area within 15% of 512x512.
#[tokio::test]
async fn resolution_and_aspect_ratio_give_the_promised_size() {
    let server = main_server().await;
    let reply = post(
        server,
        OR,
        &or_body(json!({"size": null, "resolution": "512", "aspect_ratio": "16:9"})),
    )
    .await
    .expect(200);
    let (w, h) = reply.size();
    assert_eq!(dimensions(&images(&reply)[0]), (w, h));
    assert!(w % 8 == 0 && h % 8 == 0, "{w}x{h}");
    let ratio = w as f64 / h as f64;
    assert!((ratio / (16.0 / 9.0) - 1.0).abs() <= 0.03, "{w}x{h}");
    let area = (w * h) as f64;
    assert!((area / (512.0 * 512.0) - 1.0).abs() <= 0.15, "{w}x{h}");
}

/// Every aspect ratio of the SDK is accepted and honoured (at the model's default area). The size
/// is read from a stream's `x-imago-size` header, sent before the generation runs; the client then
/// leaves, which cancels the job, so 26 sizes cost little.
#[tokio::test]
async fn every_aspect_ratio_is_accepted() {
    let server = main_server().await;
    let ratios = [
        "1:1", "1:2", "1:4", "1:8", "2:1", "2:3", "2.35:1", "3:2", "3:4", "4:1", "4:3", "4:5",
        "5:2", "5:4", "5:7", "7:5", "8:1", "9:16", "16:9", "9:19.5", "19.5:9", "9:20", "20:9",
        "9:21", "21:9", "auto",
    ];
    for ratio in ratios {
        let body = or_body(json!({"size": null, "aspect_ratio": ratio, "stream": true}));
        let (w, h) = planned_size(server, &body)
            .await
            .unwrap_or_else(|r| panic!("{ratio}: {}", r.text()));
        assert!(w % 8 == 0 && h % 8 == 0, "{ratio}: {w}x{h}");
        assert!(
            (64..=1024).contains(&w) && (64..=1024).contains(&h),
            "{ratio}: {w}x{h}"
        );
        let expected = if ratio == "auto" {
            1.0
        } else {
            let (a, b) = ratio.split_once(':').unwrap();
            a.parse::<f64>().unwrap() / b.parse::<f64>().unwrap()
        };
        let actual = w as f64 / h as f64;
        // Rounding each side to 8 moves the ratio by at most 8/side on each side.
        let tolerance = 8.0 / w as f64 + 8.0 / h as f64;
        assert!(
            (actual / expected - 1.0).abs() <= tolerance,
            "{ratio}: {w}x{h} has ratio {actual:.3}"
        );
        // The area is the model's default (256x256) unless a side had to be clamped.
        if w < 1024 && h < 1024 && w > 64 && h > 64 {
            let area = (w * h) as f64;
            assert!((area / 65536.0 - 1.0).abs() <= 0.1, "{ratio}: {w}x{h}");
        }
    }
    // A generated image has the size the header promises.
    let reply = post(
        server,
        OR,
        &or_body(json!({"size": null, "aspect_ratio": "4:1"})),
    )
    .await
    .expect(200);
    assert_eq!(reply.size(), (512, 128));
    assert_eq!(dimensions(&images(&reply)[0]), (512, 128));
}

#[tokio::test]
async fn size_tiers_and_defaults() {
    let server = main_server().await;
    let cases: Vec<(Value, (u32, u32))> = vec![
        // Nothing given: the model's default size.
        (json!({"size": null}), (256, 256)),
        (json!({"size": "512", "resolution": "512"}), (512, 512)),
        (json!({"size": "128x64"}), (128, 64)),
        // A matching pair is fine.
        (json!({"size": "128x64", "aspect_ratio": "2:1"}), (128, 64)),
    ];
    for (extra, expected) in cases {
        let reply = post(server, OR, &or_body(extra.clone())).await;
        assert_eq!(reply.status, 200, "{extra}: {}", reply.text());
        assert_eq!(reply.size(), expected, "{extra}");
        assert_eq!(dimensions(&images(&reply)[0]), expected, "{extra}");
    }
    // Every resolution tier; the tiny model's sides stop at 1024.
    for (tier, side) in [
        ("512", 512),
        ("768", 768),
        ("1K", 1024),
        ("1.5K", 1024),
        ("2K", 1024),
        ("4K", 1024),
    ] {
        let body = or_body(json!({"size": null, "resolution": tier, "stream": true}));
        let planned = planned_size(server, &body).await.map_err(|r| r.text());
        assert_eq!(planned, Ok((side, side)), "resolution {tier}");
        let body = or_body(json!({"size": tier, "stream": true}));
        let planned = planned_size(server, &body).await.map_err(|r| r.text());
        assert_eq!(planned, Ok((side, side)), "size {tier}");
    }
    // A tier in size is case-insensitive and equals resolution ("1k" is 1024: it conflicts with
    // 512 and agrees with 1K, which then fails on n alone, so nothing is generated).
    assert_or_field_error(
        &post(
            server,
            OR,
            &or_body(json!({"size": "1k", "resolution": "512"})),
        )
        .await,
        "resolution",
        "1k vs 512",
    );
    assert_or_field_error(
        &post(
            server,
            OR,
            &or_body(json!({"size": "1k", "resolution": "1K", "n": 0})),
        )
        .await,
        "n",
        "1k with 1K",
    );
    // OpenAI: "auto" is the default size; WxH is honoured and reported in `size`.
    for (size, expected) in [("auto", "256x256"), ("128x64", "128x64")] {
        let reply = post(server, OA, &oa_body(json!({"size": size})))
            .await
            .expect(200);
        assert_eq!(reply.json()["size"], expected);
        assert_eq!(reply.header("x-imago-size"), expected);
    }
}

// ------------------------------------------------------------------------------------------------
// Accepted fields
// ------------------------------------------------------------------------------------------------

#[tokio::test]
async fn quality_maps_to_the_model_steps() {
    let server = main_server().await;
    // imago/tiny-sd's table: low 2, medium 4, high 8, xhigh 12, max 16; auto 4.
    let no_steps = |quality: &str| {
        let mut body = or_body(json!({"quality": quality}));
        body.as_object_mut().unwrap().remove("provider");
        body
    };
    for (quality, steps) in [("low", 2), ("auto", 4), ("high", 8), ("max", 16)] {
        let reply = post(server, OR, &no_steps(quality)).await.expect(200);
        assert_eq!(
            reply.header_u64("x-imago-steps"),
            steps,
            "quality {quality}"
        );
    }
    // options.local.steps overrides quality.
    let reply = post(server, OR, &or_body(json!({"quality": "max"})))
        .await
        .expect(200);
    assert_eq!(reply.header_u64("x-imago-steps"), 1);
    // OpenAI: low/medium/high and DALL-E 3's standard/hd (medium/high).
    for (quality, steps, reported) in [
        ("low", 2, "low"),
        ("standard", 4, "medium"),
        ("hd", 8, "high"),
    ] {
        let reply = post(server, OA, &oa_body(json!({"quality": quality})))
            .await
            .expect(200);
        assert_eq!(
            reply.header_u64("x-imago-steps"),
            steps,
            "quality {quality}"
        );
        assert_eq!(reply.json()["quality"], reported, "quality {quality}");
    }
}

#[tokio::test]
async fn output_formats_have_their_magic_bytes() {
    let server = main_server().await;
    type Check = fn(&[u8]) -> bool;
    let formats: [(&str, &str, Check); 3] = [
        ("png", "image/png", is_png),
        ("jpeg", "image/jpeg", is_jpeg),
        ("webp", "image/webp", is_webp),
    ];
    for (format, media_type, check) in formats {
        let reply = post(
            server,
            OR,
            &or_body(
                json!({"output_format": format, "output_compression": 80, "background": "opaque"}),
            ),
        )
        .await
        .expect(200);
        assert_eq!(reply.json()["data"][0]["media_type"], media_type);
        let bytes = &images(&reply)[0];
        assert!(
            check(bytes),
            "{format}: {:?}",
            &bytes[..12.min(bytes.len())]
        );
        assert_eq!(dimensions(bytes), (64, 64));

        let reply = post(
            server,
            OA,
            &oa_body(
                json!({"output_format": format, "output_compression": 50, "background": "auto"}),
            ),
        )
        .await
        .expect(200);
        assert_eq!(reply.json()["output_format"], format);
        assert!(check(&images(&reply)[0]), "openai {format}");
    }
    // Compression changes a JPEG.
    let low = post(
        server,
        OR,
        &or_body(json!({"output_format": "jpeg", "output_compression": 5, "seed": 9})),
    )
    .await
    .expect(200);
    let high = post(
        server,
        OR,
        &or_body(json!({"output_format": "jpeg", "output_compression": 100, "seed": 9})),
    )
    .await
    .expect(200);
    assert!(images(&low)[0].len() < images(&high)[0].len());
}

#[tokio::test]
async fn local_options_are_each_accepted() {
    let server = main_server().await;
    let options = [
        json!({"steps": 2}),
        json!({"guidance_scale": 3.5}),
        json!({"negative_prompt": "blurry"}),
        json!({"scheduler": "ddim"}),
        json!({"scheduler": "dpmpp_2m_karras", "steps": 2}),
        json!({"partial_images": 3}),
        json!({"preview": "latent"}),
        json!({"preview": "auto"}),
    ];
    for option in options {
        let mut local = json!({"steps": 1});
        merge(&mut local, option.clone());
        let reply = post(
            server,
            OR,
            &or_body(json!({"provider": {"options": {"local": local}}})),
        )
        .await;
        assert_eq!(reply.status, 200, "{option}: {}", reply.text());
        if let Some(steps) = option.get("steps") {
            assert_eq!(reply.header_u64("x-imago-steps"), steps.as_u64().unwrap());
        }
    }
    // "taesd" needs a tiny autoencoder (--preview-decoder); this server has none.
    let reply = post(
        server,
        OR,
        &or_body(json!({"provider": {"options": {"local": {"steps": 1, "preview": "taesd"}}}})),
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert!(
        reply.text().contains("provider.options.local.preview")
            && reply.text().contains("--preview-decoder")
    );
    // Routing fields and other providers' options are accepted; the latter are ignored.
    let reply = post(
        server,
        OR,
        &or_body(json!({"provider": {
            "only": ["local"], "order": ["local", "openai"], "allow_fallbacks": true, "sort": "price",
            "options": {"local": {"steps": 1}, "openai": {"quality": "hd", "anything": [1, 2]}}
        }})),
    )
    .await
    .expect(200);
    assert_eq!(reply.header_u64("x-imago-steps"), 1);
    // Tracking fields are accepted.
    post(
        server,
        OR,
        &or_body(json!({"session_id": "s-1", "user": "u-1", "trace": {"run": 3}})),
    )
    .await
    .expect(200);
    // OpenAI's accepted extras.
    post(
        server,
        OA,
        &oa_body(
            json!({"moderation": "low", "response_format": "b64_json", "user": "u-2", "n": 1}),
        ),
    )
    .await
    .expect(200);
}

// ------------------------------------------------------------------------------------------------
// Input references
// ------------------------------------------------------------------------------------------------

#[tokio::test]
async fn data_url_reference_runs_image_to_image_at_the_requested_size() {
    let server = main_server().await;
    let url = png_data_url(48, 32);
    let body = |seed: u64, strength: f64| {
        or_body(json!({
            "size": "96x64",
            "seed": seed,
            "input_references": [{"type": "image_url", "image_url": {"url": url}}],
            "provider": {"options": {"local": {"steps": 2, "strength": strength}}},
        }))
    };
    let reply = post(server, OR, &body(5, 0.5)).await.expect(200);
    assert_eq!(reply.size(), (96, 64));
    let image = &images(&reply)[0];
    assert_eq!(dimensions(image), (96, 64));
    // The reference conditions the output: the same seed without it gives another picture.
    let plain = post(
        server,
        OR,
        &or_body(
            json!({"size": "96x64", "seed": 5, "provider": {"options": {"local": {"steps": 2}}}}),
        ),
    )
    .await
    .expect(200);
    assert_ne!(&images(&plain)[0], image);
}

#[tokio::test]
async fn private_reference_urls_are_refused_without_connecting() {
    let server = main_server().await;
    let trap = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    trap.set_nonblocking(true).unwrap();
    let port = trap.local_addr().unwrap().port();
    for url in [
        format!("http://127.0.0.1:{port}/cat.png"),
        format!("http://localhost:{port}/cat.png"),
        "http://169.254.169.254/latest/meta-data".to_string(),
        "http://[::1]/x.png".to_string(),
    ] {
        let reply = post(
            server,
            OR,
            &or_body(json!({
                "input_references": [{"type": "image_url", "image_url": {"url": url}}],
                "provider": {"options": {"local": {"steps": 2}}},
            })),
        )
        .await;
        assert_eq!(reply.status, 400, "{url}: {}", reply.text());
        let body = reply.json();
        let field = body["error"]["metadata"]["field"]
            .as_str()
            .unwrap_or_default();
        assert!(field.starts_with("input_references[0]"), "{url}: {body}");
    }
    match trap.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the server connected to the private address: {other:?}"),
    }
}

// ------------------------------------------------------------------------------------------------
// Responses
// ------------------------------------------------------------------------------------------------

#[tokio::test]
async fn openrouter_response_shape_and_headers() {
    let server = main_server().await;
    let reply = post(server, OR, &or_body(json!({"seed": 42})))
        .await
        .expect(200);
    let body = reply.json();
    assert!(body["created"].is_u64(), "{body}");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 1);
    assert!(data[0]["b64_json"].is_string());
    assert_eq!(data[0]["media_type"], "image/png");
    assert_eq!(data[0]["seed"], 42);
    let usage = &body["usage"];
    for key in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert!(usage[key].is_u64(), "usage.{key}: {body}");
    }
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );
    assert_eq!(reply.header("x-imago-seed"), "42");
    assert_eq!(reply.header("x-imago-size"), "64x64");
    reply.header_u64("x-queue-time-ms");
    reply.header_u64("x-inference-time-ms");
    assert!(reply.header("content-type").starts_with("application/json"));
}

#[tokio::test]
async fn openai_response_shape_and_headers() {
    let server = main_server().await;
    let reply = post(
        server,
        OA,
        &oa_body(json!({"n": 2, "output_format": "webp"})),
    )
    .await
    .expect(200);
    let body = reply.json();
    assert!(body["created"].is_u64(), "{body}");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    for item in data {
        assert!(is_webp(&b64_decode(item["b64_json"].as_str().unwrap())));
    }
    assert_eq!(body["size"], "64x64");
    assert_eq!(body["output_format"], "webp");
    assert_eq!(body["background"], "opaque");
    let usage = &body["usage"];
    for key in ["input_tokens", "output_tokens", "total_tokens"] {
        assert!(usage[key].is_u64(), "usage.{key}: {body}");
    }
    assert!(usage["input_tokens_details"].is_object(), "{body}");
    let seed = reply.header_u64("x-imago-seed");
    assert_eq!(data[0]["seed"], seed);
    reply.header_u64("x-queue-time-ms");
    reply.header_u64("x-inference-time-ms");
    assert_eq!(reply.header("x-imago-size"), "64x64");
    // Without `model`, the first served model answers.
    let reply = post(server, OA, &oa_body(json!({"model": null})))
        .await
        .expect(200);
    assert_eq!(reply.json()["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn seeds_are_deterministic_and_reported() {
    let server = main_server().await;
    let a = post(server, OR, &or_body(json!({"seed": 1234})))
        .await
        .expect(200);
    let b = post(server, OR, &or_body(json!({"seed": 1234})))
        .await
        .expect(200);
    assert_eq!(images(&a), images(&b), "same seed, different bytes");
    let c = post(server, OR, &or_body(json!({"seed": 1235})))
        .await
        .expect(200);
    assert_ne!(images(&a), images(&c));
    // The largest seed is accepted.
    let max = post(server, OR, &or_body(json!({"seed": u64::MAX})))
        .await
        .expect(200);
    assert_eq!(max.header("x-imago-seed"), u64::MAX.to_string());

    // Absent: a seed is drawn and reported, and reusing it reproduces the image.
    let drawn = post(server, OR, &or_body(json!({}))).await.expect(200);
    let seed = drawn.header_u64("x-imago-seed");
    assert_eq!(drawn.json()["data"][0]["seed"], seed);
    let again = post(server, OR, &or_body(json!({"seed": seed})))
        .await
        .expect(200);
    assert_eq!(images(&drawn), images(&again));

    // n=2: two different images, each reproducible as part of the same batch.
    let two = post(server, OR, &or_body(json!({"n": 2, "seed": 77})))
        .await
        .expect(200);
    let pair = images(&two);
    assert_eq!(pair.len(), 2);
    assert_ne!(pair[0], pair[1]);
    let two_again = post(server, OR, &or_body(json!({"n": 2, "seed": 77})))
        .await
        .expect(200);
    assert_eq!(pair, images(&two_again));
}

// ------------------------------------------------------------------------------------------------
// Streaming
// ------------------------------------------------------------------------------------------------

/// One SSE event: its `event:` name and `data:` payload.
struct SseEvent {
    name: Option<String>,
    data: String,
}

/// Splits an SSE body into events, checking the framing: every event has `data:`, every JSON
/// event an `event:` line equal to its `type`; comments (keep-alives) are skipped.
fn parse_sse(text: &str) -> Vec<SseEvent> {
    let mut events = Vec::new();
    for block in text.replace("\r\n", "\n").split("\n\n") {
        let mut name = None;
        let mut data = Vec::new();
        for line in block.lines() {
            if line.starts_with(':') || line.is_empty() {
                continue;
            }
            if let Some(v) = line.strip_prefix("event:") {
                name = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
            } else {
                panic!("unexpected SSE line {line:?}");
            }
        }
        if name.is_none() && data.is_empty() {
            continue;
        }
        assert!(!data.is_empty(), "event without data: {block:?}");
        events.push(SseEvent {
            name,
            data: data.join("\n"),
        });
    }
    events
}

/// The JSON events before `[DONE]` (which must be last), with name == type checked.
fn stream_events(reply: &Reply) -> Vec<Value> {
    assert!(
        reply
            .header("content-type")
            .starts_with("text/event-stream"),
        "{:?}",
        reply.headers
    );
    assert_eq!(reply.header("x-accel-buffering"), "no");
    let events = parse_sse(&reply.text());
    let (last, rest) = events.split_last().expect("events");
    assert_eq!(last.data, "[DONE]", "the stream must end with data: [DONE]");
    assert!(last.name.is_none());
    rest.iter()
        .map(|e| {
            let value: Value = serde_json::from_str(&e.data).expect("event JSON");
            assert_eq!(
                e.name.as_deref(),
                value["type"].as_str(),
                "event: line vs type"
            );
            value
        })
        .collect()
}

#[tokio::test]
async fn openrouter_stream_sends_partials_then_one_completed_per_image() {
    let server = main_server().await;
    let reply = post(
        server,
        OR,
        &or_body(json!({"stream": true, "n": 2, "seed": 3,
            "provider": {"options": {"local": {"steps": 2}}}})),
    )
    .await
    .expect(200);
    assert_eq!(reply.header("x-imago-seed"), "3");
    assert_eq!(reply.header("x-imago-size"), "64x64");
    let events = stream_events(&reply);
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    let first_completed = kinds
        .iter()
        .position(|k| *k == "image_generation.completed")
        .expect("a completed event");
    // Partial images (default 2 on streams) come first, for both images of the batch.
    let partials = &events[..first_completed];
    assert!(!partials.is_empty(), "no partial images: {kinds:?}");
    let mut seen = std::collections::BTreeSet::new();
    for p in partials {
        assert_eq!(p["type"], "image_generation.partial_image", "{kinds:?}");
        assert!(is_png(&b64_decode(p["b64_json"].as_str().unwrap())));
        seen.insert((
            p["image_index"].as_u64().unwrap(),
            p["partial_image_index"].as_u64().unwrap(),
        ));
    }
    assert_eq!(seen.len(), partials.len(), "duplicate partial image");
    assert!(seen.iter().any(|(i, _)| *i == 0) && seen.iter().any(|(i, _)| *i == 1));
    let completed = &events[first_completed..];
    assert_eq!(completed.len(), 2, "{kinds:?}");
    let mut streamed = Vec::new();
    for (i, c) in completed.iter().enumerate() {
        assert_eq!(c["type"], "image_generation.completed");
        assert_eq!(c["image_index"], i as u64);
        assert_eq!(c["media_type"], "image/png");
        assert!(c["created"].is_u64() && c["created_at"].is_u64(), "{c}");
        for key in ["prompt_tokens", "completion_tokens", "total_tokens"] {
            assert!(c["usage"][key].is_u64(), "usage.{key}: {c}");
        }
        streamed.push(b64_decode(c["b64_json"].as_str().unwrap()));
    }
    assert_ne!(streamed[0], streamed[1]);
    // The stream's images are the JSON answer's.
    let plain = post(
        server,
        OR,
        &or_body(json!({"n": 2, "seed": 3, "provider": {"options": {"local": {"steps": 2}}}})),
    )
    .await
    .expect(200);
    assert_eq!(images(&plain), streamed);

    // partial_images 0: only the completed event.
    let reply = post(
        server,
        OR,
        &or_body(json!({"stream": true, "provider": {"options": {"local": {"steps": 1, "partial_images": 0}}}})),
    )
    .await
    .expect(200);
    let events = stream_events(&reply);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["type"], "image_generation.completed");
}

#[tokio::test]
async fn openai_stream_has_openai_event_fields() {
    let server = main_server().await;
    let reply = post(
        server,
        OA,
        &oa_body(json!({"stream": true, "partial_images": 1, "output_format": "jpeg"})),
    )
    .await
    .expect(200);
    let events = stream_events(&reply);
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "image_generation.partial_image",
            "image_generation.completed"
        ],
        "{kinds:?}"
    );
    for e in &events {
        assert_eq!(e["size"], "64x64", "{e}");
        assert_eq!(e["output_format"], "jpeg", "{e}");
        assert_eq!(e["quality"], "low", "{e}");
        assert_eq!(e["background"], "opaque", "{e}");
        assert!(e["created_at"].is_u64(), "{e}");
        assert!(is_jpeg(&b64_decode(e["b64_json"].as_str().unwrap())));
    }
    assert_eq!(events[0]["partial_image_index"], 0);
    for key in ["input_tokens", "output_tokens", "total_tokens"] {
        assert!(
            events[1]["usage"][key].is_u64(),
            "usage.{key}: {}",
            events[1]
        );
    }
}

// ------------------------------------------------------------------------------------------------
// Auth, routes, limits
// ------------------------------------------------------------------------------------------------

#[tokio::test]
async fn keys_are_required_and_allow_lists_apply() {
    let server = main_server().await;
    let body = serde_json::to_vec(&or_body(json!({}))).unwrap();
    let oa = serde_json::to_vec(&oa_body(json!({}))).unwrap();
    for key in [None, Some("sk-wrong")] {
        let reply = post_raw(server, key, OR, body.clone()).await;
        assert_eq!(reply.status, 401, "{key:?}: {}", reply.text());
        assert_or_envelope(&reply.json(), 401);
        let reply = post_raw(server, key, OA, oa.clone()).await;
        assert_eq!(reply.status, 401, "{key:?}: {}", reply.text());
        let json = reply.json();
        assert_oa_envelope(&json, "invalid_request_error");
        assert_eq!(json["error"]["code"], "invalid_api_key");
        for path in ["/api/v1/images/models", "/v1/models"] {
            assert_eq!(get(server, key, path).await.status, 401, "{path}");
        }
    }
    // A key limited to the tiny model: 403 for another, 200 for its own.
    let other = serde_json::to_vec(&or_body(json!({"model": FIXTURE}))).unwrap();
    let reply = post_raw(server, Some(LIMITED_KEY), OR, other).await;
    assert_eq!(reply.status, 403, "{}", reply.text());
    let json = reply.json();
    assert_or_envelope(&json, 403);
    assert_eq!(json["error"]["metadata"]["field"], "model");
    let other = serde_json::to_vec(&oa_body(json!({"model": FIXTURE}))).unwrap();
    let reply = post_raw(server, Some(LIMITED_KEY), OA, other).await;
    assert_eq!(reply.status, 403, "{}", reply.text());
    let json = reply.json();
    assert_oa_envelope(&json, "invalid_request_error");
    assert_eq!(json["error"]["param"], "model");
    post_raw(server, Some(LIMITED_KEY), OR, body)
        .await
        .expect(200);
    // Liveness and readiness need no key.
    get(server, None, "/health").await.expect(200);
}

#[tokio::test]
async fn unknown_models_and_routes_are_404s_in_each_envelope() {
    let server = main_server().await;
    let reply = post(server, OR, &or_body(json!({"model": "nobody/nothing"}))).await;
    assert_eq!(reply.status, 404, "{}", reply.text());
    let json = reply.json();
    assert_or_envelope(&json, 404);
    assert_eq!(json["error"]["metadata"]["field"], "model");
    assert!(
        json["error"]["message"].as_str().unwrap().contains(TINY),
        "lists the served ids"
    );

    let reply = post(server, OA, &oa_body(json!({"model": "nobody/nothing"}))).await;
    assert_eq!(reply.status, 404, "{}", reply.text());
    let json = reply.json();
    assert_oa_envelope(&json, "invalid_request_error");
    assert_eq!(json["error"]["code"], "model_not_found");
    assert_eq!(json["error"]["param"], "model");

    let reply = get(server, Some(KEY), "/v1/nothing/here").await;
    assert_eq!(reply.status, 404);
    assert_oa_envelope(&reply.json(), "invalid_request_error");
    let reply = get(server, Some(KEY), "/api/v1/nothing").await;
    assert_eq!(reply.status, 404);
    assert_or_envelope(&reply.json(), 404);
    let reply = get(
        server,
        Some(KEY),
        "/api/v1/images/models/nobody/nothing/endpoints",
    )
    .await;
    assert_eq!(reply.status, 404);
    assert_or_envelope(&reply.json(), 404);
}

#[tokio::test]
async fn bodies_over_the_limit_are_413s() {
    let main = main_server().await;
    // Another router on the same engine, with a 2 KiB body limit.
    let limits = Limits {
        max_body_bytes: 2048,
        ..Limits::default()
    };
    let small = serve(main.engine.clone(), main.caps.clone(), vec![], limits).await;
    let long_prompt = "a".repeat(4096);
    let reply = post(&small, OR, &or_body(json!({"prompt": long_prompt}))).await;
    assert_eq!(reply.status, 413, "{}", reply.text());
    assert_or_envelope(&reply.json(), 413);
    let reply = post(&small, OA, &oa_body(json!({"prompt": long_prompt}))).await;
    assert_eq!(reply.status, 413, "{}", reply.text());
    let json = reply.json();
    assert_oa_envelope(&json, "invalid_request_error");
    assert_eq!(json["error"]["code"], "request_too_large");
    // Under the limit it serves.
    post(&small, OR, &or_body(json!({}))).await.expect(200);
}

#[tokio::test]
async fn a_full_queue_answers_429_with_retry_after() {
    // One running job and one waiting at most: a burst of slow requests overflows.
    let (engine, caps) = start_engine(vec![model(TINY, TINY)], 1).await;
    let server = serve(engine, caps, vec![], Limits::default()).await;
    let slow =
        or_body(json!({"size": "256x256", "provider": {"options": {"local": {"steps": 2}}}}));
    let requests = (0..6).map(|_| post(&server, OR, &slow));
    let replies = futures_util::future::join_all(requests).await;
    let mut refused = 0;
    for reply in &replies {
        match reply.status {
            200 => assert_eq!(images(reply).len(), 1),
            429 => {
                refused += 1;
                let retry: u64 = reply
                    .header("retry-after")
                    .parse()
                    .expect("Retry-After secs");
                assert!(retry >= 1);
                let json = reply.json();
                assert_or_envelope(&json, 429);
                assert!(json["error"]["metadata"]["retry_after_seconds"].is_u64());
            }
            other => panic!("unexpected status {other}: {}", reply.text()),
        }
    }
    assert!(
        refused >= 1,
        "no 429 among {} concurrent requests",
        replies.len()
    );
    // The first job runs (a second may have been queued before the engine took the first).
    assert!(refused < replies.len(), "every request was refused");
    // The OpenAI surface answers 429 in its envelope.
    let slow = oa_body(json!({"size": "256x256"}));
    let burst = (0..4).map(|_| post(&server, OA, &slow));
    let replies = futures_util::future::join_all(burst).await;
    let limited: Vec<&Reply> = replies.iter().filter(|r| r.status == 429).collect();
    assert!(!limited.is_empty());
    assert!(replies.iter().all(|r| r.status == 200 || r.status == 429));
    let json = limited[0].json();
    assert_oa_envelope(&json, "rate_limit_error");
    limited[0].header("retry-after");
}

#[tokio::test]
async fn engine_failures_are_generic_500s_and_the_server_keeps_serving() {
    let server = main_server().await;
    for (path, body) in [
        (
            OR,
            or_body(
                json!({"model": BROKEN, "provider": {"options": {"local": {"steps": 1, "guidance_scale": 0}}}}),
            ),
        ),
        (OA, oa_body(json!({"model": BROKEN}))),
    ] {
        let reply = post(server, path, &body).await;
        assert_eq!(reply.status, 500, "{path}: {}", reply.text());
        let text = reply.text().to_lowercase();
        for detail in ["timestep_spacing", "bogus", "scheduler", "euler"] {
            assert!(
                !text.contains(detail),
                "{path}: internal detail {detail:?} leaked: {text}"
            );
        }
        let json = reply.json();
        if path == OA {
            assert_oa_envelope(&json, "server_error");
        } else {
            assert_or_envelope(&json, 500);
        }
    }
    // A stream that fails after it started ends with an error event and [DONE].
    let reply = post(
        server,
        OR,
        &or_body(json!({"model": BROKEN, "stream": true,
            "provider": {"options": {"local": {"steps": 1, "guidance_scale": 0}}}})),
    )
    .await
    .expect(200);
    let events = stream_events(&reply);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["type"], "error");
    assert!(!reply.text().contains("bogus"));
    // The server keeps serving, the fixture model included.
    post(server, OR, &or_body(json!({}))).await.expect(200);
    let reply = post(
        server,
        OR,
        &or_body(json!({"model": FIXTURE, "provider": {"options": {"local": {"steps": 1, "guidance_scale": 0}}}})),
    )
    .await
    .expect(200);
    assert_eq!(dimensions(&images(&reply)[0]), (64, 64));
}

// ------------------------------------------------------------------------------------------------
// Listings and documents
// ------------------------------------------------------------------------------------------------

#[tokio::test]
async fn health_and_ready() {
    let server = main_server().await;
    let health = get(server, None, "/health").await.expect(200).json();
    assert_eq!(health["status"], "ok");
    let models: Vec<&str> = health["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert_eq!(models, [TINY, FIXTURE, BROKEN, FLUX]);
    assert!(health["queue_depth"].is_u64() && health["max_queue"] == 64);
    let ready = get(server, None, "/ready").await.expect(200).json();
    assert_eq!(ready["status"], "ready");
}

#[tokio::test]
async fn openrouter_model_list_has_real_capabilities() {
    let server = main_server().await;
    let list = get(server, Some(KEY), "/api/v1/images/models")
        .await
        .expect(200)
        .json();
    let data = list["data"].as_array().unwrap();
    assert_eq!(data.len(), 4);
    let find = |id: &str| {
        data.iter()
            .find(|m| m["id"] == id)
            .unwrap_or_else(|| panic!("{id} listed"))
    };
    for m in data {
        for key in [
            "id",
            "name",
            "description",
            "created",
            "architecture",
            "supported_parameters",
            "supports_streaming",
            "endpoints",
        ] {
            assert!(m.get(key).is_some(), "{key} missing: {m}");
        }
        assert_eq!(
            m["architecture"]["output_modalities"],
            json!(["image"]),
            "{m}"
        );
        assert_eq!(m["supports_streaming"], true);
    }
    let tiny = find(TINY);
    assert_eq!(
        tiny["endpoints"],
        format!("/api/v1/images/models/{TINY}/endpoints")
    );
    let p = &tiny["supported_parameters"];
    assert_eq!(
        p["steps"],
        json!({"type": "range", "min": 1.0, "max": 50.0})
    );
    assert_eq!(p["n"], json!({"type": "range", "min": 1.0, "max": 10.0}));
    assert_eq!(
        p["resolution"],
        json!({"type": "enum", "values": ["512", "768", "1K"]})
    );
    assert_eq!(p["output_format"]["values"], json!(["png", "jpeg", "webp"]));
    assert_eq!(p["background"]["values"], json!(["auto", "opaque"]));
    assert_eq!(p["stream"]["type"], "boolean");
    let schedulers = p["scheduler"]["values"].as_array().unwrap();
    assert!(schedulers.contains(&json!("euler_a")) && schedulers.contains(&json!("ddim")));
    assert_eq!(p["aspect_ratio"]["values"].as_array().unwrap().len(), 26);
    // The fixture model has no spec: its limits come from the model itself.
    let fixture = &find(FIXTURE)["supported_parameters"];
    assert_eq!(fixture["steps"]["max"], 150.0);
    assert_ne!(fixture["resolution"], p["resolution"]);

    // The endpoints route, with and without an author.
    let endpoints = get(
        server,
        Some(KEY),
        &format!("/api/v1/images/models/{TINY}/endpoints"),
    )
    .await
    .expect(200)
    .json();
    assert_eq!(endpoints["id"], TINY);
    let endpoint = &endpoints["endpoints"][0];
    assert_eq!(endpoint["provider_slug"], "local");
    assert_eq!(endpoint["supported_parameters"], *p);
    let passthrough = endpoint["allowed_passthrough_parameters"]
        .as_array()
        .unwrap();
    for option in [
        "steps",
        "guidance_scale",
        "negative_prompt",
        "scheduler",
        "strength",
        "partial_images",
        "preview",
    ] {
        assert!(passthrough.contains(&json!(option)), "{option}");
    }
    let endpoints = get(
        server,
        Some(KEY),
        &format!("/api/v1/images/models/{FIXTURE}/endpoints"),
    )
    .await
    .expect(200)
    .json();
    assert_eq!(endpoints["id"], FIXTURE);
}

#[tokio::test]
async fn openai_model_list() {
    let server = main_server().await;
    let list = get(server, Some(KEY), "/v1/models")
        .await
        .expect(200)
        .json();
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [TINY, FIXTURE, BROKEN, FLUX]);
    for m in list["data"].as_array().unwrap() {
        assert_eq!(m["object"], "model");
        assert!(m["created"].is_u64() && m["owned_by"].is_string(), "{m}");
    }
}

#[tokio::test]
async fn openapi_document_is_served_and_committed() {
    let server = main_server().await;
    let served = get(server, None, "/openapi.json").await.expect(200);
    assert!(served
        .header("content-type")
        .starts_with("application/json"));
    let document = served.json();
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/v1/images",
        "/v1/images/generations",
        "/api/v1/images/models",
        "/v1/models",
        "/health",
        "/ready",
    ] {
        assert!(
            document["paths"].get(path).is_some(),
            "{path} missing from /openapi.json"
        );
    }
    assert_eq!(served.text(), imago::api::openapi::document_json());

    // The committed copy is what `imago print-openapi` prints; regenerate it with
    // `cargo run -q -- print-openapi > openapi.json` when the wire types change.
    let printed = std::process::Command::new(env!("CARGO_BIN_EXE_imago"))
        .arg("print-openapi")
        .output()
        .expect("run imago print-openapi");
    assert!(printed.status.success());
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json"))
        .expect("openapi.json at the repository root");
    assert!(
        committed == String::from_utf8_lossy(&printed.stdout),
        "openapi.json is stale: run `cargo run -q -- print-openapi > openapi.json`"
    );
}

// ------------------------------------------------------------------------------------------------
// FLUX
// ------------------------------------------------------------------------------------------------

/// A FLUX model through the OpenRouter route gives diffusers' image for the parity case, sizes
/// come out in multiples of 16, previews stream, and options FLUX has no use for are refused.
#[tokio::test]
async fn flux_models_work_through_the_openrouter_route() {
    let server = main_server().await;
    let case_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/parity/flux-schnell-4step");
    let case: Value =
        serde_json::from_str(&std::fs::read_to_string(case_dir.join("case.json")).unwrap())
            .unwrap();
    let reply = post(
        server,
        OR,
        &json!({
            "model": FLUX,
            "prompt": case["prompt"],
            "seed": case["seed"],
            "size": "64x64",
            "provider": {"options": {"local": {"steps": case["steps"], "guidance_scale": 0,
                "max_sequence_length": case["max_sequence_length"]}}},
        }),
    )
    .await
    .expect(200);
    let got = image::load_from_memory(&images(&reply)[0])
        .unwrap()
        .to_rgb8();
    let want = image::open(case_dir.join("expected-0.png"))
        .unwrap()
        .to_rgb8();
    assert_eq!(got.dimensions(), want.dimensions());
    let worst = got
        .as_raw()
        .iter()
        .zip(want.as_raw())
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert!(
        worst <= 2,
        "FLUX over HTTP differs from diffusers by {worst}/255"
    );

    // Tiers and aspect ratios are rounded to FLUX's multiple of 16; explicit pixels must be one.
    for (ratio, resolution) in [("16:9", "512"), ("3:2", "768"), ("9:21", "512")] {
        let body = json!({"model": FLUX, "prompt": "a cat", "aspect_ratio": ratio,
            "resolution": resolution, "stream": true});
        match planned_size(server, &body).await {
            Ok((w, h)) => assert!(w % 16 == 0 && h % 16 == 0, "{w}x{h} for {body}"),
            Err(reply) => panic!("{body}: {}", reply.text()),
        }
    }
    let body = json!({"model": FLUX, "prompt": "a cat", "size": "72x96", "stream": true});
    let reply = planned_size(server, &body)
        .await
        .expect_err("72 is no multiple of 16");
    assert_or_field_error(&reply, "size", "multiple of 16");
    assert!(reply.text().contains("multiple of 16"), "{}", reply.text());

    // Streams carry previews, then the image.
    let reply = post(
        server,
        OR,
        &json!({"model": FLUX, "prompt": "a cat", "size": "64x64", "stream": true,
            "provider": {"options": {"local": {"steps": 3, "max_sequence_length": 16}}}}),
    )
    .await
    .expect(200);
    let kinds: Vec<String> = stream_events(&reply)
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect();
    assert!(
        kinds.iter().any(|k| k == "image_generation.partial_image"),
        "{kinds:?}"
    );
    assert_eq!(kinds.last().unwrap(), "image_generation.completed");

    for (option, value) in [
        ("negative_prompt", json!("blurry")),
        ("scheduler", json!("ddim")),
        ("max_sequence_length", json!(513)),
    ] {
        let reply = post(
            server,
            OR,
            &json!({"model": FLUX, "prompt": "a cat", "size": "64x64",
                "provider": {"options": {"local": {option: value}}}}),
        )
        .await
        .expect(400);
        assert_or_field_error(&reply, &format!("provider.options.local.{option}"), option);
    }
    // The listings say what FLUX takes: a T5 length, no negative prompt, no scheduler choice.
    let list = get(server, Some(KEY), "/api/v1/images/models")
        .await
        .expect(200)
        .json();
    let params = |id: &str| {
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .unwrap()["supported_parameters"]
            .clone()
    };
    let flux = params(FLUX);
    assert!(flux.get("max_sequence_length").is_some(), "{flux}");
    assert!(
        flux.get("negative_prompt").is_none() && flux.get("scheduler").is_none(),
        "{flux}"
    );
    let sd = params(TINY);
    assert!(sd.get("negative_prompt").is_some() && sd.get("max_sequence_length").is_none());
    let endpoints = get(
        server,
        Some(KEY),
        &format!("/api/v1/images/models/{FLUX}/endpoints"),
    )
    .await
    .expect(200)
    .json();
    let passthrough = &endpoints["endpoints"][0]["allowed_passthrough_parameters"];
    assert!(passthrough
        .as_array()
        .unwrap()
        .contains(&json!("max_sequence_length")));
    assert!(!passthrough
        .as_array()
        .unwrap()
        .contains(&json!("negative_prompt")));

    // T5's length is a FLUX option only.
    let reply = post(
        server,
        OR,
        &or_body(json!({"provider": {"options": {"local": {"max_sequence_length": 64}}}})),
    )
    .await
    .expect(400);
    assert_or_field_error(&reply, "provider.options.local.max_sequence_length", "FLUX");
}

// ------------------------------------------------------------------------------------------------
// Playground
// ------------------------------------------------------------------------------------------------

/// The values of a page's `src="..."` and `href="..."` attributes.
fn link_targets(html: &str) -> Vec<String> {
    let mut targets = Vec::new();
    for attribute in [" src=", " href="] {
        for (at, _) in html.match_indices(attribute) {
            let rest = &html[at + attribute.len()..];
            let quote = rest.chars().next().expect("attribute value");
            assert!(
                quote == '"' || quote == '\'',
                "unquoted {attribute} in the page: {}",
                &rest[..rest.len().min(40)]
            );
            let value = &rest[1..];
            let end = value.find(quote).expect("closing quote");
            targets.push(value[..end].to_string());
        }
    }
    targets
}

#[tokio::test]
async fn playground_page_is_self_contained_and_uses_the_public_api() {
    let server = main_server().await;
    // The page is public (it holds no secret); its API calls carry the key the user enters.
    let page = get(server, None, "/").await.expect(200);
    assert_eq!(page.header("content-type"), "text/html; charset=utf-8");
    let csp = page.header("content-security-policy");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
    ] {
        assert!(csp.contains(directive), "{directive} missing from {csp}");
    }
    assert_eq!(page.header("x-content-type-options"), "nosniff");
    let html = page.text();
    assert!(html.contains("<title>imago playground</title>"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "the page names an external URL"
    );

    // Every linked resource is served by us, with its type; none is external.
    let targets = link_targets(&html);
    assert!(
        targets.len() >= 2,
        "script and stylesheet links: {targets:?}"
    );
    let mut assets = Vec::new();
    for target in &targets {
        assert!(
            !target.starts_with("http:")
                && !target.starts_with("https:")
                && !target.starts_with("//"),
            "external resource {target}"
        );
        if target.starts_with('/') {
            let asset = get(server, None, target).await.expect(200);
            assets.push((target.clone(), asset));
        } else {
            assert!(target.starts_with("data:"), "unexpected link {target}");
        }
    }
    let asset = |suffix: &str| {
        &assets
            .iter()
            .find(|(path, _)| path.ends_with(suffix))
            .unwrap_or_else(|| panic!("no {suffix} linked from the page: {targets:?}"))
            .1
    };
    let script = asset(".js");
    assert_eq!(
        script.header("content-type"),
        "text/javascript; charset=utf-8"
    );
    assert_eq!(script.header("content-security-policy"), csp);
    let style = asset(".css");
    assert_eq!(style.header("content-type"), "text/css; charset=utf-8");
    for (path, asset) in &assets {
        let text = asset.text();
        assert!(
            !text.contains("http://") && !text.contains("https://") && !text.contains("@import"),
            "{path} reaches outside the server"
        );
    }

    // The script calls only documented API routes.
    let document = get(server, None, "/openapi.json").await.expect(200).json();
    let js = script.text();
    let called: Vec<&str> = js
        .match_indices("\"/api/")
        .map(|(at, _)| {
            let path = &js[at + 1..];
            &path[..path.find('"').expect("closing quote")]
        })
        .collect();
    assert!(
        called.contains(&OR) && called.contains(&"/api/v1/images/models"),
        "{called:?}"
    );
    for path in called {
        assert!(
            document["paths"].get(path).is_some(),
            "the playground calls {path}, which is not in the public API"
        );
    }
}

#[tokio::test]
async fn no_playground_serves_no_page() {
    let main = main_server().await;
    let off = serve_with_playground(
        main.engine.clone(),
        main.caps.clone(),
        vec![],
        Limits::default(),
        false,
    )
    .await;
    for path in ["/", "/playground/app.js", "/playground/style.css"] {
        let reply = get(&off, None, path).await;
        assert_eq!(reply.status, 404, "{path}: {}", reply.text());
        assert_or_envelope(&reply.json(), 404);
    }
    get(&off, None, "/api/v1/images/models").await.expect(200);
}

#[test]
fn no_playground_flag_reaches_the_server_config() {
    use clap::Parser;
    let config = |args: &[&str]| {
        let cli = imago::cli::Cli::try_parse_from(args).expect("valid command line");
        let imago::cli::Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        imago::commands::serve::server_config(*args).expect("config")
    };
    let base = ["imago", "serve", "--model", TINY];
    assert!(config(&base).playground, "on by default");
    assert!(!config(&[&base[..], &["--no-playground"]].concat()).playground);
}
