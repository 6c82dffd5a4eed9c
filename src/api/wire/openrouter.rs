//! OpenRouter Image API wire types (`/api/v1/images*`), as the official `openrouter` Python SDK
//! defines them (`components/imagegeneration*.py`, `imagegen*event.py`, `imagemodel*.py`,
//! `imageendpoint.py`, `capabilitydescriptor.py`). Field names, enum values and which response
//! fields are required follow those models; `seed` and `image_index` are imago extensions
//! (the SDK tolerates extra fields).
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

// ---------------------------------------------------------------------------------------------
// Request
// ---------------------------------------------------------------------------------------------

string_enum! {
    /// Normalized aspect ratio of the generated image. `auto` is the model's native ratio.
    pub enum AspectRatio {
        R1x1 = "1:1",
        R1x2 = "1:2",
        R1x4 = "1:4",
        R1x8 = "1:8",
        R2x1 = "2:1",
        R2x3 = "2:3",
        R2_35x1 = "2.35:1",
        R3x2 = "3:2",
        R3x4 = "3:4",
        R4x1 = "4:1",
        R4x3 = "4:3",
        R4x5 = "4:5",
        R5x2 = "5:2",
        R5x4 = "5:4",
        R5x7 = "5:7",
        R7x5 = "7:5",
        R8x1 = "8:1",
        R9x16 = "9:16",
        R16x9 = "16:9",
        R9x19_5 = "9:19.5",
        R19_5x9 = "19.5:9",
        R9x20 = "9:20",
        R20x9 = "20:9",
        R9x21 = "9:21",
        R21x9 = "21:9",
        Auto = "auto",
    }
}

string_enum! {
    /// Background treatment. `transparent` requires an output_format that supports alpha (png or
    /// webp) and a model that can produce an alpha channel.
    pub enum Background {
        Auto = "auto",
        Transparent = "transparent",
        Opaque = "opaque",
    }
}

string_enum! {
    /// Encoding of the returned image bytes. `svg` is rejected: the served models are raster models.
    pub enum OutputFormat {
        Png = "png",
        Jpeg = "jpeg",
        Webp = "webp",
        Svg = "svg",
    }
}

string_enum! {
    /// Rendering quality: selects the model's denoising step count.
    pub enum Quality {
        Auto = "auto",
        Low = "low",
        Medium = "medium",
        High = "high",
        Xhigh = "xhigh",
        Max = "max",
    }
}

string_enum! {
    /// Normalized resolution tier: the output has about tier x tier pixels (1K = 1024).
    pub enum Resolution {
        R512 = "512",
        R768 = "768",
        R1K = "1K",
        R1_5K = "1.5K",
        R2K = "2K",
        R4K = "4K",
    }
}

/// Image generation request input.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageGenerationRequest {
    /// The image generation model to use.
    pub model: String,
    /// Text description of the desired image.
    pub prompt: String,
    /// Normalized aspect ratio of the generated image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aspect_ratio: Option<AspectRatio>,
    /// Background treatment. `transparent` requires an output_format that supports alpha (png or webp).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub background: Option<Background>,
    /// Reference images to guide image-to-image generation, as base64 data URLs or HTTP(S) URLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_references: Option<Vec<ContentPartImage>>,
    /// Number of images to generate (1-10), generated as one batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<i64>,
    /// Compression level (0-100) for webp/jpeg output. Ignored for png.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_compression: Option<i64>,
    /// Encoding of the returned image bytes (png, jpeg, webp).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_format: Option<OutputFormat>,
    /// Provider routing preferences and provider-specific passthrough configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ImageGenerationProviderPreferences>,
    /// Rendering quality: maps to the model's step count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<Quality>,
    /// Normalized resolution tier of the generated image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<Resolution>,
    /// Integer seed (0 to 2^64-1) for deterministic sampling. Absent: a random seed is drawn and
    /// reported in the `seed` field of each image and the `x-imago-seed` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<u64>)]
    pub seed: Option<serde_json::Number>,
    /// A unique identifier for grouping related requests (at most 256 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// A tier ("1K", "2K", case-insensitive) equivalent to `resolution`, or explicit pixels
    /// ("1024x768"), which are authoritative: a mismatched `resolution` or `aspect_ratio` is a 400.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// If true, partial images are streamed as SSE events as they become available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Metadata for observability and tracing (trace_id, trace_name, span_name,
    /// generation_name, parent_span_id, and custom keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<BTreeMap<String, Value>>,
    /// A stable identifier for your end-users (kept for logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

