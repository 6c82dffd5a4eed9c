//! Sends a request along its providers in order and relays the first answer: JSON as it came,
//! streams event by event. Connect errors, timeouts, 5xx and 429 (and a full local queue) move on
//! to the next provider; when none is left, a 502 lists every provider's reason. Once a stream has
//! started, a failure ends it with an `error` event: no other provider can take over mid-stream.
use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use serde_json::Value;

use super::registry::Hop;
use super::sse_parse::{SseEvent, SseParser};
use super::translate;
use super::upstream::{Upstream, UpstreamError};
use crate::api::sse;
use crate::api::wire::{openai, openrouter};
use crate::config::UpstreamKind;
use crate::error::{ApiError, Surface};

/// The response header naming the provider that answered.
pub const PROVIDER_HEADER: &str = "x-imago-provider";

/// Upstream headers a relayed answer keeps (the rest describe the upstream's connection).
const RELAYED_HEADERS: [&str; 8] = [
    "x-imago-seed",
    "x-imago-size",
    "x-imago-steps",
    "x-imago-step-ms",
    "x-imago-prompt-truncated",
    "x-queue-time-ms",
    "x-inference-time-ms",
    "retry-after",
];

/// Tries `hops` in order for a request that came as `body` on `surface`; `local` runs the local
/// engine's path. The answer names its provider in `x-imago-provider`.
pub async fn dispatch<F, Fut>(
    hops: &[Hop],
    surface: Surface,
    body: &Value,
    mut local: F,
) -> Result<Response, ApiError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Response, ApiError>>,
{
    let mut failures: Vec<String> = Vec::new();
    for (i, hop) in hops.iter().enumerate() {
        let last = i + 1 == hops.len();
        let result = match hop {
            Hop::Local => match local().await {
                // A full or stopped local engine lets the next provider try.
                Err(err @ (ApiError::QueueFull { .. } | ApiError::NotReady(_))) if !last => {
                    tracing::warn!(error = %err, "local provider unavailable; trying the next provider");
                    failures.push(format!("provider local: {err}"));
                    continue;
                }
                other => other,
            },
            Hop::Upstream(upstream) => match forward(upstream, surface, body).await {
                Ok(response) => Ok(response),
                Err(Failure::Api(err)) => Err(err),
                Err(Failure::Upstream(err)) => {
                    tracing::warn!(error = %err, "upstream provider failed");
                    if err.is_client_error() && surface_matches(surface, upstream) {
                        return Ok(relay_client_error(&err));
                    }
                    if err.is_client_error() {
                        return Err(ApiError::InvalidBody(err.to_string()));
                    }
                    let retry = err.is_retryable();
                    failures.push(err.to_string());
                    if retry && !last {
                        continue;
                    }
                    Err(exhausted(&failures))
                }
            },
        };
        return result.map(|mut response| {
            if let Ok(slug) = HeaderValue::from_str(hop.slug()) {
                response
                    .headers_mut()
                    .insert(HeaderName::from_static(PROVIDER_HEADER), slug);
            }
            response
        });
    }
    Err(exhausted(&failures))
}

fn exhausted(failures: &[String]) -> ApiError {
    ApiError::BadGateway(format!(
        "no provider completed the request: {}",
        failures.join("; ")
    ))
}

enum Failure {
    /// Our own refusal (a request this upstream's API cannot carry).
    Api(ApiError),
    Upstream(UpstreamError),
}

fn surface_matches(surface: Surface, upstream: &Upstream) -> bool {
    matches!(
        (surface, upstream.kind()),
        (Surface::OpenRouter, UpstreamKind::OpenRouter) | (Surface::OpenAi, UpstreamKind::OpenAi)
    )
}

/// The upstream's 400/413/422 as it sent it (its API shape is the client's).
fn relay_client_error(err: &UpstreamError) -> Response {
    let (status, body) = match err {
        UpstreamError::Status { status, body, .. } => (
            StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST),
            body.clone(),
        ),
        other => (StatusCode::BAD_REQUEST, other.to_string().into()),
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(body),
    )
        .into_response()
}

