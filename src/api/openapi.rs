//! `GET /openapi.json` and `imago print-openapi`: the document generated from the wire types.
use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::wire::{openai, openrouter};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "imago", description = "Self-hosted image generation: the OpenRouter and OpenAI Images APIs on a local diffusion engine."),
    paths(
        super::images::create,
        super::openai::create,
        super::edits::create,
        super::models::openrouter_list,
        super::models::openrouter_endpoints,
        super::models::openai_list,
        super::health::health,
        super::health::ready,
    ),
    components(schemas(openrouter::ImageStreamEvent, openai::ImageGenStreamEvent, openai::ImageEditStreamEvent)),
    modifiers(&BearerAuth),
    tags((name = "openrouter", description = "OpenRouter Images API"), (name = "openai", description = "OpenAI Images API"), (name = "health"))
)]
pub struct ApiDoc;

/// The document as pretty JSON (stable key order, so it can be compared with the committed copy).
pub fn document_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// The OpenAPI document of this server.
pub async fn json() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        document_json(),
    )
}