string_enum! {
    /// The type of a content part: always `image_url`.
    pub enum ContentPartImageType {
        ImageUrl = "image_url",
    }
}

/// A reference image: `{"type":"image_url","image_url":{"url":...}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContentPartImage {
    pub image_url: ContentPartImageUrl,
    #[serde(rename = "type")]
    pub kind: ContentPartImageType,
}

impl ContentPartImage {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            image_url: ContentPartImageUrl { url: url.into() },
            kind: ContentPartImageType::ImageUrl,
        }
    }
}

/// Where the reference image is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContentPartImageUrl {
    /// A `data:image/png|jpeg|webp;base64,...` URL or an http(s) URL.
    pub url: String,
}

string_enum! {
    /// The provider sorting strategy (price, throughput, latency).
    pub enum ProviderSortStrategy {
        Price = "price",
        Throughput = "throughput",
        Latency = "latency",
        Exacto = "exacto",
    }
}

string_enum! {
    /// Partitioning strategy for sorting.
    pub enum ProviderSortPartition {
        Model = "model",
        None = "none",
    }
}

/// The sorting strategy as an object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderSortConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<ProviderSortStrategy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<ProviderSortPartition>,
}

/// The sorting strategy to use for this request, if "order" is not specified (a strategy name or
/// a `{by, partition}` object). With one provider it changes nothing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ProviderSort {
    Strategy(ProviderSortStrategy),
    Config(ProviderSortConfig),
}

/// Provider routing preferences and provider-specific passthrough configuration. imago serves
/// every model through one provider, `local`: a request that excludes it is a 400.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageGenerationProviderPreferences {
    /// Whether to allow backup providers to serve requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_fallbacks: Option<bool>,
    /// Provider slugs to ignore (must not contain `local`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore: Option<Vec<String>>,
    /// Provider slugs to allow (must contain `local` when not empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub only: Option<Vec<String>>,
    /// Provider-specific options keyed by provider slug. `local` takes the keys of
    /// `LocalProviderOptions` (unknown keys are a 400); options for other slugs are ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<BTreeMap<String, Object>>)]
    pub options: Option<BTreeMap<String, BTreeMap<String, Value>>>,
    /// An ordered list of provider slugs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<Vec<String>>,
    /// The sorting strategy to use for this request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sort: Option<ProviderSort>,
}

string_enum! {
    /// How streamed partial images are decoded: `latent` (a cheap linear projection of the
    /// latents), `taesd` (the tiny autoencoder), `auto` (taesd when available, else latent).
    pub enum PreviewMode {
        Auto = "auto",
        Latent = "latent",
        Taesd = "taesd",
    }
}

/// The native knobs of the `local` provider, under `provider.options.local`. Documentation of
/// the accepted keys; validation reads them from the options object and names any unknown key.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LocalProviderOptions {
    /// Denoising steps (1 to the model's maximum); overrides `quality`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<u64>,
    /// Classifier-free guidance scale (finite, >= 0); guidance runs above 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance_scale: Option<f64>,
    /// What the image should not contain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_prompt: Option<String>,
    /// One of the model's schedulers (see the model listing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<String>,
    /// How much of the schedule image-to-image re-runs, in (0, 1]; needs an input reference.
    /// Default 0.8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strength: Option<f64>,
    /// Partial images streamed per image (0-3, default 2 when streaming).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial_images: Option<u8>,
    /// How partial images are decoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<PreviewMode>,
}

// ---------------------------------------------------------------------------------------------
// Response
// ---------------------------------------------------------------------------------------------

/// Image generation response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImageGenerationResponse {
    /// Unix timestamp (seconds) when the image was generated.
    pub created: u64,
    /// Generated images.
    pub data: Vec<ImageGenerationResponseData>,
    /// Token and cost usage for the image generation request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<ImageGenerationUsage>,
}

/// One generated image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImageGenerationResponseData {
    /// Base64-encoded image bytes.
    pub b64_json: String,
    /// Media type (MIME type) of the image, e.g. `image/png`, `image/jpeg`, `image/webp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// imago extension: the seed of this image's batch (image i of a batch with seed s is the
    /// i-th slice of the noise drawn from s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

