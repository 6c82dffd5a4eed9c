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
///
/// Chunks are kept as they arrive and joined once at the end into a buffer of the exact size:
/// a growing buffer would copy on every doubling (the engine's allocator setting keeps such
/// blocks in the heap, where realloc copies instead of remapping), so a body near the limit
/// would briefly need twice its size.
async fn read_capped(body: Body, limit: usize, idle: Duration) -> Result<Bytes, ApiError> {
    let mut stream = body.into_data_stream();
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total = 0usize;
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
        total += chunk.len();
        if total > limit {
            return Err(ApiError::BodyTooLarge { limit });
        }
        if !chunk.is_empty() {
            chunks.push(chunk);
        }
    }
    Ok(join(chunks, total))
}

/// One buffer holding `chunks` in order; a single chunk (the usual case) is passed on as is.
fn join(mut chunks: Vec<Bytes>, total: usize) -> Bytes {
    if chunks.len() <= 1 {
        return chunks.pop().unwrap_or_default();
    }
    let mut joined = Vec::with_capacity(total);
    for chunk in &chunks {
        joined.extend_from_slice(chunk);
    }
    Bytes::from(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_chunks_in_order_into_an_exact_buffer() {
        let chunks = vec![Bytes::from_static(b"ab"), Bytes::from_static(b"cde")];
        assert_eq!(join(chunks, 5), Bytes::from_static(b"abcde"));
        assert_eq!(
            join(vec![Bytes::from_static(b"x")], 1),
            Bytes::from_static(b"x")
        );
        assert!(join(Vec::new(), 0).is_empty());
    }

    #[tokio::test]
    async fn refuses_a_body_one_byte_over_the_limit() {
        let body = |n: usize| Body::from(vec![b'a'; n]);
        let idle = Duration::from_secs(5);
        assert_eq!(read_capped(body(8), 8, idle).await.unwrap().len(), 8);
        let err = read_capped(body(9), 8, idle).await.unwrap_err();
        assert!(
            matches!(err, ApiError::BodyTooLarge { limit: 8 }),
            "{err:?}"
        );
    }
}
