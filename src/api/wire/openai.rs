//! OpenAI Images API wire types (`/v1/images/generations`, `/v1/models`), as the official
//! `openai` Python SDK defines them (`types/image_generate_params.py`, `images_response.py`,
//! `image_gen_*_event.py`, `model.py`). `seed` and `image_index` are imago extensions.
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

// ---------------------------------------------------------------------------------------------
// Request
// ---------------------------------------------------------------------------------------------

string_enum! {
    /// Background of the generated image; `transparent` needs png or webp and a model with alpha.
    pub enum Background {
        Transparent = "transparent",
        Opaque = "opaque",
        Auto = "auto",
    }
}

string_enum! {
    /// Computation spent planning the image (not supported by diffusion models: a 400).
    pub enum Complexity {
        Low = "low",
        Medium = "medium",
        High = "high",
    }
}

string_enum! {
    /// Content-moderation level (accepted; a local server applies no moderation).
    pub enum Moderation {
        Low = "low",
        Auto = "auto",
    }
}

string_enum! {
    /// The format of the returned images (`gif` and `svg` are rejected).
    pub enum OutputFormat {
        Png = "png",
        Webp = "webp",
        Jpeg = "jpeg",
        Gif = "gif",
        Svg = "svg",
    }
}

string_enum! {
    /// Quality: maps to the model's step count. `standard` and `hd` (DALL-E 3) map to medium and high.
    pub enum Quality {
        Low = "low",
        Medium = "medium",
        High = "high",
        Xhigh = "xhigh",
        Max = "max",
        Auto = "auto",
        Standard = "standard",
        Hd = "hd",
    }
}

string_enum! {
    /// How images are returned: only `b64_json` (imago hosts no files, `url` is a 400).
    pub enum ResponseFormat {
        Url = "url",
        B64Json = "b64_json",
    }
}

string_enum! {
    /// DALL-E 3 style (rejected: it cannot be honoured).
    pub enum Style {
        Vivid = "vivid",
        Natural = "natural",
    }
}

/// Request body of `POST /v1/images/generations`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageGenerateRequest {
    /// A text description of the desired image(s) (at most 32000 characters).
    pub prompt: String,
    /// The model to use (a served model id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Background of the generated image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub background: Option<Background>,
    /// Not supported (400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complexity: Option<Complexity>,
    /// GIF frames: not supported (400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_count: Option<i64>,
    /// GIF frame delay: not supported (400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_duration_ms: Option<i64>,
    /// Content-moderation level (accepted, no effect).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moderation: Option<Moderation>,
    /// The number of images to generate, 1-10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<i64>,
    /// Compression level (0-100) for webp and jpeg output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_compression: Option<i64>,
    /// Format of the returned images (png, webp, jpeg).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_format: Option<OutputFormat>,
    /// Partial images streamed per image (0-3, default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial_images: Option<i64>,
    /// Rendering quality.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<Quality>,
    /// Only `b64_json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    /// A stable identifier for an end user (takes precedence over `user`; kept for logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety_identifier: Option<String>,
    /// `WIDTHxHEIGHT` (each a multiple of the model's size step, within its limits) or `auto`
    /// (the model's native size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// Not supported (400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub style: Option<Style>,
    /// SVG authoring: not supported (400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub svg: Option<serde_json::Value>,
    /// Deprecated end-user identifier (kept for logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Stream partial and final images as server-sent events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
}

// ---------------------------------------------------------------------------------------------
// Response
// ---------------------------------------------------------------------------------------------

string_enum! {
    /// The background of the generated images.
    pub enum ResponseBackground {
        Transparent = "transparent",
        Opaque = "opaque",
    }
}

string_enum! {
    /// The format of the generated images.
    pub enum ResponseOutputFormat {
        Png = "png",
        Webp = "webp",
        Jpeg = "jpeg",
    }
}

string_enum! {
    /// The quality the images were generated at.
    pub enum ResponseQuality {
        Low = "low",
        Medium = "medium",
        High = "high",
        Xhigh = "xhigh",
        Max = "max",
    }
}

string_enum! {
    /// The requested quality, as stream events report it.
    pub enum EventQuality {
        Low = "low",
        Medium = "medium",
        High = "high",
        Xhigh = "xhigh",
        Max = "max",
        Auto = "auto",
    }
}