impl ImageGenerationResponseData {
    pub fn new(b64_json: String, media_type: &str, seed: u64) -> Self {
        Self {
            b64_json,
            media_type: Some(media_type.to_string()),
            seed: Some(seed),
        }
    }
}

/// Token and cost usage for the image generation request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImageGenerationUsage {
    /// The tokens generated.
    pub completion_tokens: u64,
    /// Including images, input audio, and tools if any.
    pub prompt_tokens: u64,
    /// Sum of the above two fields.
    pub total_tokens: u64,
    /// Cost of the completion (always 0 on a self-hosted server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
}

impl ImageGenerationUsage {
    /// Usage with `total_tokens` = the sum and `cost` 0.
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Self {
            completion_tokens,
            prompt_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            cost: Some(0.0),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Stream events (`data:` of each SSE event; `event:` is the same `type`)
// ---------------------------------------------------------------------------------------------

/// One server-sent event of a streaming generation, discriminated by `type`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type")]
pub enum ImageStreamEvent {
    /// Emitted when a partial image becomes available during streaming generation.
    #[serde(rename = "image_generation.partial_image")]
    PartialImage(ImageGenPartialImageEvent),
    /// Emitted when generation completes and the final image is available.
    #[serde(rename = "image_generation.completed")]
    Completed(ImageGenCompletedEvent),
    /// Emitted when streaming generation fails after the SSE response starts.
    #[serde(rename = "error")]
    Error(ImageGenStreamErrorEvent),
}

impl ImageStreamEvent {
    pub const PARTIAL_IMAGE: &'static str = "image_generation.partial_image";
    pub const COMPLETED: &'static str = "image_generation.completed";
    pub const ERROR: &'static str = "error";

    /// The SSE `event:` name, equal to the `type` field of the data.
    pub fn event_name(&self) -> &'static str {
        match self {
            Self::PartialImage(_) => Self::PARTIAL_IMAGE,
            Self::Completed(_) => Self::COMPLETED,
            Self::Error(_) => Self::ERROR,
        }
    }
}

/// A partial image: the sampler's current estimate of the final image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImageGenPartialImageEvent {
    /// Base64-encoded partial image data.
    pub b64_json: String,
    /// 0-based index indicating which partial image this is in the sequence.
    pub partial_image_index: u32,
    /// imago extension: which image of the batch (0-based) this partial image belongs to.
    pub image_index: u32,
}

/// A finished image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImageGenCompletedEvent {
    /// Base64-encoded final image data.
    pub b64_json: String,
    /// Unix timestamp (seconds) when the image was generated.
    pub created: u64,
    /// Unix timestamp (seconds) when the event was created.
    pub created_at: u64,
    /// Media type (MIME type) of the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// Token and cost usage for the image generation request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<ImageGenerationUsage>,
    /// imago extension: which image of the batch (0-based) this is.
    pub image_index: u32,
    /// imago extension: the seed of the batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

/// The error of a failed stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImageGenStreamErrorEvent {
    pub error: ImageGenStreamErrorDetail,
}

impl ImageGenStreamErrorEvent {
    /// `code` is a string in this event (the SDK types it `str`), e.g. "500".
    pub fn new(message: impl Into<String>, code: impl Into<String>) -> Self {
        Self {
            error: ImageGenStreamErrorDetail {
                message: message.into(),
                code: Some(code.into()),
                param: None,
                kind: None,
            },
        }
    }
}

/// Provider error details.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImageGenStreamErrorDetail {
    /// Error message.
    pub message: String,
    /// Error code, as a string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Request parameter associated with the error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
    /// Error type.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Model listings
// ---------------------------------------------------------------------------------------------

/// List of image generation models.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImageModelsListResponse {
    pub data: Vec<ImageModelListItem>,
}

/// A single image model in the discovery listing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImageModelListItem {
    /// Model slug (the `model` of a request).
    pub id: String,
    /// Display name.
    pub name: String,
    pub description: String,
    /// Unix timestamp (seconds) of when the model was created.
    pub created: u64,
    pub architecture: ImageModelArchitecture,
    /// Supported request parameters with the values or ranges this model accepts.
    pub supported_parameters: BTreeMap<String, CapabilityDescriptor>,
    /// Whether `stream: true` is supported.
    pub supports_streaming: bool,
    /// Relative URL of the per-endpoint records for this model.
    pub endpoints: String,
}

