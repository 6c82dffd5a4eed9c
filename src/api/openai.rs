//! `POST /v1/images/generations`: OpenAI's image generation on the same core.
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::generate::{self, b64, usage_counts, Batch, EncodedImage, StreamRenderer};
use super::wire::openai::{
    Background, ErrorResponse, EventQuality, Image, ImageEditStreamEvent, ImageGenCompletedEvent,
    ImageGenPartialImageEvent, ImageGenStreamEvent, ImageGenerateRequest, ImagesResponse,
    ResponseBackground, ResponseOutputFormat, ResponseQuality, Usage,
};
use super::{parse_json, sse, AppState};
use crate::domain::request::{self as domain, validate_openai, OutputFormat, ValidatedRequest};
use crate::error::{ApiError, Surface};

/// Generate images (OpenAI shape). With `stream: true`: `image_generation.completed` events, then `data: [DONE]`.
#[utoipa::path(
    post,
    path = "/v1/images/generations",
    tag = "openai",
    request_body = ImageGenerateRequest,
    responses(
        (status = 200, description = "The images (or an SSE stream of `ImageGenStreamEvent`s when `stream` is true)", body = ImagesResponse),
        (status = 400, body = ErrorResponse),
        (status = 401, body = ErrorResponse),
        (status = 403, body = ErrorResponse),
        (status = 404, body = ErrorResponse),
        (status = 402, description = "The API key's quota_images is used up", body = ErrorResponse),
        (status = 408, description = "The request body stalled (--idle-timeout)", body = ErrorResponse),
        (status = 413, body = ErrorResponse),
        (status = 429, body = ErrorResponse),
        (status = 500, body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match handle(&state, &headers, body).await {
        Ok(response) => response,
        Err(err) => err.on(Surface::OpenAi).into_response(),
    }
}

async fn handle(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = state.auth.authenticate(headers)?;
    let raw = body.as_ref().ok().cloned();
    let request: ImageGenerateRequest = parse_json(body, state.limits.max_body_bytes)?;
    // router8: a named model goes through its providers in order (no routing preferences on this
    // API: local first, then the providers file's order, with fallback).
    if let Some(model) = request.model.as_deref() {
        let hops = state.registry.plan(model, None)?;
        caller.check_model(model)?;
        return generate::route(
            state,
            &caller,
            &hops,
            Surface::OpenAi,
            raw,
            request.n,
            || local(state, &caller, &request),
        )
        .await;
    }
    local(state, &caller, &request).await
}

/// The local engine's answer.
async fn local(
    state: &AppState,
    caller: &crate::api::auth::Caller,
    request: &ImageGenerateRequest,
) -> Result<Response, ApiError> {
    // `model` is optional in OpenAI's API: without one, the first served model answers.
    let served = state.registry.lookup_or_first(request.model.as_deref())?;
    caller.check_model(&served.caps.id)?;
    let validated = validate_openai(request, &served.caps).map_err(ApiError::from)?;
    generate::admit(state, caller, &validated)?;
    tracing::info!(caller = caller.name(), "generate (openai)");
    respond(state, validated, Operation::Generation).await
}

/// Which OpenAI endpoint answers: it names the stream events (`image_generation.*` or `image_edit.*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Generation,
    Edit,
}

/// Runs a validated request and answers in OpenAI's shape (JSON, or SSE when it streams).
pub async fn respond(
    state: &AppState,
    validated: ValidatedRequest,
    operation: Operation,
) -> Result<Response, ApiError> {
    tracing::info!(
        model = %validated.model,
        size = %format!("{}x{}", validated.width, validated.height),
        n = validated.n,
        stream = validated.stream,
        image_to_image = validated.reference.is_some(),
        "openai request"
    );
    if validated.stream {
        let submitted = generate::submit(state, &validated).await?;
        let headers = generate::stream_headers(submitted.seed, validated.width, validated.height);
        let events = generate::event_stream(
            submitted.job,
            validated,
            OpenAiEvents { operation },
            state.shutdown.clone(),
        );
        return Ok(sse::response(events, headers));
    }
    let batch = generate::generate(state, &validated).await?;
    let body = ImagesResponse {
        created: batch.created,
        data: batch
            .images
            .iter()
            .map(|img| Image::new(b64(&img.bytes), batch.seed))
            .collect(),
        usage: Some(usage(&batch, &validated)),
        background: Some(ResponseBackground::Opaque),
        output_format: Some(output_format(validated.output_format)),
        quality: Some(response_quality(validated.quality)),
        size: Some(format!("{}x{}", batch.width, batch.height)),
    };
    Ok((generate::batch_headers(&batch), Json(body)).into_response())
}