/// The response of the image generation endpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImagesResponse {
    /// The Unix timestamp (in seconds) of when the image was created.
    pub created: u64,
    /// The list of generated images.
    pub data: Vec<Image>,
    /// Token usage information.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// The background of the generated images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub background: Option<ResponseBackground>,
    /// The output format of the generated images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_format: Option<ResponseOutputFormat>,
    /// The quality of the generated images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<ResponseQuality>,
    /// The image dimensions as a `WIDTHxHEIGHT` string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
}

/// One generated image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Image {
    /// The base64-encoded image.
    pub b64_json: String,
    /// The revised prompt (never set: prompts are not rewritten).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revised_prompt: Option<String>,
    /// imago extension: the seed of the batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

impl Image {
    pub fn new(b64_json: String, seed: u64) -> Self {
        Self {
            b64_json,
            revised_prompt: None,
            seed: Some(seed),
        }
    }
}

/// Token usage of a generation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    /// The number of tokens (images and text) in the input prompt.
    pub input_tokens: u64,
    /// The input tokens detailed information.
    pub input_tokens_details: InputTokensDetails,
    /// The number of output tokens.
    pub output_tokens: u64,
    /// The total number of tokens.
    pub total_tokens: u64,
    /// The output token details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens_details: Option<OutputTokensDetails>,
}

impl Usage {
    /// Usage of a text prompt (plus `input_image_tokens` for references) producing
    /// `output_tokens` image tokens.
    pub fn new(input_text_tokens: u64, input_image_tokens: u64, output_tokens: u64) -> Self {
        let input_tokens = input_text_tokens + input_image_tokens;
        Self {
            input_tokens,
            input_tokens_details: InputTokensDetails {
                image_tokens: input_image_tokens,
                text_tokens: input_text_tokens,
            },
            output_tokens,
            total_tokens: input_tokens + output_tokens,
            output_tokens_details: Some(OutputTokensDetails {
                image_tokens: output_tokens,
                text_tokens: 0,
            }),
        }
    }
}

/// The input tokens detailed information.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InputTokensDetails {
    /// The number of image tokens in the input prompt.
    pub image_tokens: u64,
    /// The number of text tokens in the input prompt.
    pub text_tokens: u64,
}

/// The output token details.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OutputTokensDetails {
    /// The number of image output tokens.
    pub image_tokens: u64,
    /// The number of text output tokens.
    pub text_tokens: u64,
}

// ---------------------------------------------------------------------------------------------
// Stream events
// ---------------------------------------------------------------------------------------------

/// One server-sent event of a streaming generation, discriminated by `type`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type")]
pub enum ImageGenStreamEvent {
    /// Emitted when a partial image is available during streaming.
    #[serde(rename = "image_generation.partial_image")]
    PartialImage(ImageGenPartialImageEvent),
    /// Emitted when generation has completed and the final image is available.
    #[serde(rename = "image_generation.completed")]
    Completed(ImageGenCompletedEvent),
    /// A failure after the stream started (the SDK raises on a `data` with an `error` key).
    #[serde(rename = "error")]
    Error(ErrorResponse),
}

impl ImageGenStreamEvent {
    /// The SSE `event:` name, equal to the `type` field of the data.
    pub fn event_name(&self) -> &'static str {
        match self {
            Self::PartialImage(_) => "image_generation.partial_image",
            Self::Completed(_) => "image_generation.completed",
            Self::Error(_) => "error",
        }
    }
}

/// One server-sent event of a streaming edit (`/v1/images/edits`): the same payloads as a
/// generation under `image_edit.*` types.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type")]
pub enum ImageEditStreamEvent {
    /// Emitted when a partial image is available during streaming.
    #[serde(rename = "image_edit.partial_image")]
    PartialImage(ImageGenPartialImageEvent),
    /// Emitted when the edit has completed and the final image is available.
    #[serde(rename = "image_edit.completed")]
    Completed(ImageGenCompletedEvent),
    /// A failure after the stream started.
    #[serde(rename = "error")]
    Error(ErrorResponse),
}

impl ImageEditStreamEvent {
    /// The SSE `event:` name, equal to the `type` field of the data.
    pub fn event_name(&self) -> &'static str {
        match self {
            Self::PartialImage(_) => "image_edit.partial_image",
            Self::Completed(_) => "image_edit.completed",
            Self::Error(_) => "error",
        }
    }
}

