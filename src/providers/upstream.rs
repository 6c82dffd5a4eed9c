//! An upstream HTTP provider (OpenRouter, OpenAI, another imago): the client that talks to it.
//! Its URLs are its configured `base_url` plus fixed paths: no request field can choose where a
//! request goes. The client's own key is never forwarded; the upstream's key (from the environment)
//! is sent instead.
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;

use crate::config::{UpstreamConfig, UpstreamKind};

/// Connecting must be quick: a dead upstream should cost little before the next one is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Model listings are small: a slow one must not hold up `/v1/models`.
const LISTING_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest error body kept for a message.
const MAX_ERROR_BODY: usize = 16 * 1024;

/// Why an upstream did not produce an answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("provider {slug}: cannot connect to {url}: {reason}")]
    Connect {
        slug: String,
        url: String,
        reason: String,
    },
    #[error("provider {slug}: no answer within {seconds} s")]
    Timeout { slug: String, seconds: u64 },
    /// Any non-2xx answer; `message` is the upstream's own error message when it sent one.
    #[error("provider {slug} answered HTTP {status}: {message}")]
    Status {
        slug: String,
        status: u16,
        message: String,
        /// The body as sent (relayed verbatim when the client made the mistake).
        body: Bytes,
    },
    #[error("provider {slug}: {reason}")]
    Protocol { slug: String, reason: String },
}

impl UpstreamError {
    /// Connect errors, timeouts, 5xx and 429 let the next provider try (when fallbacks are allowed).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Connect { .. } | Self::Timeout { .. } => true,
            Self::Status { status, .. } => *status == 429 || *status >= 500,
            Self::Protocol { .. } => false,
        }
    }

    /// 400, 413 and 422 are the client's mistakes: relayed as they are. Other 4xx (the router's
    /// key refused, the model unknown upstream) are the router's configuration: a 502.
    pub fn is_client_error(&self) -> bool {
        matches!(self, Self::Status { status, .. } if matches!(status, 400 | 413 | 422))
    }
}

/// One configured upstream and its HTTP client.
pub struct Upstream {
    config: UpstreamConfig,
    client: reqwest::Client,
}

impl Upstream {
    pub fn new(config: UpstreamConfig) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(config.timeout)
            // A redirect could carry the upstream's key to another host.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("imago/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { config, client })
    }

    pub fn slug(&self) -> &str {
        &self.config.slug
    }

    pub fn kind(&self) -> UpstreamKind {
        self.config.kind
    }

    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    pub fn serves(&self, model: &str) -> bool {
        self.config.models.iter().any(|m| m == model)
    }

    /// The generation endpoint of its API.
    fn generation_url(&self) -> String {
        match self.config.kind {
            UpstreamKind::OpenRouter => format!("{}/images", self.config.base_url),
            UpstreamKind::OpenAi => format!("{}/images/generations", self.config.base_url),
        }
    }

    /// The model listing of its API.
    fn listing_url(&self) -> String {
        match self.config.kind {
            UpstreamKind::OpenRouter => format!("{}/images/models", self.config.base_url),
            UpstreamKind::OpenAi => format!("{}/models", self.config.base_url),
        }
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.config.api_key {
            Some(key) => request.bearer_auth(&key.0),
            None => request,
        }
    }

    /// POSTs a generation request; a 2xx response comes back with its body unread (it may be a stream).
    pub async fn generate(&self, body: &Value) -> Result<reqwest::Response, UpstreamError> {
        let url = self.generation_url();
        let request = self
            .client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        let request = self.authorized(request.body(body.to_string()));
        let response = request.send().await.map_err(|e| self.send_error(&url, e))?;
        self.check_status(response).await
    }

    /// The `data` array of its model listing.
    pub async fn list_models(&self) -> Result<Vec<Value>, UpstreamError> {
        let url = self.listing_url();
        let request = self.authorized(self.client.get(&url).timeout(LISTING_TIMEOUT));
        let response = request.send().await.map_err(|e| self.send_error(&url, e))?;
        let response = self.check_status(response).await?;
        let bytes = response.bytes().await.map_err(|e| self.body_error(e))?;
        let body: Value = serde_json::from_slice(&bytes)
            .map_err(|e| self.protocol(format!("model listing is not JSON: {e}")))?;
        match body.get("data") {
            Some(Value::Array(items)) => Ok(items.clone()),
            _ => Err(self.protocol("model listing has no `data` array".into())),
        }
    }

    pub fn protocol(&self, reason: String) -> UpstreamError {
        UpstreamError::Protocol {
            slug: self.config.slug.clone(),
            reason,
        }
    }

    /// A failure while reading a response body (a stream cut, a timeout between events).
    pub fn body_error(&self, err: reqwest::Error) -> UpstreamError {
        if err.is_timeout() {
            self.timeout()
        } else {
            self.protocol(format!("the response broke off: {}", error_chain(&err)))
        }
    }

    fn timeout(&self) -> UpstreamError {
        UpstreamError::Timeout {
            slug: self.config.slug.clone(),
            seconds: self.config.timeout.as_secs(),
        }
    }

    fn send_error(&self, url: &str, err: reqwest::Error) -> UpstreamError {
        if err.is_timeout() {
            self.timeout()
        } else {
            UpstreamError::Connect {
                slug: self.config.slug.clone(),
                url: url.to_string(),
                reason: error_chain(&err),
            }
        }
    }

    async fn check_status(
        &self,
        response: reqwest::Response,
    ) -> Result<reqwest::Response, UpstreamError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let mut body = Vec::new();
        let mut response = response;
        while let Ok(Some(chunk)) = response.chunk().await {
            body.extend_from_slice(&chunk);
            if body.len() >= MAX_ERROR_BODY {
                body.truncate(MAX_ERROR_BODY);
                break;
            }
        }
        Err(UpstreamError::Status {
            slug: self.config.slug.clone(),
            status: status.as_u16(),
            message: error_message(&body),
            body: Bytes::from(body),
        })
    }
}

/// The `error.message` of either API's envelope, else the start of the body as text.
pub fn error_message(body: &[u8]) -> String {
    if let Ok(value) = serde_json::from_slice::<Value>(body) {
        if let Some(message) = value
            .pointer("/error/message")
            .or_else(|| value.get("message"))
            .and_then(Value::as_str)
        {
            return message.to_string();
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        "(empty body)".into()
    } else {
        text.chars().take(300).collect()
    }
}

/// An error with its causes ("error sending request: connection refused").
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_come_from_either_envelope() {
        assert_eq!(
            error_message(br#"{"error":{"code":500,"message":"boom"}}"#),
            "boom"
        );
        assert_eq!(
            error_message(br#"{"error":{"message":"bad","type":"x"}}"#),
            "bad"
        );
        assert_eq!(error_message(b"  gateway down \n"), "gateway down");
        assert_eq!(error_message(b""), "(empty body)");
    }

    #[test]
    fn retry_and_relay_classes() {
        let status = |status| UpstreamError::Status {
            slug: "s".into(),
            status,
            message: String::new(),
            body: Bytes::new(),
        };
        for (code, retry, client) in [
            (429, true, false),
            (500, true, false),
            (503, true, false),
            (400, false, true),
            (413, false, true),
            (401, false, false),
            (404, false, false),
        ] {
            assert_eq!(status(code).is_retryable(), retry, "{code}");
            assert_eq!(status(code).is_client_error(), client, "{code}");
        }
    }
}
