//! The one place that maps errors to HTTP statuses and bodies: the OpenRouter envelope on
//! `/api/v1/*`, the OpenAI envelope on `/v1/*`. Internal errors are logged here and answered with a
//! generic message.
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::domain::request::FieldError;

/// Which API a route belongs to: it decides the error envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Surface {
    OpenRouter,
    OpenAi,
    /// Routes of our own (`/health`, `/ready`, `/openapi.json`): the OpenRouter envelope.
    Imago,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A request field outside its bounds; `field` is its JSON path.
    #[error("{field}: {message}")]
    InvalidField { field: String, message: String },
    /// The body is not JSON of the expected shape (serde names the field when it can).
    #[error("invalid request body: {0}")]
    InvalidBody(String),
    #[error("missing or invalid API key (send `Authorization: Bearer <key>`)")]
    Unauthorized,
    #[error("this API key may not use model {0}")]
    ModelNotAllowed(String),
    #[error("model {model} is not served here; available: {available}")]
    UnknownModel { model: String, available: String },
    #[error("no route {0}")]
    NoRoute(String),
    #[error("request body too large: the limit is {limit} bytes (--max-body-bytes)")]
    BodyTooLarge { limit: usize },
    /// The client stopped sending its body (a slow upload must not pin a connection).
    #[error("the request body stalled: no bytes for {:.1} s (--idle-timeout)", .timeout.as_secs_f64())]
    BodyStalled { timeout: std::time::Duration },
    /// The key's `quota_images` would be passed (counted in memory since the server started).
    #[error("API key {key} has used {used} of its {quota} images (quota_images in the keys file); this request asks for {requested}")]
    QuotaExceeded {
        key: String,
        quota: u64,
        used: u64,
        requested: u64,
    },
    /// The key's `rate_per_minute` is used up for the last 60 s.
    #[error("API key {key} may send {limit} generation requests per minute (rate_per_minute in the keys file); retry in {retry_after_s} s")]
    RateLimited {
        key: String,
        limit: u32,
        retry_after_s: u64,
    },
    #[error("the server is shutting down; retry on another instance or after it restarts")]
    ShuttingDown,
    #[error("the generation queue is full ({depth} waiting); retry in {retry_after_s} s")]
    QueueFull { depth: usize, retry_after_s: u64 },
    /// A failure inside imago; the detail goes to the log only.
    #[error("internal error")]
    Internal(String),
    /// The generation did not complete (the engine stopped, or an upstream failed).
    #[error("{0}")]
    BadGateway(String),
    #[error("not ready: {0}")]
    NotReady(String),
    /// The request ran past `--request-timeout` (504).
    #[error("{0}")]
    Timeout(String),
}