fn usage(batch: &Batch, request: &ValidatedRequest) -> Usage {
    let counts = usage_counts(batch, request);
    Usage::new(counts.prompt_tokens, 0, counts.image_tokens)
}

fn output_format(format: OutputFormat) -> ResponseOutputFormat {
    match format {
        OutputFormat::Png => ResponseOutputFormat::Png,
        OutputFormat::Jpeg => ResponseOutputFormat::Jpeg,
        OutputFormat::Webp => ResponseOutputFormat::Webp,
    }
}

fn response_quality(quality: Option<domain::Quality>) -> ResponseQuality {
    match quality {
        Some(domain::Quality::Low) => ResponseQuality::Low,
        Some(domain::Quality::High) | Some(domain::Quality::Xhigh) | Some(domain::Quality::Max) => {
            ResponseQuality::High
        }
        _ => ResponseQuality::Medium,
    }
}

fn event_quality(quality: Option<domain::Quality>) -> EventQuality {
    match quality {
        Some(domain::Quality::Low) => EventQuality::Low,
        Some(domain::Quality::Medium) => EventQuality::Medium,
        Some(domain::Quality::High) | Some(domain::Quality::Xhigh) | Some(domain::Quality::Max) => {
            EventQuality::High
        }
        _ => EventQuality::Auto,
    }
}

struct OpenAiEvents {
    operation: Operation,
}

impl OpenAiEvents {
    fn event(&self, payload: StreamPayload) -> Event {
        match self.operation {
            Operation::Generation => {
                let event = match payload {
                    StreamPayload::Partial(p) => ImageGenStreamEvent::PartialImage(p),
                    StreamPayload::Completed(c) => ImageGenStreamEvent::Completed(c),
                    StreamPayload::Error(e) => ImageGenStreamEvent::Error(e),
                };
                sse::event(event.event_name(), &event)
            }
            Operation::Edit => {
                let event = match payload {
                    StreamPayload::Partial(p) => ImageEditStreamEvent::PartialImage(p),
                    StreamPayload::Completed(c) => ImageEditStreamEvent::Completed(c),
                    StreamPayload::Error(e) => ImageEditStreamEvent::Error(e),
                };
                sse::event(event.event_name(), &event)
            }
        }
    }
}

enum StreamPayload {
    Partial(ImageGenPartialImageEvent),
    Completed(ImageGenCompletedEvent),
    Error(ErrorResponse),
}

impl StreamRenderer for OpenAiEvents {
    fn partial(
        &self,
        request: &ValidatedRequest,
        partial_image_index: u32,
        image_index: u32,
        image: &EncodedImage,
    ) -> Event {
        self.event(StreamPayload::Partial(ImageGenPartialImageEvent {
            b64_json: b64(&image.bytes),
            background: Background::Opaque,
            created_at: generate::unix_now(),
            output_format: output_format(request.output_format),
            partial_image_index,
            quality: event_quality(request.quality),
            size: format!("{}x{}", request.width, request.height),
            image_index,
        }))
    }

    fn completed(&self, batch: &Batch, request: &ValidatedRequest) -> Vec<Event> {
        let usage = usage(batch, request);
        batch
            .images
            .iter()
            .enumerate()
            .map(|(i, img)| {
                self.event(StreamPayload::Completed(ImageGenCompletedEvent {
                    b64_json: b64(&img.bytes),
                    background: Background::Opaque,
                    created_at: generate::unix_now(),
                    output_format: output_format(request.output_format),
                    quality: event_quality(request.quality),
                    size: format!("{}x{}", batch.width, batch.height),
                    usage: usage.clone().into(),
                    image_index: i as u32,
                    seed: Some(batch.seed),
                }))
            })
            .collect()
    }

    fn error(&self, err: &ApiError) -> Event {
        self.event(StreamPayload::Error(ErrorResponse::new(
            err.public_message(),
            "server_error",
            None,
            None,
        )))
    }
}
