//! Requests and answers between the two API shapes, for an upstream whose API is not the one the
//! client used. Same-API requests go through as sent, except `provider`: the router's routing
//! preferences name its own slugs and stay here, and `provider.options.<upstream slug>` becomes
//! `provider.options.<options_slug>` upstream (`local` by default: an imago upstream's native knobs).
//! An openai-kind upstream gets `provider.options.<slug>`'s keys as top-level fields of its request
//! (where the request has no such field). A field one API cannot carry to the other is a 400 naming it.
use serde_json::{json, Map, Value};

use super::upstream::Upstream;
use crate::api::wire::openai::Usage;
use crate::config::UpstreamKind;
use crate::error::{ApiError, Surface};

/// Fields that pass unchanged between the APIs.
const COMMON_FIELDS: [&str; 8] = [
    "model",
    "prompt",
    "n",
    "output_format",
    "output_compression",
    "background",
    "stream",
    "user",
];

/// The request body `upstream` gets for a client's `body` on `surface`.
pub fn request(surface: Surface, upstream: &Upstream, body: &Value) -> Result<Value, ApiError> {
    let client = body.as_object().cloned().unwrap_or_default();
    let options = client
        .get("provider")
        .and_then(|p| {
            p.pointer(&format!(
                "/options/{}",
                json_pointer_escape(upstream.slug())
            ))
        })
        .and_then(Value::as_object)
        .cloned();
    match (surface, upstream.kind()) {
        (Surface::OpenAi, UpstreamKind::OpenAi) => Ok(Value::Object(client)),
        (Surface::OpenAi, UpstreamKind::OpenRouter) => openai_to_openrouter(client, upstream),
        (_, UpstreamKind::OpenRouter) => {
            let mut out = client;
            out.remove("provider");
            if let Some(options) = options {
                out.insert(
                    "provider".into(),
                    json!({"options": {upstream.config().options_slug.clone(): options}}),
                );
            }
            Ok(Value::Object(out))
        }
        (_, UpstreamKind::OpenAi) => openrouter_to_openai(client, options, upstream),
    }
}

fn json_pointer_escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn cannot_carry(upstream: &Upstream, field: &str, api: &str) -> ApiError {
    ApiError::field(
        field,
        format!(
            "the provider {} speaks the {api} API, which has no such field; use another provider (provider.order / ignore)",
            upstream.slug()
        ),
    )
}

fn openrouter_to_openai(
    client: Map<String, Value>,
    options: Option<Map<String, Value>>,
    upstream: &Upstream,
) -> Result<Value, ApiError> {
    let mut out = Map::new();
    for (key, value) in client {
        match key.as_str() {
            k if COMMON_FIELDS.contains(&k) => {
                out.insert(key, value);
            }
            "quality" => {
                let quality = match value.as_str() {
                    Some("xhigh" | "max") => "high",
                    Some(other) => other,
                    None => "auto",
                };
                out.insert(key, json!(quality));
            }
            // "WxH" is OpenAI's size too; a tier is not.
            "size" if value.as_str().is_some_and(|s| s.contains(['x', 'X'])) => {
                out.insert(key, value);
            }
            // Routing preferences are the router's; metadata stays in the router's log.
            "provider" | "session_id" | "trace" => {}
            _ => return Err(cannot_carry(upstream, &key, "OpenAI Images")),
        }
    }
    for (key, value) in options.unwrap_or_default() {
        out.entry(key).or_insert(value);
    }
    Ok(Value::Object(out))
}

fn openai_to_openrouter(
    client: Map<String, Value>,
    upstream: &Upstream,
) -> Result<Value, ApiError> {
    let mut out = Map::new();
    let mut native = Map::new();
    for (key, value) in client {
        match key.as_str() {
            k if COMMON_FIELDS.contains(&k) => {
                out.insert(key, value);
            }
            "size" if value.as_str() != Some("auto") => {
                out.insert(key, value);
            }
            "quality" => {
                let quality = match value.as_str() {
                    Some("standard") => "medium",
                    Some("hd") => "high",
                    Some(other) => other,
                    None => "auto",
                };
                out.insert(key, json!(quality));
            }
            "partial_images" => {
                native.insert(key, value);
            }
            // Answers are always base64; the rest has no OpenRouter counterpart that changes the image.
            "size" | "response_format" | "moderation" | "safety_identifier" => {}
            _ => return Err(cannot_carry(upstream, &key, "OpenRouter Images")),
        }
    }
    if !native.is_empty() {
        out.insert(
            "provider".into(),
            json!({"options": {upstream.config().options_slug.clone(): native}}),
        );
    }
    Ok(Value::Object(out))
}

fn media_type(output_format: Option<&Value>) -> &'static str {
    match output_format.and_then(Value::as_str) {
        Some("jpeg") => "image/jpeg",
        Some("webp") => "image/webp",
        _ => "image/png",
    }
}

fn openrouter_usage(usage: &Value) -> Value {
    let get = |k: &str| usage.get(k).and_then(Value::as_u64).unwrap_or(0);
    let (prompt, completion) = (get("input_tokens"), get("output_tokens"));
    json!({"prompt_tokens": prompt, "completion_tokens": completion,
           "total_tokens": prompt + completion, "cost": 0})
}

fn openai_usage(usage: &Value) -> Value {
    let get = |k: &str| usage.get(k).and_then(Value::as_u64).unwrap_or(0);
    serde_json::to_value(Usage::new(
        get("prompt_tokens"),
        0,
        get("completion_tokens"),
    ))
    .unwrap_or(Value::Null)
}