string_enum! {
    /// An input modality.
    pub enum InputModality {
        Text = "text",
        Image = "image",
        File = "file",
        Audio = "audio",
        Video = "video",
    }
}

string_enum! {
    /// An output modality.
    pub enum OutputModality {
        Text = "text",
        Image = "image",
        Embeddings = "embeddings",
        Audio = "audio",
        Video = "video",
        Rerank = "rerank",
        Decisions = "decisions",
        Speech = "speech",
        Transcription = "transcription",
    }
}

/// What a model takes and produces.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImageModelArchitecture {
    /// Supported input modalities.
    pub input_modalities: Vec<InputModality>,
    /// Supported output modalities.
    pub output_modalities: Vec<OutputModality>,
}

impl ImageModelArchitecture {
    /// Text in (plus `image` when the model takes references), image out.
    pub fn text_to_image(takes_images: bool) -> Self {
        let mut input_modalities = vec![InputModality::Text];
        if takes_images {
            input_modalities.push(InputModality::Image);
        }
        Self {
            input_modalities,
            output_modalities: vec![OutputModality::Image],
        }
    }
}

/// A typed descriptor for one supported request parameter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum CapabilityDescriptor {
    /// A parameter that accepts one of a discrete set of string values.
    Enum { values: Vec<String> },
    /// A parameter that accepts any value within an inclusive numeric range.
    Range { min: f64, max: f64 },
    /// A supported-or-not flag. Present means the parameter is accepted.
    Boolean,
}

impl CapabilityDescriptor {
    pub fn values<I, S>(values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::Enum {
            values: values.into_iter().map(Into::into).collect(),
        }
    }

    pub fn range(min: f64, max: f64) -> Self {
        Self::Range { min, max }
    }
}

/// The full per-endpoint records for an image model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImageModelEndpointsResponse {
    /// Model slug.
    pub id: String,
    pub endpoints: Vec<ImageEndpoint>,
}

/// An endpoint that serves a given image model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImageEndpoint {
    /// Provider-specific options accepted under provider.options[provider_slug].
    pub allowed_passthrough_parameters: Vec<String>,
    /// Billable pricing lines for this endpoint.
    pub pricing: Vec<ImagePricingEntry>,
    /// Provider display name.
    pub provider_name: String,
    /// Provider slug.
    pub provider_slug: String,
    /// Provider tag for request-side selection (required, may be null).
    #[schema(required = true)]
    pub provider_tag: Option<String>,
    pub supported_parameters: BTreeMap<String, CapabilityDescriptor>,
    /// Whether this endpoint supports `stream: true`.
    pub supports_streaming: bool,
}

string_enum! {
    /// What a pricing line bills.
    pub enum PricingBillable {
        OutputImage = "output_image",
        InputImage = "input_image",
        InputFont = "input_font",
        InputReference = "input_reference",
        InputText = "input_text",
    }
}

string_enum! {
    /// The unit a pricing line is billed in.
    pub enum PricingUnit {
        Request = "request",
        Image = "image",
        Megapixel = "megapixel",
        Token = "token",
    }
}

