//! Model listings: OpenRouter's `/api/v1/images/models` (+ per-model endpoints) and OpenAI's `/v1/models`.
use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::wire::openai::{Model, ModelList};
use super::wire::openrouter::{AspectRatio, Resolution};
use super::wire::openrouter::{
    CapabilityDescriptor, ImageEndpoint, ImageModelArchitecture, ImageModelEndpointsResponse,
    ImageModelListItem, ImageModelsListResponse, ImagePricingEntry,
};
use super::AppState;
use crate::domain::caps::ModelCaps;
use crate::domain::request::{LOCAL_OPTION_KEYS, MAX_SEQUENCE_LENGTH};
use crate::domain::size::resolution_side;
use crate::error::Surface;
use crate::providers::ServedModel;
use imago_models::specs::Family;

/// What a model accepts, as OpenRouter's capability descriptors.
pub fn supported_parameters(caps: &ModelCaps) -> BTreeMap<String, CapabilityDescriptor> {
    let mut p = BTreeMap::new();
    let mut put = |k: &str, d: CapabilityDescriptor| {
        p.insert(k.to_string(), d);
    };
    put(
        "aspect_ratio",
        CapabilityDescriptor::values(AspectRatio::ALL.iter().map(|r| r.as_str())),
    );
    let tiers: Vec<&str> = Resolution::ALL
        .iter()
        .filter(|r| (caps.min_side..=caps.max_side).contains(&resolution_side(**r)))
        .map(|r| r.as_str())
        .collect();
    put(
        "resolution",
        CapabilityDescriptor::values(tiers.iter().copied()),
    );
    let mut sizes: Vec<String> = tiers.iter().map(|t| t.to_string()).collect();
    sizes.extend(
        [512usize, 768, 1024, 1536, 2048]
            .iter()
            .filter(|s| **s >= caps.min_side && **s <= caps.max_side)
            .map(|s| format!("{s}x{s}")),
    );
    put("size", CapabilityDescriptor::values(sizes));
    put("n", CapabilityDescriptor::range(1.0, caps.max_n as f64));
    put("seed", CapabilityDescriptor::range(0.0, u64::MAX as f64));
    put(
        "quality",
        CapabilityDescriptor::values(["auto", "low", "medium", "high", "xhigh", "max"]),
    );
    put(
        "output_format",
        CapabilityDescriptor::values(["png", "jpeg", "webp"]),
    );
    put(
        "output_compression",
        CapabilityDescriptor::range(0.0, 100.0),
    );
    let backgrounds: &[&str] = if caps.supports_transparent {
        &["auto", "opaque", "transparent"]
    } else {
        &["auto", "opaque"]
    };
    put(
        "background",
        CapabilityDescriptor::values(backgrounds.iter().copied()),
    );
    put(
        "input_references",
        CapabilityDescriptor::range(0.0, caps.max_references as f64),
    );
    put("stream", CapabilityDescriptor::Boolean);
    put(
        "steps",
        CapabilityDescriptor::range(1.0, caps.max_steps as f64),
    );
    put("guidance_scale", CapabilityDescriptor::range(0.0, 30.0));
    // FLUX runs one conditional pass per step with its own flow-matching scheduler: no negative
    // prompt and no scheduler choice, but a T5 length.
    if caps.family == Family::Flux {
        put(
            "max_sequence_length",
            CapabilityDescriptor::range(1.0, MAX_SEQUENCE_LENGTH as f64),
        );
    } else {
        put("negative_prompt", CapabilityDescriptor::Boolean);
    }
    if !caps.schedulers.is_empty() {
        put(
            "scheduler",
            CapabilityDescriptor::values(caps.schedulers.iter().cloned()),
        );
    }
    put("strength", CapabilityDescriptor::range(0.0, 1.0));
    put(
        "width",
        CapabilityDescriptor::range(caps.min_side as f64, caps.max_side as f64),
    );
    put(
        "height",
        CapabilityDescriptor::range(caps.min_side as f64, caps.max_side as f64),
    );
    p
}

fn endpoints_path(id: &str) -> String {
    format!("/api/v1/images/models/{id}/endpoints")
}

