//! Liveness and readiness.
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::AppState;
use crate::error::{ApiError, Surface};

#[derive(Serialize, utoipa::ToSchema)]
pub struct HealthStatus {
    /// `ok` or `ready`.
    pub status: &'static str,
    /// Jobs waiting for the engine.
    pub queue_depth: usize,
    /// How many jobs may wait before requests get 429.
    pub max_queue: usize,
    /// Ids of the served models.
    pub models: Vec<String>,
}

fn status(state: &AppState, status: &'static str) -> HealthStatus {
    HealthStatus {
        status,
        queue_depth: state.engine.queue_depth(),
        max_queue: state.engine.max_queue(),
        models: state
            .registry
            .models()
            .iter()
            .map(|m| m.caps.id.clone())
            .collect(),
    }
}

/// The process is up.
#[utoipa::path(get, path = "/health", tag = "health", responses((status = 200, body = HealthStatus)))]
pub async fn health(State(state): State<AppState>) -> Json<HealthStatus> {
    Json(status(&state, "ok"))
}

/// Models are loaded and the queue has room (503 otherwise).
#[utoipa::path(get, path = "/ready", tag = "health", responses((status = 200, body = HealthStatus), (status = 503)))]
pub async fn ready(State(state): State<AppState>) -> Response {
    if state.engine.is_saturated() {
        return ApiError::NotReady(format!(
            "the generation queue is full ({} waiting)",
            state.engine.queue_depth()
        ))
        .on(Surface::Imago)
        .into_response();
    }
    Json(status(&state, "ready")).into_response()
}
