//! The HTTP layer: routes, shared state, body parsing. It reaches the engine only through the
//! providers and never imports candle.
pub mod auth;
pub mod connections;
pub mod edits;
pub mod generate;
pub mod health;
pub mod images;
pub mod metrics;
pub mod models;
pub mod openai;
pub mod openapi;
pub mod playground;
pub mod request_body;
pub mod request_id;
pub mod shutdown;
pub mod sse;
pub mod wire;

use std::ops::Deref;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use tower_http::trace::TraceLayer;

use crate::config::Limits;
use crate::engine::Engine;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::providers::Registry;
use auth::Auth;

pub struct AppInner {
    pub registry: Registry,
    pub metrics: Arc<Metrics>,
    /// `/metrics` without an API key.
    pub public_metrics: bool,
    pub auth: Auth,
    pub limits: Limits,
    /// The local engine (readiness and queue depth).
    pub engine: Engine,
    /// Serve the browser playground at `/` (off with `--no-playground`).
    pub playground: bool,
    /// The shutdown phase: open event streams end when it says so.
    pub shutdown: shutdown::Shutdown,
}

/// Shared, cheaply cloned application state.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

impl AppState {
    pub fn new(inner: AppInner) -> Self {
        Self(Arc::new(inner))
    }
}

impl Deref for AppState {
    type Target = AppInner;

    fn deref(&self) -> &AppInner {
        &self.0
    }
}

/// Every route of the server.
pub fn build_app(state: AppState) -> Router {
    let body_limit = state.limits.max_body_bytes;
    let mut router = Router::new();
    if state.playground {
        router = router.merge(playground::routes());
    }
    router
        .route("/api/v1/images", post(images::create))
        .route("/api/v1/images/models", get(models::openrouter_list))
        .route(
            "/api/v1/images/models/{author}/{slug}/endpoints",
            get(models::openrouter_endpoints),
        )
        .route(
            "/api/v1/images/models/{slug}/endpoints",
            get(models::openrouter_endpoints_unscoped),
        )
        .route("/v1/images/generations", post(openai::create))
        .route("/v1/images/edits", post(edits::create))
        .route("/v1/models", get(models::openai_list))
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/openapi.json", get(openapi::json))
        .route("/metrics", get(metrics::render))
        .fallback(no_route)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            request_body::buffer,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(TraceLayer::new_for_http())
        .layer(axum::middleware::from_fn(request_id::tag))
        .with_state(state)
}

async fn no_route(uri: Uri) -> Response {
    let surface = request_body::surface_of(uri.path());
    ApiError::NoRoute(uri.path().to_string())
        .on(surface)
        .into_response()
}

/// Parses a JSON body: 413 past the body limit, 400 naming the field serde could not accept.
pub fn parse_json<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::BodyTooLarge { limit }
        } else {
            ApiError::InvalidBody(rejection.body_text())
        }
    })?;
    // The path of the value serde choked on names the field (an unknown enum value, a wrong type).
    let mut deserializer = serde_json::Deserializer::from_slice(&bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(ApiError::from_json)?;
    deserializer
        .end()
        .map_err(|e| ApiError::InvalidBody(e.to_string()))?;
    Ok(value)
}
