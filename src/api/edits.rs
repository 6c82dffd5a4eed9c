//! `POST /v1/images/edits`: OpenAI's edits (multipart `image`/`image[]` files, or JSON
//! `images: [{image_url}]`) as image-to-image on the local engine.
use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::wire::openai::ImageGenerateRequest;
use super::{parse_json, AppState};
use crate::domain::request::{
    parse_reference_url, validate_openai, with_reference, ReferenceSource, DEFAULT_STRENGTH,
};
use crate::error::{ApiError, Surface};

/// `input_fidelity: "high"` keeps more of the input: a lower img2img strength.
const HIGH_FIDELITY_STRENGTH: f64 = 0.5;

/// Form fields sent as text that are numbers or booleans in the JSON request.
const INTEGER_FIELDS: &[&str] = &[
    "n",
    "output_compression",
    "partial_images",
    "frame_count",
    "frame_duration_ms",
];
const BOOLEAN_FIELDS: &[&str] = &["stream"];

/// Edit an image (OpenAI shape): the input image is the image-to-image starting point.
#[utoipa::path(
    post,
    path = "/v1/images/edits",
    tag = "openai",
    request_body(content_type = "multipart/form-data", description = "OpenAI's edit form: `image` or `image[]` files, `prompt`, and the generation fields; or JSON with `images: [{\"image_url\": ...}]`"),
    responses(
        (status = 200, body = super::wire::openai::ImagesResponse),
        (status = 400, body = super::wire::openai::ErrorResponse),
        (status = 401, body = super::wire::openai::ErrorResponse),
        (status = 404, body = super::wire::openai::ErrorResponse),
        (status = 402, description = "The API key's quota_images is used up", body = super::wire::openai::ErrorResponse),
        (status = 408, description = "The request body stalled (--idle-timeout)", body = super::wire::openai::ErrorResponse),
        (status = 413, body = super::wire::openai::ErrorResponse),
        (status = 429, description = "The queue is full or the key's rate_per_minute is used up", body = super::wire::openai::ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn create(State(state): State<AppState>, request: Request) -> Response {
    match handle(&state, request).await {
        Ok(response) => response,
        Err(err) => err.on(Surface::OpenAi).into_response(),
    }
}

/// What the body carried: the generation fields and the input images.
struct EditForm {
    fields: Map<String, Value>,
    images: Vec<ReferenceSource>,
}

async fn handle(state: &AppState, request: Request) -> Result<Response, ApiError> {
    let caller = state.auth.authenticate(request.headers())?;
    let is_multipart = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"));
    let form = if is_multipart {
        read_multipart(state, request).await?
    } else {
        read_json(state, request).await?
    };
    let EditForm { mut fields, images } = form;

    for unsupported in ["mask", "markup"] {
        if fields.contains_key(unsupported) {
            return Err(ApiError::field(
                unsupported,
                "mask-based inpainting is not supported; send the image alone (the whole picture is repainted with `strength`)",
            ));
        }
    }
    let strength = match fields.remove("input_fidelity") {
        None | Some(Value::Null) => DEFAULT_STRENGTH,
        Some(Value::String(s)) if s == "low" => DEFAULT_STRENGTH,
        Some(Value::String(s)) if s == "high" => HIGH_FIDELITY_STRENGTH,
        Some(other) => {
            return Err(ApiError::field(
                "input_fidelity",
                format!("must be \"low\" or \"high\", got {other}"),
            ))
        }
    };
    let generate: ImageGenerateRequest = serde_json::from_value(Value::Object(fields))
        .map_err(|e| ApiError::InvalidBody(e.to_string()))?;
    let served = state.registry.lookup_or_first(generate.model.as_deref())?;
    caller.check_model(&served.caps.id)?;
    let caps = &served.caps;
    let mut images = images.into_iter();
    let reference = match (images.next(), images.len()) {
        (None, _) => {
            return Err(ApiError::field(
                "image",
                "an input image is required (multipart `image` or JSON `images`)",
            ))
        }
        (Some(first), 0) => first,
        (Some(_), rest) => {
            return Err(ApiError::field(
                "image",
                format!(
                    "{} takes {} input image, got {}",
                    caps.id,
                    caps.max_references,
                    rest + 1
                ),
            ))
        }
    };
    let validated = validate_openai(&generate, caps).map_err(ApiError::from)?;
    let validated = with_reference(validated, reference, strength, caps).map_err(ApiError::from)?;
    super::generate::admit(state, &caller, &validated)?;
    tracing::info!(caller = caller.name(), "edit (openai)");
    super::openai::respond(state, validated, super::openai::Operation::Edit).await
}

async fn read_multipart(state: &AppState, request: Request) -> Result<EditForm, ApiError> {
    let limit = state.limits.max_body_bytes;
    let mut multipart = Multipart::from_request(request, state)
        .await
        .map_err(|e| ApiError::InvalidBody(e.body_text()))?;
    let mut fields = Map::new();
    let mut images = Vec::new();
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(ApiError::BodyTooLarge { limit })
            }
            Err(e) => return Err(ApiError::InvalidBody(e.body_text())),
        };
        let name = field.name().unwrap_or_default().to_string();
        let is_image = name == "image"
            || name == "image[]"
            || (name.starts_with("image[") && name.ends_with(']'));
        if is_image {
            // Clients often send files as application/octet-stream; the bytes are sniffed anyway.
            let media_type = field
                .content_type()
                .filter(|ct| ct.starts_with("image/"))
                .unwrap_or("image/*")
                .to_string();
            let bytes = field
                .bytes()
                .await
                .map_err(|e| ApiError::InvalidBody(e.body_text()))?;
            images.push(ReferenceSource::DataUrl {
                media_type,
                bytes: bytes.to_vec(),
            });
            continue;
        }
        if name == "mask" || name == "markup" {
            fields.insert(name, Value::Bool(true));
            continue;
        }
        let text = field
            .text()
            .await
            .map_err(|e| ApiError::InvalidBody(e.body_text()))?;
        let value = if INTEGER_FIELDS.contains(&name.as_str()) {
            text.trim().parse::<i64>().map(Value::from).map_err(|_| {
                ApiError::field(name.clone(), format!("must be an integer, got {text:?}"))
            })?
        } else if BOOLEAN_FIELDS.contains(&name.as_str()) {
            match text.trim() {
                "true" | "True" | "1" => Value::Bool(true),
                "false" | "False" | "0" => Value::Bool(false),
                other => {
                    return Err(ApiError::field(
                        name.clone(),
                        format!("must be true or false, got {other:?}"),
                    ))
                }
            }
        } else {
            Value::String(text)
        };
        fields.insert(name, value);
    }
    Ok(EditForm { fields, images })
}

async fn read_json(state: &AppState, request: Request) -> Result<EditForm, ApiError> {
    let body = Bytes::from_request(request, state).await;
    let mut fields: Map<String, Value> = parse_json(body, state.limits.max_body_bytes)?;
    let mut images = Vec::new();
    if let Some(list) = fields.remove("images") {
        let Value::Array(list) = list else {
            return Err(ApiError::field(
                "images",
                "must be a list of {\"image_url\": ...} objects",
            ));
        };
        for (i, entry) in list.iter().enumerate() {
            let field = format!("images[{i}].image_url");
            match entry.get("image_url").and_then(Value::as_str) {
                Some(url) => images.push(parse_reference_url(&field, url).map_err(ApiError::from)?),
                None if entry.get("file_id").is_some() => {
                    return Err(ApiError::field(
                        format!("images[{i}].file_id"),
                        "file ids are not supported (this server stores no files); send image_url",
                    ))
                }
                None => {
                    return Err(ApiError::field(
                        field,
                        "missing; each image is {\"image_url\": \"data:...\" or \"https://...\"}",
                    ))
                }
            }
        }
    }
    Ok(EditForm { fields, images })
}