/// One upstream attempt: the request in its API's shape, the answer in the client's.
async fn forward(
    upstream: &Arc<Upstream>,
    surface: Surface,
    body: &Value,
) -> Result<Response, Failure> {
    let request = translate::request(surface, upstream, body).map_err(Failure::Api)?;
    let stream = body.get("stream").and_then(Value::as_bool) == Some(true);
    tracing::info!(
        provider = upstream.slug(),
        stream,
        "forwarding to an upstream provider"
    );
    let response = upstream
        .generate(&request)
        .await
        .map_err(Failure::Upstream)?;
    let headers = relayed_headers(response.headers());
    let is_sse = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if stream {
        if !is_sse {
            return Err(Failure::Upstream(upstream.protocol(
                "a stream was asked for and the answer is not text/event-stream".into(),
            )));
        }
        let events = relay_events(upstream.clone(), surface, response);
        return Ok(sse::response(events, headers));
    }
    let bytes = response
        .bytes()
        .await
        .map_err(|e| Failure::Upstream(upstream.body_error(e)))?;
    let json: Value = serde_json::from_slice(&bytes).map_err(|e| {
        Failure::Upstream(upstream.protocol(format!("the answer is not JSON: {e}")))
    })?;
    let body = if surface_matches(surface, upstream) {
        // The upstream's bytes as they came: the same images, the same fields.
        Body::from(bytes)
    } else {
        Body::from(translate::response(surface, json).to_string())
    };
    let mut response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response();
    response.headers_mut().extend(headers);
    Ok(response)
}

fn relayed_headers(upstream: &reqwest::header::HeaderMap) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for name in RELAYED_HEADERS {
        if let Some(value) = upstream
            .get(name)
            .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok())
        {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    headers
}

/// The upstream's SSE events, one out for each one in (translated when the APIs differ); a
/// failure or an end without `[DONE]` becomes an `error` event, and `[DONE]` always ends it.
fn relay_events(
    upstream: Arc<Upstream>,
    surface: Surface,
    response: reqwest::Response,
) -> impl Stream<Item = Result<Event, Infallible>> + Send {
    let translate_events = !surface_matches(surface, &upstream);
    let state = RelayState {
        bytes: Box::pin(response.bytes_stream()),
        parser: SseParser::default(),
        queue: VecDeque::new(),
        finished: false,
    };
    futures_util::stream::unfold(state, move |mut state| {
        let upstream = upstream.clone();
        async move {
            loop {
                if let Some(event) = state.queue.pop_front() {
                    return Some((Ok(event), state));
                }
                if state.finished {
                    return None;
                }
                match state.bytes.next().await {
                    Some(Ok(chunk)) => {
                        for event in state.parser.push(&chunk) {
                            if state.finished {
                                break;
                            }
                            state.take(event, surface, translate_events);
                        }
                    }
                    Some(Err(err)) => state.fail(surface, &upstream.body_error(err).to_string()),
                    None => state.fail(
                        surface,
                        &format!(
                            "provider {}: the stream ended before [DONE]",
                            upstream.slug()
                        ),
                    ),
                }
            }
        }
    })
}

struct RelayState {
    bytes: std::pin::Pin<Box<dyn Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    parser: SseParser,
    queue: VecDeque<Event>,
    finished: bool,
}

impl RelayState {
    fn take(&mut self, event: SseEvent, surface: Surface, translate_events: bool) {
        if event.data.trim() == "[DONE]" {
            self.queue.push_back(sse::done());
            self.finished = true;
            return;
        }
        let mut out = Event::default();
        let data = if translate_events {
            match serde_json::from_str::<Value>(&event.data) {
                Ok(value) => translate::event(surface, value).to_string(),
                Err(_) => event.data,
            }
        } else {
            event.data
        };
        if let Some(name) = &event.name {
            out = out.event(name);
        }
        self.queue.push_back(out.data(data));
    }

    fn fail(&mut self, surface: Surface, message: &str) {
        tracing::warn!(message, "relayed stream failed");
        self.queue.push_back(error_event(surface, message));
        self.queue.push_back(sse::done());
        self.finished = true;
    }
}

/// An `error` event in the client's API shape.
fn error_event(surface: Surface, message: &str) -> Event {
    match surface {
        Surface::OpenAi => {
            let event = openai::ImageGenStreamEvent::Error(openai::ErrorResponse::new(
                message,
                "server_error",
                None,
                Some("upstream_failed".into()),
            ));
            sse::event(event.event_name(), &event)
        }
        Surface::OpenRouter | Surface::Imago => {
            let event = openrouter::ImageStreamEvent::Error(
                openrouter::ImageGenStreamErrorEvent::new(message, "502"),
            );
            sse::event(event.event_name(), &event)
        }
    }
}