/// A partial image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImageGenPartialImageEvent {
    /// Base64-encoded partial image data.
    pub b64_json: String,
    /// The background setting for the requested image.
    pub background: Background,
    /// The Unix timestamp when the event was created.
    pub created_at: u64,
    /// The output format for the requested image.
    pub output_format: ResponseOutputFormat,
    /// 0-based index for the partial image.
    pub partial_image_index: u32,
    /// The quality setting for the requested image.
    pub quality: EventQuality,
    /// The image dimensions as a `WIDTHxHEIGHT` string.
    pub size: String,
    /// imago extension: which image of the batch (0-based).
    pub image_index: u32,
}

/// A finished image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImageGenCompletedEvent {
    /// Base64-encoded image data.
    pub b64_json: String,
    /// The background setting for the generated image.
    pub background: Background,
    /// The Unix timestamp when the event was created.
    pub created_at: u64,
    /// The output format for the generated image.
    pub output_format: ResponseOutputFormat,
    /// The quality setting for the generated image.
    pub quality: EventQuality,
    /// The image dimensions as a `WIDTHxHEIGHT` string.
    pub size: String,
    /// Token usage of the generation.
    pub usage: EventUsage,
    /// imago extension: which image of the batch (0-based).
    pub image_index: u32,
    /// imago extension: the seed of the batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

/// Token usage as the completed event reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventUsage {
    pub input_tokens: u64,
    pub input_tokens_details: InputTokensDetails,
    pub output_tokens: u64,
    pub total_tokens: u64,
}

impl From<Usage> for EventUsage {
    fn from(u: Usage) -> Self {
        Self {
            input_tokens: u.input_tokens,
            input_tokens_details: u.input_tokens_details,
            output_tokens: u.output_tokens,
            total_tokens: u.total_tokens,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Models
// ---------------------------------------------------------------------------------------------

string_enum! {
    /// Always `model`.
    pub enum ModelObject {
        Model = "model",
    }
}

string_enum! {
    /// Always `list`.
    pub enum ListObject {
        List = "list",
    }
}

/// A served model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Model {
    /// The model identifier, used as `model` in requests.
    pub id: String,
    /// The object type, always "model".
    pub object: ModelObject,
    /// The Unix timestamp (in seconds) when the model was created.
    pub created: u64,
    /// The organization that owns the model.
    pub owned_by: String,
}

impl Model {
    pub fn new(id: impl Into<String>, created: u64, owned_by: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            object: ModelObject::Model,
            created,
            owned_by: owned_by.into(),
        }
    }
}

/// `GET /v1/models`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ModelList {
    /// Always "list".
    pub object: ListObject,
    pub data: Vec<Model>,
}

impl ModelList {
    pub fn new(data: Vec<Model>) -> Self {
        Self {
            object: ListObject::List,
            data,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// The OpenAI error envelope: `{"error":{"message","type","param","code"}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorResponse {
    pub error: ErrorObject,
}

/// Error details; `param` and `code` are always present, null when not applicable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorObject {
    pub message: String,
    /// E.g. `invalid_request_error`, `authentication_error`, `server_error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The request field at fault.
    #[schema(required = true)]
    pub param: Option<String>,
    /// A machine-readable code, e.g. `invalid_value`, `model_not_found`.
    #[schema(required = true)]
    pub code: Option<String>,
}

impl ErrorResponse {
    pub fn new(
        message: impl Into<String>,
        kind: impl Into<String>,
        param: Option<String>,
        code: Option<String>,
    ) -> Self {
        Self {
            error: ErrorObject {
                message: message.into(),
                kind: kind.into(),
                param,
                code,
            },
        }
    }

