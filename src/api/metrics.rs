//! `GET /metrics` and the middleware that counts every answered request.
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::error::Surface;

/// Prometheus text format; behind the API key when keys are configured, unless `--public-metrics`.
pub async fn render(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !state.public_metrics {
        if let Err(err) = state.auth.authenticate(&headers) {
            return err.on(Surface::Imago).into_response();
        }
    }
    let body = state
        .metrics
        .render(state.engine.queue_depth(), state.engine.in_flight());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// Counts the request under its route template (unknown paths under one label).
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let response = next.run(request).await;
    state
        .metrics
        .record_request(&route, response.status().as_u16());
    response
}