/// A JSON answer of the other API, in `surface`'s shape.
pub fn response(surface: Surface, mut body: Value) -> Value {
    let format = body.get("output_format").cloned();
    let created = body.get("created").cloned().unwrap_or(json!(0));
    let usage = body.get("usage").cloned().unwrap_or(Value::Null);
    let data = body
        .get_mut("data")
        .and_then(Value::as_array_mut)
        .map(std::mem::take)
        .unwrap_or_default();
    match surface {
        Surface::OpenAi => json!({
            "created": created,
            "data": data.into_iter().map(|mut item| {
                if let Some(o) = item.as_object_mut() { o.remove("media_type"); }
                item
            }).collect::<Vec<_>>(),
            "usage": openai_usage(&usage),
        }),
        Surface::OpenRouter | Surface::Imago => json!({
            "created": created,
            "data": data.into_iter().map(|mut item| {
                if let Some(o) = item.as_object_mut() {
                    o.entry("media_type").or_insert(json!(media_type(format.as_ref())));
                }
                item
            }).collect::<Vec<_>>(),
            "usage": openrouter_usage(&usage),
        }),
    }
}

/// A stream event of the other API, in `surface`'s shape: both name their events
/// `image_generation.*`; the usage and a few fields differ.
pub fn event(surface: Surface, mut event: Value) -> Value {
    let format = event.get("output_format").cloned();
    let Some(object) = event.as_object_mut() else {
        return event;
    };
    let completed =
        object.get("type").and_then(Value::as_str) == Some("image_generation.completed");
    match surface {
        Surface::OpenAi => {
            if let Some(usage) = object.get("usage").cloned() {
                object.insert("usage".into(), openai_usage(&usage));
            }
            object.remove("media_type");
        }
        Surface::OpenRouter | Surface::Imago => {
            if let Some(usage) = object.get("usage").cloned() {
                object.insert("usage".into(), openrouter_usage(&usage));
            }
            if completed {
                let created = object.get("created_at").cloned().unwrap_or(json!(0));
                object.entry("created").or_insert(created);
                object
                    .entry("media_type")
                    .or_insert(json!(media_type(format.as_ref())));
            }
        }
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UpstreamConfig;

    fn upstream(kind: UpstreamKind) -> Upstream {
        Upstream::new(UpstreamConfig {
            slug: "lab".into(),
            kind,
            base_url: "http://127.0.0.1:9/api/v1".into(),
            api_key: None,
            models: vec!["m".into()],
            options_slug: "local".into(),
            timeout: std::time::Duration::from_secs(5),
        })
        .unwrap()
    }

    #[test]
    fn openrouter_requests_keep_their_fields_and_rekey_the_upstreams_options() {
        let body = json!({"model": "m", "prompt": "p", "seed": 3,
            "provider": {"order": ["lab"], "options": {"lab": {"steps": 2}, "local": {"steps": 9}}}});
        let out = request(
            Surface::OpenRouter,
            &upstream(UpstreamKind::OpenRouter),
            &body,
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"model": "m", "prompt": "p", "seed": 3,
                   "provider": {"options": {"local": {"steps": 2}}}})
        );
        let out = request(
            Surface::OpenRouter,
            &upstream(UpstreamKind::OpenRouter),
            &json!({"model": "m", "prompt": "p", "provider": {"only": ["lab"]}}),
        )
        .unwrap();
        assert_eq!(out, json!({"model": "m", "prompt": "p"}));
    }

    #[test]
    fn cross_api_requests_map_or_name_the_field() {
        let openai = upstream(UpstreamKind::OpenAi);
        let out = request(
            Surface::OpenRouter,
            &openai,
            &json!({"model": "m", "prompt": "p", "size": "512x512", "quality": "max",
                    "provider": {"options": {"lab": {"moderation": "low"}}}}),
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"model": "m", "prompt": "p", "size": "512x512", "quality": "high", "moderation": "low"})
        );
        let err = request(
            Surface::OpenRouter,
            &openai,
            &json!({"model": "m", "prompt": "p", "seed": 1}),
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with("seed: the provider lab"),
            "{err}"
        );
        let out = request(
            Surface::OpenAi,
            &upstream(UpstreamKind::OpenRouter),
            &json!({"model": "m", "prompt": "p", "size": "auto", "partial_images": 1,
                    "response_format": "b64_json"}),
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"model": "m", "prompt": "p", "provider": {"options": {"local": {"partial_images": 1}}}})
        );
    }

    #[test]
    fn answers_and_events_change_shape() {
        let openai_answer = json!({"created": 5, "output_format": "webp",
            "data": [{"b64_json": "AA"}],
            "usage": {"input_tokens": 3, "output_tokens": 7, "total_tokens": 10}});
        assert_eq!(
            response(Surface::OpenRouter, openai_answer),
            json!({"created": 5, "data": [{"b64_json": "AA", "media_type": "image/webp"}],
                   "usage": {"prompt_tokens": 3, "completion_tokens": 7, "total_tokens": 10, "cost": 0}})
        );
        let openrouter_event = json!({"type": "image_generation.completed", "b64_json": "AA",
            "created": 5, "created_at": 5, "media_type": "image/png", "image_index": 0,
            "usage": {"prompt_tokens": 3, "completion_tokens": 7, "total_tokens": 10}});
        let out = event(Surface::OpenAi, openrouter_event);
        assert_eq!(out["usage"]["input_tokens"], 3);
        assert_eq!(out["usage"]["output_tokens"], 7);
        assert!(out.get("media_type").is_none());
    }
}