    /// A 400 naming the field.
    pub fn invalid_field(field: &str, message: impl Into<String>) -> Self {
        Self::new(
            message,
            "invalid_request_error",
            Some(field.to_string()),
            Some("invalid_value".to_string()),
        )
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

    fn assert_usage(usage: &Value) {
        assert_keys(
            usage,
            "usage",
            &[
                "input_tokens",
                "input_tokens_details",
                "output_tokens",
                "total_tokens",
            ],
        );
        assert_integers(
            usage,
            "usage",
            &["input_tokens", "output_tokens", "total_tokens"],
        );
        assert_keys(
            &usage["input_tokens_details"],
            "input_tokens_details",
            &["text_tokens", "image_tokens"],
        );
    }

    #[test]
    fn images_response_has_the_sdk_keys() {
        let response = ImagesResponse {
            created: 1_700_000_000,
            data: vec![Image::new("aGk=".into(), 5)],
            usage: Some(Usage::new(7, 0, 4096)),
            background: Some(ResponseBackground::Opaque),
            output_format: Some(ResponseOutputFormat::Png),
            quality: Some(ResponseQuality::Medium),
            size: Some("1024x1024".into()),
        };
        let v = to_value(&response);
        assert_keys(
            &v,
            "response",
            &[
                "created",
                "data",
                "usage",
                "background",
                "output_format",
                "quality",
                "size",
            ],
        );
        assert_keys(&v["data"][0], "data[0]", &["b64_json"]);
        assert_usage(&v["usage"]);
        assert_eq!(v["usage"]["total_tokens"], 4103);
        assert_eq!(
            (v["background"].as_str(), v["quality"].as_str()),
            (Some("opaque"), Some("medium"))
        );
        let back: ImagesResponse = serde_json::from_value(v).expect("round trip");
        assert_eq!(back, response);
    }

    #[test]
    fn stream_events_have_their_type_and_required_keys() {
        let partial = ImageGenStreamEvent::PartialImage(ImageGenPartialImageEvent {
            b64_json: "aGk=".into(),
            background: Background::Auto,
            created_at: 1_700_000_000,
            output_format: ResponseOutputFormat::Webp,
            partial_image_index: 0,
            quality: EventQuality::Auto,
            size: "512x512".into(),
            image_index: 0,
        });
        let v = to_value(&partial);
        assert_eq!(v["type"], "image_generation.partial_image");
        assert_eq!(partial.event_name(), v["type"]);
        assert_keys(
            &v,
            "partial",
            &[
                "type",
                "b64_json",
                "background",
                "created_at",
                "output_format",
                "partial_image_index",
                "quality",
                "size",
            ],
        );
        let completed = ImageGenStreamEvent::Completed(ImageGenCompletedEvent {
            b64_json: "aGk=".into(),
            background: Background::Opaque,
            created_at: 1_700_000_000,
            output_format: ResponseOutputFormat::Png,
            quality: EventQuality::High,
            size: "512x512".into(),
            usage: Usage::new(3, 0, 1024).into(),
            image_index: 1,
            seed: Some(3),
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
                "background",
                "created_at",
                "output_format",
                "quality",
                "size",
                "usage",
            ],
        );
        assert_usage(&v["usage"]);
        let error =
            ImageGenStreamEvent::Error(ErrorResponse::new("boom", "server_error", None, None));
        let v = to_value(&error);
        // The SDK raises on any stream data carrying an `error` object with a `message`.
        assert_eq!(
            v,
            json!({"type": "error", "error": {"message": "boom", "type": "server_error", "param": null, "code": null}})
        );
        for event in [partial, completed, error] {
            let back: ImageGenStreamEvent =
                serde_json::from_value(to_value(&event)).expect("round trip");
            assert_eq!(back, event);
        }
    }

    #[test]
    fn model_list_and_error_envelope() {
        let v = to_value(&ModelList::new(vec![Model::new(
            "stabilityai/sdxl-turbo",
            1_700_000_000,
            "stabilityai",
        )]));
        assert_eq!(
            v,
            json!({"object": "list", "data": [{"id": "stabilityai/sdxl-turbo", "object": "model",
                                                "created": 1_700_000_000u64, "owned_by": "stabilityai"}]})
        );
        let v = to_value(&ErrorResponse::invalid_field("size", "size: bad"));
        assert_eq!(
            v,
            json!({"error": {"message": "size: bad", "type": "invalid_request_error",
                             "param": "size", "code": "invalid_value"}})
        );
    }

    #[test]
    fn request_accepts_the_sdk_values() {
        let req: ImageGenerateRequest = serde_json::from_value(json!({
            "prompt": "p", "model": "m", "quality": "hd", "moderation": "low",
            "output_format": "webp", "background": "transparent", "response_format": "b64_json",
            "size": "1536x1024", "n": 2, "partial_images": 1, "stream": true,
            "safety_identifier": "s", "user": "u"
        }))
        .expect("valid request");
        assert_eq!(req.quality, Some(Quality::Hd));
        assert_eq!(req.background, Some(Background::Transparent));
        // An explicit null is the SDK's "not given".
        let req: ImageGenerateRequest =
            serde_json::from_value(json!({"prompt": "p", "size": null, "n": null})).expect("nulls");
        assert_eq!((req.size, req.n), (None, None));
    }
}