fn list_item(model: &ServedModel) -> ImageModelListItem {
    let caps = &model.caps;
    ImageModelListItem {
        id: caps.id.clone(),
        name: caps.name.clone(),
        description: caps.description.clone(),
        created: caps.created,
        architecture: ImageModelArchitecture::text_to_image(caps.max_references > 0),
        supported_parameters: supported_parameters(caps),
        supports_streaming: true,
        endpoints: endpoints_path(&caps.id),
    }
}

/// The image models this server serves, with what each accepts.
#[utoipa::path(get, path = "/api/v1/images/models", tag = "openrouter",
    responses((status = 200, body = ImageModelsListResponse), (status = 401, body = super::wire::openrouter::ErrorResponse)),
    security(("bearer" = [])))]
pub async fn openrouter_list(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(err) = state.auth.authenticate(&headers) {
        return err.on(Surface::OpenRouter).into_response();
    }
    let mut data: Vec<ImageModelListItem> = state.registry.models().iter().map(list_item).collect();
    // router8: the upstream providers' models.
    data.extend(crate::providers::openrouter_items(&state.registry).await);
    Json(ImageModelsListResponse { data }).into_response()
}

/// The providers serving one model (`author/slug`).
#[utoipa::path(get, path = "/api/v1/images/models/{author}/{slug}/endpoints", tag = "openrouter",
    params(("author" = String, Path), ("slug" = String, Path)),
    responses((status = 200, body = ImageModelEndpointsResponse), (status = 404, body = super::wire::openrouter::ErrorResponse)),
    security(("bearer" = [])))]
pub async fn openrouter_endpoints(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((author, slug)): Path<(String, String)>,
) -> Response {
    endpoints(&state, &headers, &format!("{author}/{slug}")).await
}

/// The same for a model id without an author (a folder's name).
pub async fn openrouter_endpoints_unscoped(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(slug): Path<String>,
) -> Response {
    endpoints(&state, &headers, &slug).await
}

/// The `provider.options.local` keys this model takes (FLUX: no negative prompt or scheduler, but a
/// T5 length; the other families the reverse).
fn local_options(caps: &ModelCaps) -> Vec<String> {
    let flux_only = ["max_sequence_length"];
    let not_flux = ["negative_prompt", "scheduler"];
    LOCAL_OPTION_KEYS
        .iter()
        .filter(|key| match caps.family {
            Family::Flux => !not_flux.contains(key),
            _ => !flux_only.contains(key),
        })
        .map(|s| s.to_string())
        .collect()
}

async fn endpoints(state: &AppState, headers: &HeaderMap, id: &str) -> Response {
    if let Err(err) = state.auth.authenticate(headers) {
        return err.on(Surface::OpenRouter).into_response();
    }
    let local = state.registry.get(id).map(|model| ImageEndpoint {
        allowed_passthrough_parameters: local_options(&model.caps),
        pricing: vec![ImagePricingEntry::free_output_image()],
        provider_name: "imago local engine".into(),
        provider_slug: model.provider.slug().into(),
        provider_tag: None,
        supported_parameters: supported_parameters(&model.caps),
        supports_streaming: true,
    });
    // router8: the upstream providers serving it.
    let upstream = crate::providers::openrouter_endpoints(&state.registry, id).await;
    if local.is_none() && upstream.is_empty() {
        if let Err(err) = state.registry.lookup(id) {
            return err.on(Surface::OpenRouter).into_response();
        }
    }
    Json(ImageModelEndpointsResponse {
        id: id.to_string(),
        endpoints: local.into_iter().chain(upstream).collect(),
    })
    .into_response()
}

/// The models, OpenAI's way.
#[utoipa::path(get, path = "/v1/models", tag = "openai",
    responses((status = 200, body = ModelList), (status = 401, body = super::wire::openai::ErrorResponse)),
    security(("bearer" = [])))]
pub async fn openai_list(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(err) = state.auth.authenticate(&headers) {
        return err.on(Surface::OpenAi).into_response();
    }
    let mut data: Vec<Model> = state
        .registry
        .models()
        .iter()
        .map(|m| Model::new(m.caps.id.clone(), m.caps.created, "imago"))
        .collect();
    // router8: the upstream providers' models.
    data.extend(crate::providers::openai_models(&state.registry).await);
    Json(ModelList::new(data)).into_response()
}