/// One billable pricing line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImagePricingEntry {
    pub billable: PricingBillable,
    pub cost_usd: f64,
    pub unit: PricingUnit,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl ImagePricingEntry {
    /// A free output image (a self-hosted server bills nothing).
    pub fn free_output_image() -> Self {
        Self {
            billable: PricingBillable::OutputImage,
            cost_usd: 0.0,
            unit: PricingUnit::Image,
            variant: None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// The OpenRouter error envelope: `{"error":{"code":<http status>,"message":...,"metadata":{...}}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorResponse {
    pub error: ErrorResponseBody,
}

/// Error details.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorResponseBody {
    /// The HTTP status code.
    pub code: u16,
    pub message: String,
    /// Extra details, e.g. `{"field": "n"}` for a 400.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Map<String, Value>>,
}

impl ErrorResponse {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            error: ErrorResponseBody {
                code: status,
                message: message.into(),
                metadata: None,
            },
        }
    }

    /// A 400 whose metadata names the offending field.
    pub fn invalid_field(field: &str, message: impl Into<String>) -> Self {
        let mut metadata = serde_json::Map::new();
        metadata.insert("field".into(), Value::String(field.to_string()));
        Self {
            error: ErrorResponseBody {
                code: 400,
                message: message.into(),
                metadata: Some(metadata),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::super::test_support::{assert_integers, assert_keys};
    use super::*;

    fn to_value<T: Serialize>(v: &T) -> Value {
        serde_json::to_value(v).expect("serialises")
    }

    /// Required keys of the SDK's `ImageGenerationUsage`: three integers.
    fn assert_usage(usage: &Value) {
        assert_keys(
            usage,
            "usage",
            &["prompt_tokens", "completion_tokens", "total_tokens"],
        );
        assert_integers(
            usage,
            "usage",
            &["prompt_tokens", "completion_tokens", "total_tokens"],
        );
    }

    #[test]
    fn response_has_the_sdk_required_keys() {
        let response = ImageGenerationResponse {
            created: 1_700_000_000,
            data: vec![ImageGenerationResponseData::new(
                "aGk=".into(),
                "image/png",
                42,
            )],
            usage: Some(ImageGenerationUsage::new(7, 1)),
        };
        let v = to_value(&response);
        assert_keys(&v, "response", &["created", "data", "usage"]);
        assert_integers(&v, "response", &["created"]);
        assert_keys(
            &v["data"][0],
            "data[0]",
            &["b64_json", "media_type", "seed"],
        );
        assert_eq!(v["data"][0]["media_type"], "image/png");
        assert_usage(&v["usage"]);
        assert_eq!(v["usage"]["total_tokens"], 8);
        assert_eq!(v["usage"]["cost"], 0.0);
        let back: ImageGenerationResponse = serde_json::from_value(v).expect("round trip");
        assert_eq!(back, response);
    }

    #[test]
    fn stream_events_have_their_type_and_required_keys() {
        let partial = ImageStreamEvent::PartialImage(ImageGenPartialImageEvent {
            b64_json: "aGk=".into(),
            partial_image_index: 1,
            image_index: 2,
        });
        let v = to_value(&partial);
        assert_eq!(v["type"], "image_generation.partial_image");
        assert_eq!(partial.event_name(), "image_generation.partial_image");
        assert_keys(
            &v,
            "partial",
            &["type", "b64_json", "partial_image_index", "image_index"],
        );
        assert_integers(&v, "partial", &["partial_image_index", "image_index"]);

        let completed = ImageStreamEvent::Completed(ImageGenCompletedEvent {
            b64_json: "aGk=".into(),
            created: 1_700_000_000,
            created_at: 1_700_000_001,
            media_type: Some("image/webp".into()),
            usage: Some(ImageGenerationUsage::new(3, 1)),
            image_index: 0,
            seed: Some(9),
        });
        let v = to_value(&completed);
        assert_eq!(v["type"], "image_generation.completed");
        assert_eq!(completed.event_name(), v["type"]);
        assert_keys(
            &v,
            "completed",
            &[
                "type",
                "b64_json",
                "created",
                "created_at",
                "media_type",
                "usage",
                "image_index",
            ],
        );
        assert_integers(&v, "completed", &["created", "created_at", "image_index"]);
        assert_usage(&v["usage"]);

        let error = ImageStreamEvent::Error(ImageGenStreamErrorEvent::new("engine failed", "500"));
        let v = to_value(&error);
        assert_eq!(
            v,
            json!({"type": "error", "error": {"message": "engine failed", "code": "500"}})
        );
        assert_eq!(error.event_name(), "error");

        for event in [partial, completed, error] {
            let back: ImageStreamEvent =
                serde_json::from_value(to_value(&event)).expect("round trip");
            assert_eq!(back, event);
        }
    }

    #[test]
    fn model_listing_has_the_sdk_required_keys() {
        let mut params = BTreeMap::new();
        params.insert(
            "aspect_ratio".to_string(),
            CapabilityDescriptor::values(["1:1", "16:9"]),
        );
        params.insert("n".to_string(), CapabilityDescriptor::range(1.0, 10.0));
        params.insert("stream".to_string(), CapabilityDescriptor::Boolean);
        let list = ImageModelsListResponse {
            data: vec![ImageModelListItem {
                id: "stabilityai/sdxl-turbo".into(),
                name: "SDXL-Turbo".into(),
                description: "fast".into(),
                created: 1_700_000_000,
                architecture: ImageModelArchitecture::text_to_image(true),
                supported_parameters: params.clone(),
                supports_streaming: true,
                endpoints: "/api/v1/images/models/stabilityai/sdxl-turbo/endpoints".into(),
            }],
        };
        let v = to_value(&list);
        assert_keys(&v, "list", &["data"]);
        let item = &v["data"][0];
        assert_keys(
            item,
            "item",
            &[
                "id",
                "name",
                "description",
                "created",
                "architecture",
                "supported_parameters",
                "supports_streaming",
                "endpoints",
            ],
        );
        assert_eq!(
            item["architecture"],
            json!({"input_modalities": ["text", "image"], "output_modalities": ["image"]})
        );
        assert_eq!(
            item["supported_parameters"],
            json!({
                "aspect_ratio": {"type": "enum", "values": ["1:1", "16:9"]},
                "n": {"type": "range", "min": 1.0, "max": 10.0},
                "stream": {"type": "boolean"},
            })
        );

        let endpoints = ImageModelEndpointsResponse {
            id: "stabilityai/sdxl-turbo".into(),
            endpoints: vec![ImageEndpoint {
                allowed_passthrough_parameters: vec!["steps".into()],
                pricing: vec![ImagePricingEntry::free_output_image()],
                provider_name: "imago (local)".into(),
                provider_slug: "local".into(),
                provider_tag: None,
                supported_parameters: params,
                supports_streaming: true,
            }],
        };
        let v = to_value(&endpoints);
        assert_keys(&v, "endpoints response", &["id", "endpoints"]);
        assert_keys(
            &v["endpoints"][0],
            "endpoint",
            &[
                "allowed_passthrough_parameters",
                "pricing",
                "provider_name",
                "provider_slug",
                "provider_tag",
                "supported_parameters",
                "supports_streaming",
            ],
        );
        assert!(v["endpoints"][0]["provider_tag"].is_null());
        assert_eq!(
            v["endpoints"][0]["pricing"][0],
            json!({"billable": "output_image", "cost_usd": 0.0, "unit": "image"})
        );
    }

    #[test]
    fn error_envelope() {
        let v = to_value(&ErrorResponse::invalid_field(
            "n",
            "n: must be between 1 and 10, got 0",
        ));
        assert_eq!(
            v,
            json!({"error": {"code": 400, "message": "n: must be between 1 and 10, got 0",
                             "metadata": {"field": "n"}}})
        );
        let v = to_value(&ErrorResponse::new(404, "unknown model"));
        assert_eq!(
            v,
            json!({"error": {"code": 404, "message": "unknown model"}})
        );
    }

    #[test]
    fn request_enums_cover_the_sdk_values() {
        let ratios: Vec<&str> = AspectRatio::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            ratios.join(" "),
            "1:1 1:2 1:4 1:8 2:1 2:3 2.35:1 3:2 3:4 4:1 4:3 4:5 5:2 5:4 5:7 7:5 8:1 9:16 16:9 \
             9:19.5 19.5:9 9:20 20:9 9:21 21:9 auto"
        );
        let tiers: Vec<&str> = Resolution::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(tiers, ["512", "768", "1K", "1.5K", "2K", "4K"]);
        let req: ImageGenerationRequest = serde_json::from_value(json!({
            "model": "m", "prompt": "p", "aspect_ratio": "9:19.5", "resolution": "1.5K",
            "provider": {"sort": "exacto", "options": {"local": {"steps": 2}, "openai": {"x": [1]}}},
            "input_references": [{"type": "image_url", "image_url": {"url": "https://a/b.png"}}]
        }))
        .expect("valid request");
        assert_eq!(req.aspect_ratio, Some(AspectRatio::R9x19_5));
        assert_eq!(req.resolution, Some(Resolution::R1_5K));
        let provider = req.provider.expect("provider");
        assert_eq!(
            provider.sort,
            Some(ProviderSort::Strategy(ProviderSortStrategy::Exacto))
        );
        assert_eq!(
            req.input_references.expect("refs")[0],
            ContentPartImage::new("https://a/b.png")
        );
    }
}
