//! `X-Request-ID`: every response carries one (the client's when it is sane, else a fresh
//! UUID-like id), and every log line of the request, the streamed body's included, is inside a
//! `request` span whose `request_id` field is that id.
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};
use tracing::Instrument;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Longest client-supplied id that is echoed.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// The request's id, also available to handlers as an extension.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(pub String);

pub async fn tag(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_sane(v))
        .map(str::to_string)
        .unwrap_or_else(new_request_id);
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %request.method(),
        path = %request.uri().path(),
    );
    request.extensions_mut().insert(RequestId(id.clone()));
    let response = next.run(request).instrument(span.clone()).await;
    let (mut parts, body) = response.into_parts();
    if let Ok(value) = HeaderValue::from_str(&id) {
        parts.headers.insert(X_REQUEST_ID, value);
    }
    Response::from_parts(parts, Body::new(InSpan { inner: body, span }))
}

/// Printable ASCII without spaces or quotes, 1 to 128 characters: safe to echo and to log.
pub fn is_sane(id: &str) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(&b))
}

/// A random version-4 UUID in its usual text form.
pub fn new_request_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let word = |salt: u64| {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(salt);
        hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        hasher.write_u128(nanos);
        hasher.finish()
    };
    let high = word(1);
    let low = word(2);
    let bits = (u128::from(high) << 64 | u128::from(low)) & !(0xf << 76) & !(0b11 << 62)
        | (0x4 << 76)
        | (0b10 << 62);
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// A response body polled inside the request's span (a stream's log lines keep the id).
struct InSpan {
    inner: Body,
    span: tracing::Span,
}

impl http_body::Body for InSpan {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let _entered = this.span.enter();
        Pin::new(&mut this.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_distinct_v4_uuids() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        for id in [&a, &b] {
            assert_eq!(id.len(), 36, "{id}");
            let groups: Vec<&str> = id.split('-').collect();
            assert_eq!(
                groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12]
            );
            assert!(groups[2].starts_with('4'), "{id}");
            assert!("89ab".contains(&groups[3][..1]), "{id}");
            assert!(is_sane(id));
        }
    }

    #[test]
    fn only_sane_ids_are_echoed() {
        assert!(is_sane("req-123_abc.DEF:9"));
        assert!(!is_sane(""));
        assert!(!is_sane("has space"));
        assert!(!is_sane("quote\"d"));
        assert!(!is_sane("new\nline"));
        assert!(!is_sane(&"a".repeat(MAX_REQUEST_ID_LEN + 1)));
        assert!(is_sane(&"a".repeat(MAX_REQUEST_ID_LEN)));
    }
}
