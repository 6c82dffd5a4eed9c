//! Server-sent events as DESIGN.md frames them: `event: <type>` + `data: <json>` per event, a
//! keep-alive comment every 15 s, and `data: [DONE]` at the end.
use std::convert::Infallible;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::Serialize;

pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// One event named after its `type`.
pub fn event<T: Serialize>(kind: &str, payload: &T) -> Event {
    match serde_json::to_string(payload) {
        Ok(json) => Event::default().event(kind).data(json),
        Err(e) => Event::default().event("error").data(format!(
            r#"{{"type":"error","error":{{"code":500,"message":"cannot serialise event: {e}"}}}}"#
        )),
    }
}

/// The terminating `data: [DONE]`.
pub fn done() -> Event {
    Event::default().data("[DONE]")
}

/// Wraps an event stream as the HTTP response (with `X-Accel-Buffering: no` so proxies pass
/// events through as they come) plus extra headers.
pub fn response<S>(stream: S, headers: axum::http::HeaderMap) -> Response
where
    S: Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response();
    let h = response.headers_mut();
    h.insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    h.insert(
        axum::http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    h.extend(headers);
    response
}
