//! `POST /api/v1/images`: OpenRouter's image generation, JSON or SSE.
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::generate::{self, b64, usage_counts, Batch, EncodedImage, StreamRenderer};
use super::wire::openrouter::{
    ImageGenCompletedEvent, ImageGenPartialImageEvent, ImageGenStreamErrorEvent,
    ImageGenerationRequest, ImageGenerationResponse, ImageGenerationResponseData,
    ImageGenerationUsage, ImageStreamEvent,
};
use super::{parse_json, sse, AppState};
use crate::domain::request::{validate_openrouter, ValidatedRequest};
use crate::error::{ApiError, Surface};

/// Generate images (OpenRouter shape). With `stream: true` the answer is `text/event-stream`:
/// one `image_generation.completed` event per image, then `data: [DONE]`.
#[utoipa::path(
    post,
    path = "/api/v1/images",
    tag = "openrouter",
    request_body = ImageGenerationRequest,
    responses(
        (status = 200, description = "The images (or an SSE stream of `ImageStreamEvent`s when `stream` is true)", body = ImageGenerationResponse),
        (status = 400, description = "A field is invalid; the message names it", body = super::wire::openrouter::ErrorResponse),
        (status = 401, body = super::wire::openrouter::ErrorResponse),
        (status = 403, body = super::wire::openrouter::ErrorResponse),
        (status = 404, body = super::wire::openrouter::ErrorResponse),
        (status = 402, description = "The API key's quota_images is used up", body = super::wire::openrouter::ErrorResponse),
        (status = 408, description = "The request body stalled (--idle-timeout)", body = super::wire::openrouter::ErrorResponse),
        (status = 413, body = super::wire::openrouter::ErrorResponse),
        (status = 429, body = super::wire::openrouter::ErrorResponse),
        (status = 500, body = super::wire::openrouter::ErrorResponse),
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
        Err(err) => err.on(Surface::OpenRouter).into_response(),
    }
}

async fn handle(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = state.auth.authenticate(headers)?;
    // Kept as JSON for an upstream provider (the typed parse below checks it first).
    let raw = body.as_ref().ok().cloned();
    let request: ImageGenerationRequest = parse_json(body, state.limits.max_body_bytes)?;
    // router8: the providers serving the model, in routing order (404 / 400 when none).
    let hops = state
        .registry
        .plan(&request.model, request.provider.as_ref())?;
    caller.check_model(&request.model)?;
    generate::route(
        state,
        &caller,
        &hops,
        Surface::OpenRouter,
        raw,
        request.n,
        || local(state, &caller, &request),
    )
    .await
}

/// The local engine's answer.
async fn local(
    state: &AppState,
    caller: &crate::api::auth::Caller,
    request: &ImageGenerationRequest,
) -> Result<Response, ApiError> {
    let served = state.registry.lookup(&request.model)?;
    let validated = validate_openrouter(request, &served.caps).map_err(ApiError::from)?;
    generate::admit(state, caller, &validated)?;
    tracing::info!(
        caller = caller.name(),
        model = %validated.model,
        size = %format!("{}x{}", validated.width, validated.height),
        n = validated.n,
        steps = validated.steps,
        stream = validated.stream,
        user = validated.user.as_deref().unwrap_or(""),
        "generate"
    );
    if validated.stream {
        return stream(state, validated).await;
    }
    let batch = generate::generate(state, &validated).await?;
    let body = response_body(&batch, &validated);
    Ok((generate::batch_headers(&batch), Json(body)).into_response())
}

fn usage(batch: &Batch, request: &ValidatedRequest) -> ImageGenerationUsage {
    let counts = usage_counts(batch, request);
    ImageGenerationUsage::new(counts.prompt_tokens, counts.image_tokens)
}

fn response_body(batch: &Batch, request: &ValidatedRequest) -> ImageGenerationResponse {
    ImageGenerationResponse {
        created: batch.created,
        data: batch
            .images
            .iter()
            .map(|img| {
                ImageGenerationResponseData::new(b64(&img.bytes), img.media_type, batch.seed)
            })
            .collect(),
        usage: Some(usage(batch, request)),
    }
}

async fn stream(state: &AppState, request: ValidatedRequest) -> Result<Response, ApiError> {
    let submitted = generate::submit(state, &request).await?;
    let headers = generate::stream_headers(submitted.seed, request.width, request.height);
    let events = generate::event_stream(
        submitted.job,
        request,
        OpenRouterEvents,
        state.shutdown.clone(),
    );
    Ok(sse::response(events, headers))
}

struct OpenRouterEvents;

impl StreamRenderer for OpenRouterEvents {
    fn partial(
        &self,
        _request: &ValidatedRequest,
        partial_image_index: u32,
        image_index: u32,
        image: &EncodedImage,
    ) -> Event {
        let event = ImageStreamEvent::PartialImage(ImageGenPartialImageEvent {
            b64_json: b64(&image.bytes),
            partial_image_index,
            image_index,
        });
        sse::event(event.event_name(), &event)
    }

    fn completed(&self, batch: &Batch, request: &ValidatedRequest) -> Vec<Event> {
        let usage = usage(batch, request);
        batch
            .images
            .iter()
            .enumerate()
            .map(|(i, img)| {
                let event = ImageStreamEvent::Completed(ImageGenCompletedEvent {
                    b64_json: b64(&img.bytes),
                    created: batch.created,
                    created_at: generate::unix_now(),
                    media_type: Some(img.media_type.to_string()),
                    usage: Some(usage.clone()),
                    image_index: i as u32,
                    seed: Some(batch.seed),
                });
                sse::event(event.event_name(), &event)
            })
            .collect()
    }

    fn error(&self, err: &ApiError) -> Event {
        let event = ImageStreamEvent::Error(ImageGenStreamErrorEvent::new(
            err.public_message(),
            err.status().as_u16().to_string(),
        ));
        sse::event(event.event_name(), &event)
    }
}
