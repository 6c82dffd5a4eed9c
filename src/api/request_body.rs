//! Reads every request body before a handler runs, under two bounds: `--max-body-bytes` (a
//! declared `Content-Length` over it is refused before a byte of the body is read; a chunked
//! body is refused as soon as it passes the limit) and `--idle-timeout` between body chunks
//! (a client trickling its upload cannot hold a connection and a buffer). Errors are answered in
//! the envelope of the route's API.
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::CONTENT_LENGTH;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use super::AppState;
use crate::error::{ApiError, Surface};

/// The API whose envelope answers a request to `path`.
pub fn surface_of(path: &str) -> Surface {
    if path.starts_with("/v1/") {
        Surface::OpenAi
    } else {
        Surface::OpenRouter
    }
}

pub async fn buffer(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let surface = surface_of(request.uri().path());
    let limit = state.limits.max_body_bytes;
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return ApiError::BodyTooLarge { limit }.on(surface).into_response();
    }
    let (parts, body) = request.into_parts();
    match read_capped(body, limit, state.limits.idle_timeout).await {
        Ok(bytes) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Err(err) => err.on(surface).into_response(),
    }
}

/// The whole body, at most `limit` bytes, with no gap between chunks longer than `idle`.
async fn read_capped(body: Body, limit: usize, idle: Duration) -> Result<Bytes, ApiError> {
    let mut stream = body.into_data_stream();
    let mut first: Option<Bytes> = None;
    let mut rest: Vec<u8> = Vec::new();
    loop {
        let chunk = match tokio::time::timeout(idle, stream.next()).await {
            Err(_) => return Err(ApiError::BodyStalled { timeout: idle }),
            Ok(None) => break,
            Ok(Some(Err(err))) => {
                return Err(ApiError::InvalidBody(format!(
                    "cannot read the request body: {err}"
                )))
            }
            Ok(Some(Ok(chunk))) => chunk,
        };
        let so_far = first.as_ref().map_or(0, Bytes::len) + rest.len();
        if so_far + chunk.len() > limit {
            return Err(ApiError::BodyTooLarge { limit });
        }
        // A body of one chunk (the usual case) is passed on without a copy.
        match first.take() {
            None if rest.is_empty() => first = Some(chunk),
            None => rest.extend_from_slice(&chunk),
            Some(head) => {
                rest.extend_from_slice(&head);
                rest.extend_from_slice(&chunk);
            }
        }
    }
    Ok(first.unwrap_or_else(|| Bytes::from(rest)))
}