impl ApiError {
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidField {
            field: field.into(),
            message: message.into(),
        }
    }

    /// A field path from serde: `aspect_ratio`, `provider.options`; `None` at the top level.
    fn serde_path(path: &serde_path_to_error::Path) -> Option<String> {
        let path = path.to_string();
        (path != "." && path != "?" && !path.is_empty()).then_some(path)
    }

    /// A body serde refused: the field it was reading when that is known, else the whole body.
    pub fn from_json(err: serde_path_to_error::Error<serde_json::Error>) -> Self {
        use serde_json::error::Category;
        // Broken syntax is the body's fault wherever the parser was (the path is then `?`).
        if matches!(err.inner().classify(), Category::Syntax | Category::Eof) {
            return Self::InvalidBody(format!("the body is not valid JSON: {}", err.into_inner()));
        }
        match Self::serde_path(err.path()) {
            Some(field) => Self::InvalidField {
                field,
                message: err.into_inner().to_string(),
            },
            None => Self::InvalidBody(err.into_inner().to_string()),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidField { .. } | Self::InvalidBody(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::ModelNotAllowed(_) => StatusCode::FORBIDDEN,
            Self::UnknownModel { .. } | Self::NoRoute(_) => StatusCode::NOT_FOUND,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyStalled { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::QuotaExceeded { .. } => StatusCode::PAYMENT_REQUIRED,
            Self::QueueFull { .. } | Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::BadGateway(_) => StatusCode::BAD_GATEWAY,
            Self::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The message clients see: internal details stay in the log.
    pub fn public_message(&self) -> String {
        match self {
            Self::Internal(_) => {
                "internal error while generating the image; the server log has the details".into()
            }
            other => other.to_string(),
        }
    }

    fn field_name(&self) -> Option<&str> {
        match self {
            Self::InvalidField { field, .. } => Some(field),
            Self::UnknownModel { .. } | Self::ModelNotAllowed(_) => Some("model"),
            _ => None,
        }
    }

    /// OpenAI's `error.type` and `error.code`.
    fn openai_type_and_code(&self) -> (&'static str, Option<&'static str>) {
        match self {
            Self::InvalidField { .. } | Self::InvalidBody(_) => ("invalid_request_error", None),
            Self::Unauthorized => ("invalid_request_error", Some("invalid_api_key")),
            Self::ModelNotAllowed(_) => ("invalid_request_error", Some("model_not_allowed")),
            Self::UnknownModel { .. } => ("invalid_request_error", Some("model_not_found")),
            Self::NoRoute(_) => ("invalid_request_error", Some("unknown_url")),
            Self::BodyTooLarge { .. } => ("invalid_request_error", Some("request_too_large")),
            Self::BodyStalled { .. } => ("invalid_request_error", Some("request_timeout")),
            Self::QuotaExceeded { .. } => ("insufficient_quota", Some("insufficient_quota")),
            Self::QueueFull { .. } => ("rate_limit_error", Some("queue_full")),
            Self::RateLimited { .. } => ("rate_limit_error", Some("rate_limit_exceeded")),
            Self::ShuttingDown => ("server_error", Some("shutting_down")),
            Self::Internal(_) => ("server_error", None),
            Self::BadGateway(_) => ("server_error", Some("generation_incomplete")),
            Self::NotReady(_) => ("server_error", Some("not_ready")),
            Self::Timeout(_) => ("server_error", Some("timeout")),
        }
    }

    /// The JSON error object for one surface (also used inside SSE `error` events).
    pub fn envelope(&self, surface: Surface) -> serde_json::Value {
        let message = self.public_message();
        match surface {
            Surface::OpenAi => {
                let (kind, code) = self.openai_type_and_code();
                json!({"error": {"message": message, "type": kind, "param": self.field_name(), "code": code}})
            }
            Surface::OpenRouter | Surface::Imago => {
                let mut metadata = serde_json::Map::new();
                if let Some(field) = self.field_name() {
                    metadata.insert("field".into(), json!(field));
                }
                if let Some(retry_after_s) = self.retry_after_s() {
                    metadata.insert("retry_after_seconds".into(), json!(retry_after_s));
                }
                if let Self::QuotaExceeded { quota, used, .. } = self {
                    metadata.insert("quota_images".into(), json!(quota));
                    metadata.insert("used_images".into(), json!(used));
                }
                json!({"error": {"code": self.status().as_u16(), "message": message, "metadata": metadata}})
            }
        }
    }

    /// Seconds a client should wait before retrying (the `Retry-After` header), if any.
    pub fn retry_after_s(&self) -> Option<u64> {
        match self {
            Self::QueueFull { retry_after_s, .. } | Self::RateLimited { retry_after_s, .. } => {
                Some(*retry_after_s)
            }
            _ => None,
        }
    }

    /// Pairs the error with the surface that answers it (the response logs it).
    pub fn on(self, surface: Surface) -> ApiFailure {
        ApiFailure {
            surface,
            error: self,
        }
    }
}

impl From<FieldError> for ApiError {
    /// `FieldError`'s message already starts with the field; the envelope adds it once.
    fn from(err: FieldError) -> Self {
        let prefix = format!("{}: ", err.field);
        let message = err
            .message
            .strip_prefix(&prefix)
            .unwrap_or(&err.message)
            .to_string();
        Self::InvalidField {
            field: err.field,
            message,
        }
    }
}

/// An error with the surface that answers it: what handlers return.
#[derive(Debug)]
pub struct ApiFailure {
    pub surface: Surface,
    pub error: ApiError,
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        let status = self.error.status();
        match &self.error {
            ApiError::Internal(detail) => tracing::error!(%detail, "internal error"),
            ApiError::BadGateway(detail) => tracing::warn!(%detail, "generation did not complete"),
            other if status.is_client_error() => {
                tracing::info!(status = status.as_u16(), error = %other, "request refused")
            }
            _ => {}
        }
        let mut response = (status, axum::Json(self.error.envelope(self.surface))).into_response();
        if let Some(retry_after_s) = self.error.retry_after_s() {
            if let Ok(value) = HeaderValue::from_str(&retry_after_s.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_follow_each_surface() {
        let err = ApiError::field("n", "must be between 1 and 10, got 11");
        let or = err.envelope(Surface::OpenRouter);
        assert_eq!(or["error"]["code"], 400);
        assert_eq!(or["error"]["metadata"]["field"], "n");
        assert!(or["error"]["message"].as_str().unwrap().contains("got 11"));
        let oa = err.envelope(Surface::OpenAi);
        assert_eq!(oa["error"]["param"], "n");
        assert_eq!(oa["error"]["type"], "invalid_request_error");
    }

    #[test]
    fn internal_details_are_not_sent() {
        let err = ApiError::Internal("candle: shape mismatch in unet.conv_in".into());
        assert_eq!(err.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = err.envelope(Surface::OpenAi).to_string();
        assert!(
            !body.contains("candle") && !body.contains("conv_in"),
            "{body}"
        );
    }

    #[test]
    fn queue_full_sets_retry_after() {
        let response = ApiError::QueueFull {
            depth: 16,
            retry_after_s: 12,
        }
        .on(Surface::OpenRouter)
        .into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "12");
    }
}
