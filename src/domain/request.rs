//! A generation request as the server understands it, whichever API shape it came in. Built only
//! by [`validate_openrouter`] and [`validate_openai`], which honour every field or reject it with
//! a [`FieldError`] naming the field (as a JSON path), the bound and the value.
use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use imago_models::pipeline::img2img_steps;
use imago_models::schedulers::SchedulerChoice;
use imago_models::specs::{Family, QualitySteps};
use serde_json::Value;

use crate::api::wire::{openai, openrouter};
use crate::domain::caps::ModelCaps;
use crate::domain::size::{resolve_openai_size, resolve_openrouter_size};

/// Used when a reference comes without a `strength`.
pub use imago_models::pipeline::DEFAULT_STRENGTH;
/// Partial images per image on `/api/v1` when streaming and `partial_images` is not given
/// (a streaming OpenRouter client expects previews). `/v1` defaults to 0, as OpenAI.
pub const DEFAULT_STREAM_PARTIAL_IMAGES: u8 = 2;
pub const MAX_PARTIAL_IMAGES: u8 = 3;
/// Reference images one request may carry on the wire (the model's own limit is usually lower).
pub const MAX_WIRE_REFERENCES: usize = 16;
/// Longest prompt, in characters (OpenAI's documented limit).
pub const MAX_PROMPT_CHARS: usize = 32_000;
/// Longest `session_id` (OpenRouter's documented limit).
pub const MAX_SESSION_ID_CHARS: usize = 256;
/// The provider slug of this server's own engine.
pub const LOCAL_PROVIDER: &str = "local";
/// Keys accepted under `provider.options.local`.
pub const LOCAL_OPTION_KEYS: [&str; 8] = [
    "steps",
    "guidance_scale",
    "negative_prompt",
    "scheduler",
    "strength",
    "partial_images",
    "preview",
    "max_sequence_length",
];
/// FLUX's T5 window, the engine's bound on `max_sequence_length`.
pub use imago_models::pipeline::MAX_SEQUENCE_LENGTH;

/// A request field that cannot be honoured.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FieldError {
    /// JSON path of the field, e.g. `provider.options.local.steps` or `input_references[0].image_url.url`.
    pub field: String,
    /// A sentence that starts with the field and says the bound and the value.
    pub message: String,
}

impl FieldError {
    /// `message` becomes "`field`: `detail`".
    pub fn new(field: impl Into<String>, detail: impl fmt::Display) -> Self {
        let field = field.into();
        let message = format!("{field}: {detail}");
        Self { field, message }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutputFormat {
    Png,
    Jpeg,
    Webp,
}

impl OutputFormat {
    pub fn media_type(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::Webp => "image/webp",
        }
    }

    /// File extension, also the wire name (`png`, `jpeg`, `webp`).
    pub fn extension(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpeg",
            Self::Webp => "webp",
        }
    }

    pub fn supports_alpha(self) -> bool {
        matches!(self, Self::Png | Self::Webp)
    }

    pub fn to_openai(self) -> openai::ResponseOutputFormat {
        match self {
            Self::Png => openai::ResponseOutputFormat::Png,
            Self::Jpeg => openai::ResponseOutputFormat::Jpeg,
            Self::Webp => openai::ResponseOutputFormat::Webp,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Background {
    Auto,
    Opaque,
    /// Only on models with `supports_transparent`, with png or webp.
    Transparent,
}

impl Background {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Opaque => "opaque",
            Self::Transparent => "transparent",
        }
    }

    /// As OpenAI's stream events report the requested setting.
    pub fn to_openai(self) -> openai::Background {
        match self {
            Self::Auto => openai::Background::Auto,
            Self::Opaque => openai::Background::Opaque,
            Self::Transparent => openai::Background::Transparent,
        }
    }

    /// As OpenAI's response reports what was produced (`auto` produces an opaque image).
    pub fn produced(self) -> openai::ResponseBackground {
        match self {
            Self::Transparent => openai::ResponseBackground::Transparent,
            Self::Auto | Self::Opaque => openai::ResponseBackground::Opaque,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum PreviewMode {
    #[default]
    Auto,
    Latent,
    Taesd,
}

impl PreviewMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Latent => "latent",
            Self::Taesd => "taesd",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [Self::Auto, Self::Latent, Self::Taesd]
            .into_iter()
            .find(|mode| mode.as_str() == text)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Quality {
    Auto,
    Low,
    Medium,
    High,
    Xhigh,
    Max,
}

impl Quality {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
            Self::Xhigh => "xhigh",
            Self::Max => "max",
        }
    }

    /// The model's step count for this quality.
    pub fn steps(self, table: &QualitySteps) -> usize {
        match self {
            Self::Auto => table.auto,
            Self::Low => table.low,
            Self::Medium => table.medium,
            Self::High => table.high,
            Self::Xhigh => table.xhigh,
            Self::Max => table.max,
        }
    }

    /// As OpenAI's stream events report the requested quality.
    pub fn to_openai_event(self) -> openai::EventQuality {
        match self {
            Self::Auto => openai::EventQuality::Auto,
            Self::Low => openai::EventQuality::Low,
            Self::Medium => openai::EventQuality::Medium,
            Self::High => openai::EventQuality::High,
            Self::Xhigh => openai::EventQuality::Xhigh,
            Self::Max => openai::EventQuality::Max,
        }
    }

    fn from_openrouter(q: openrouter::Quality) -> Self {
        match q {
            openrouter::Quality::Auto => Self::Auto,
            openrouter::Quality::Low => Self::Low,
            openrouter::Quality::Medium => Self::Medium,
            openrouter::Quality::High => Self::High,
            openrouter::Quality::Xhigh => Self::Xhigh,
            openrouter::Quality::Max => Self::Max,
        }
    }

    /// DALL-E 3's `standard` and `hd` map to medium and high.
    fn from_openai(q: openai::Quality) -> Self {
        match q {
            openai::Quality::Auto => Self::Auto,
            openai::Quality::Low => Self::Low,
            openai::Quality::Medium | openai::Quality::Standard => Self::Medium,
            openai::Quality::High | openai::Quality::Hd => Self::High,
            openai::Quality::Xhigh => Self::Xhigh,
            openai::Quality::Max => Self::Max,
        }
    }
}

/// Where an input reference image comes from; fetching and decoding happen in `imaging`.
#[derive(Clone, PartialEq, Eq)]
pub enum ReferenceSource {
    /// A base64 `data:` URL, decoded; `media_type` is `image/png`, `image/jpeg` or `image/webp`.
    DataUrl { media_type: String, bytes: Vec<u8> },
    /// An `http://` or `https://` URL, to be fetched under the SSRF rules.
    Url(String),
}

impl fmt::Debug for ReferenceSource {
    // The bytes can be megabytes: show their length only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DataUrl { media_type, bytes } => f
                .debug_struct("DataUrl")
                .field("media_type", media_type)
                .field("bytes", &bytes.len())
                .finish(),
            Self::Url(url) => f.debug_tuple("Url").field(url).finish(),
        }
    }
}

/// A request every part of which the server can honour.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidatedRequest {
    /// The model's canonical id (`caps.id`).
    pub model: String,
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub width: usize,
    pub height: usize,
    pub n: usize,
    /// `None`: drawn by the server and reported.
    pub seed: Option<u64>,
    pub steps: usize,
    pub guidance_scale: f64,
    pub scheduler: Option<SchedulerChoice>,
    /// FLUX: T5 tokens the prompt is padded to; `None` takes the model's default.
    pub max_sequence_length: Option<usize>,
    pub reference: Option<ReferenceSource>,
    /// img2img strength in (0, 1]; meaningful only with a reference (default 0.8).
    pub strength: f64,
    pub output_format: OutputFormat,
    /// 0-100 for jpeg/webp; kept but unused for png.
    pub output_compression: Option<u8>,
    pub background: Background,
    /// The quality the client asked for, if any (steps are already resolved).
    pub quality: Option<Quality>,
    pub stream: bool,
    /// Partial images per image when streaming (0-3).
    pub partial_images: u8,
    pub preview: PreviewMode,
    /// End-user id, for logs only.
    pub user: Option<String>,
}

impl ValidatedRequest {
    /// "WIDTHxHEIGHT", as OpenAI's `size` fields report it.
    pub fn size(&self) -> String {
        format!("{}x{}", self.width, self.height)
    }
}

// ---------------------------------------------------------------------------------------------
// OpenRouter
// ---------------------------------------------------------------------------------------------

/// Validates an OpenRouter `ImageGenerationRequest` for the model `caps` (looked up beforehand).
pub fn validate_openrouter(
    req: &openrouter::ImageGenerationRequest,
    caps: &ModelCaps,
) -> Result<ValidatedRequest, FieldError> {
    check_prompt("prompt", &req.prompt)?;
    let (width, height) =
        resolve_openrouter_size(req.size.as_deref(), req.resolution, req.aspect_ratio, caps)?;
    let n = check_n(req.n, caps)?;
    let seed = req.seed.as_ref().map(check_seed).transpose()?;
    let output_format = match req.output_format {
        None | Some(openrouter::OutputFormat::Png) => OutputFormat::Png,
        Some(openrouter::OutputFormat::Jpeg) => OutputFormat::Jpeg,
        Some(openrouter::OutputFormat::Webp) => OutputFormat::Webp,
        Some(openrouter::OutputFormat::Svg) => {
            return Err(FieldError::new(
                "output_format",
                format!(
                    "\"svg\" needs a vectorization model; {} is a raster model (png, jpeg or webp)",
                    caps.id
                ),
            ))
        }
    };
    let output_compression = check_compression(req.output_compression)?;
    let background = check_background(
        req.background.map(|b| match b {
            openrouter::Background::Auto => Background::Auto,
            openrouter::Background::Opaque => Background::Opaque,
            openrouter::Background::Transparent => Background::Transparent,
        }),
        output_format,
        caps,
    )?;
    if let Some(session_id) = &req.session_id {
        let chars = session_id.chars().count();
        if chars > MAX_SESSION_ID_CHARS {
            return Err(FieldError::new(
                "session_id",
                format!("must be at most {MAX_SESSION_ID_CHARS} characters, got {chars}"),
            ));
        }
    }
    let reference = check_references(req.input_references.as_deref(), caps)?;
    let local = match &req.provider {
        Some(provider) => check_provider(provider, caps)?,
        None => LocalOptions::default(),
    };
    let stream = req.stream.unwrap_or(false);
    let quality = req.quality.map(Quality::from_openrouter);

    if local.strength.is_some() && reference.is_none() {
        return Err(FieldError::new(
            "provider.options.local.strength",
            "needs an input reference (input_references); strength only applies to image-to-image",
        ));
    }
    if local.preview == Some(PreviewMode::Taesd) && !caps.preview_decoder {
        return Err(FieldError::new(
            "provider.options.local.preview",
            format!(
                "\"taesd\" needs a tiny autoencoder, and none is configured for {} (start the server with --preview-decoder); use \"auto\" or \"latent\"",
                caps.id
            ),
        ));
    }
    let strength = local.strength.unwrap_or(DEFAULT_STRENGTH);
    let mut steps = local.steps.unwrap_or_else(|| default_steps(quality, caps));
    if reference.is_some() {
        steps = check_img2img_steps(steps, strength, &local, caps)?;
    }
    let default_partials = if stream {
        DEFAULT_STREAM_PARTIAL_IMAGES
    } else {
        0
    };

    Ok(ValidatedRequest {
        model: caps.id.clone(),
        prompt: req.prompt.clone(),
        negative_prompt: local.negative_prompt,
        width,
        height,
        n,
        seed,
        steps,
        guidance_scale: local.guidance_scale.unwrap_or(caps.default_guidance),
        scheduler: local.scheduler,
        max_sequence_length: local.max_sequence_length,
        reference,
        strength,
        output_format,
        output_compression,
        background,
        quality,
        stream,
        partial_images: local.partial_images.unwrap_or(default_partials),
        preview: local.preview.unwrap_or_default(),
        user: req.user.clone(),
    })
}

/// What `provider.options.local` asked for.
#[derive(Default)]
struct LocalOptions {
    steps: Option<usize>,
    guidance_scale: Option<f64>,
    negative_prompt: Option<String>,
    scheduler: Option<SchedulerChoice>,
    strength: Option<f64>,
    partial_images: Option<u8>,
    preview: Option<PreviewMode>,
    max_sequence_length: Option<usize>,
}

/// The local provider's options. Routing (`only`, `ignore`, `order`, `allow_fallbacks`, `sort`) was
/// decided before validation by `providers::routing`, which chose `local` for this request.
fn check_provider(
    provider: &openrouter::ImageGenerationProviderPreferences,
    caps: &ModelCaps,
) -> Result<LocalOptions, FieldError> {
    match provider
        .options
        .as_ref()
        .and_then(|options| options.get(LOCAL_PROVIDER))
    {
        Some(local) => parse_local_options(local, caps),
        None => Ok(LocalOptions::default()),
    }
}

fn parse_local_options(
    options: &BTreeMap<String, Value>,
    caps: &ModelCaps,
) -> Result<LocalOptions, FieldError> {
    const PREFIX: &str = "provider.options.local";
    let mut out = LocalOptions::default();
    for (key, value) in options {
        let field = format!("{PREFIX}.{key}");
        if value.is_null() && LOCAL_OPTION_KEYS.contains(&key.as_str()) {
            continue;
        }
        match key.as_str() {
            "steps" => {
                let steps = value
                    .as_u64()
                    .filter(|s| (1..=caps.max_steps as u64).contains(s))
                    .ok_or_else(|| {
                        FieldError::new(
                            &field,
                            format!(
                                "must be an integer between 1 and {} for model {}, got {value}",
                                caps.max_steps, caps.id
                            ),
                        )
                    })?;
                out.steps = Some(steps as usize);
            }
            "guidance_scale" => {
                let g = value
                    .as_f64()
                    .filter(|g| g.is_finite() && *g >= 0.0)
                    .ok_or_else(|| {
                        FieldError::new(
                            &field,
                            format!("must be a finite number >= 0, got {value}"),
                        )
                    })?;
                out.guidance_scale = Some(g);
            }
            "negative_prompt" => {
                let text = value.as_str().ok_or_else(|| {
                    FieldError::new(&field, format!("must be a string, got {value}"))
                })?;
                check_prompt(&field, text)?;
                if caps.family == Family::Flux {
                    return Err(FieldError::new(
                        &field,
                        format!(
                            "model {} is a FLUX model: it takes no negative prompt (one conditional pass per step)",
                            caps.id
                        ),
                    ));
                }
                out.negative_prompt = Some(text.to_string());
            }
            "scheduler" => {
                let name = value.as_str().ok_or_else(|| {
                    FieldError::new(&field, format!("must be a string, got {value}"))
                })?;
                out.scheduler = Some(check_scheduler(&field, name, caps)?);
            }
            "strength" => {
                let s = value
                    .as_f64()
                    .filter(|s| *s > 0.0 && *s <= 1.0)
                    .ok_or_else(|| {
                        FieldError::new(&field, format!("must be a number in (0, 1], got {value}"))
                    })?;
                out.strength = Some(s);
            }
            "partial_images" => {
                out.partial_images = Some(check_partial_images(&field, value.as_i64(), value)?);
            }
            "max_sequence_length" => {
                if caps.family != Family::Flux {
                    return Err(FieldError::new(
                        &field,
                        format!(
                            "applies to FLUX models (T5 tokens) only; model {} is {}",
                            caps.id,
                            caps.family.as_str()
                        ),
                    ));
                }
                let len = value
                    .as_u64()
                    .filter(|l| (1..=MAX_SEQUENCE_LENGTH as u64).contains(l))
                    .ok_or_else(|| {
                        FieldError::new(
                            &field,
                            format!(
                                "must be an integer between 1 and {MAX_SEQUENCE_LENGTH}, got {value}"
                            ),
                        )
                    })?;
                out.max_sequence_length = Some(len as usize);
            }
            "preview" => {
                out.preview =
                    Some(value.as_str().and_then(PreviewMode::parse).ok_or_else(|| {
                        FieldError::new(
                            &field,
                            format!("must be auto, latent or taesd, got {value}"),
                        )
                    })?);
            }
            _ => {
                return Err(FieldError::new(
                    &field,
                    format!(
                        "unknown option \"{key}\"; the local provider accepts {}",
                        LOCAL_OPTION_KEYS.join(", ")
                    ),
                ))
            }
        }
    }
    Ok(out)
}

fn check_scheduler(
    field: &str,
    name: &str,
    caps: &ModelCaps,
) -> Result<SchedulerChoice, FieldError> {
    if caps.schedulers.is_empty() {
        return Err(FieldError::new(
            field,
            format!(
                "model {} uses its own scheduler (FLUX: flow-matching Euler) and takes no scheduler option, got \"{name}\"",
                caps.id
            ),
        ));
    }
    let wrong = || {
        FieldError::new(
            field,
            format!(
                "must be one of {} for model {}, got \"{name}\"",
                caps.schedulers.join(", "),
                caps.id
            ),
        )
    };
    if !caps
        .schedulers
        .iter()
        .any(|s| s.eq_ignore_ascii_case(name.trim()))
    {
        return Err(wrong());
    }
    name.parse::<SchedulerChoice>().map_err(|_| wrong())
}

fn check_references(
    references: Option<&[openrouter::ContentPartImage]>,
    caps: &ModelCaps,
) -> Result<Option<ReferenceSource>, FieldError> {
    let Some(references) = references else {
        return Ok(None);
    };
    if references.len() > MAX_WIRE_REFERENCES {
        return Err(FieldError::new(
            "input_references",
            format!(
                "at most {MAX_WIRE_REFERENCES} references, got {}",
                references.len()
            ),
        ));
    }
    if references.len() > caps.max_references {
        return Err(FieldError::new(
            "input_references",
            format!(
                "model {} takes at most {} reference image(s), got {}",
                caps.id,
                caps.max_references,
                references.len()
            ),
        ));
    }
    let mut sources = references
        .iter()
        .enumerate()
        .map(|(i, part)| {
            parse_reference_url(
                &format!("input_references[{i}].image_url.url"),
                &part.image_url.url,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    // The local families condition on one image (max_references is at most 1 for them).
    Ok(if sources.is_empty() {
        None
    } else {
        Some(sources.swap_remove(0))
    })
}

/// Parses a reference URL: a base64 `data:` URL of a png, jpeg or webp image, or an http(s) URL.
pub fn parse_reference_url(field: &str, url: &str) -> Result<ReferenceSource, FieldError> {
    let lower_prefix = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower_prefix.starts_with("data:") {
        return parse_data_url(field, url);
    }
    if lower_prefix.starts_with("http://") || lower_prefix.starts_with("https://") {
        let rest = &url[url.find("://").map_or(0, |i| i + 3)..];
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let host = authority.rsplit('@').next().unwrap_or_default();
        if host.is_empty() || url.chars().any(char::is_whitespace) {
            return Err(FieldError::new(
                field,
                format!(
                    "is not a valid http(s) URL (no host or whitespace): \"{}\"",
                    clip(url)
                ),
            ));
        }
        return Ok(ReferenceSource::Url(url.to_string()));
    }
    Err(FieldError::new(
        field,
        format!(
            "must be a data: URL (base64 image/png, image/jpeg or image/webp) or an http(s) URL, got \"{}\"",
            clip(url)
        ),
    ))
}

fn parse_data_url(field: &str, url: &str) -> Result<ReferenceSource, FieldError> {
    let bad = |why: String| FieldError::new(field, format!("{why} (got \"{}\")", clip(url)));
    let Some((header, payload)) = url[5..].split_once(',') else {
        return Err(bad("data URL has no ',' before its data".into()));
    };
    let mut parts = header.split(';');
    let media_type = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    let base64 = parts.any(|p| p.trim().eq_ignore_ascii_case("base64"));
    let media_type = match media_type.as_str() {
        "image/png" | "image/jpeg" | "image/webp" => media_type,
        "image/jpg" => "image/jpeg".to_string(),
        other => {
            return Err(bad(format!(
                "data URL media type must be image/png, image/jpeg or image/webp, got \"{other}\""
            )))
        }
    };
    if !base64 {
        return Err(bad("data URL must be base64-encoded (\";base64,\")".into()));
    }
    let compact: String = payload
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|e| bad(format!("data URL payload is not valid base64: {e}")))?;
    if bytes.is_empty() {
        return Err(bad("data URL has no image data".into()));
    }
    Ok(ReferenceSource::DataUrl { media_type, bytes })
}

/// At most 80 characters of a value, for messages (data URLs can be megabytes).
fn clip(text: &str) -> String {
    const MAX: usize = 80;
    if text.chars().count() <= MAX {
        text.to_string()
    } else {
        let head: String = text.chars().take(MAX).collect();
        format!("{head}...")
    }
}

/// img2img runs `int(steps * strength)` steps and needs one. Steps that came from the quality
/// table (not from the client) are raised to the fewest that run one step; explicit steps are a 400.
fn check_img2img_steps(
    steps: usize,
    strength: f64,
    local: &LocalOptions,
    caps: &ModelCaps,
) -> Result<usize, FieldError> {
    // FLUX's img2img keeps the fractional part of steps x strength: it always runs a step.
    if caps.family == Family::Flux || img2img_steps(steps, strength) >= 1 {
        return Ok(steps);
    }
    if local.steps.is_none() {
        if let Some(raised) = (steps..=caps.max_steps).find(|&s| img2img_steps(s, strength) >= 1) {
            return Ok(raised);
        }
    }
    let field = if local.strength.is_some() {
        "provider.options.local.strength"
    } else {
        "provider.options.local.steps"
    };
    Err(FieldError::new(
        field,
        format!(
            "strength {strength} with {steps} steps runs int({steps} x {strength}) = 0 denoising steps; \
             raise steps (at most {}) or strength",
            caps.max_steps
        ),
    ))
}

// ---------------------------------------------------------------------------------------------
// OpenAI
// ---------------------------------------------------------------------------------------------

/// Validates an OpenAI `ImageGenerateRequest` for the model `caps` (looked up beforehand).
pub fn validate_openai(
    req: &openai::ImageGenerateRequest,
    caps: &ModelCaps,
) -> Result<ValidatedRequest, FieldError> {
    check_prompt("prompt", &req.prompt)?;
    let unsupported = |field: &str, why: &str| Err(FieldError::new(field, why));
    if let Some(complexity) = req.complexity {
        return unsupported(
            "complexity",
            &format!("\"{complexity}\" cannot be honoured: diffusion models have no planning stage; leave it out"),
        );
    }
    if let Some(style) = req.style {
        return unsupported(
            "style",
            &format!("\"{style}\" is a DALL-E 3 setting that diffusion models cannot honour; describe the style in the prompt"),
        );
    }
    if req.svg.as_ref().is_some_and(|v| !v.is_null()) {
        return unsupported(
            "svg",
            "SVG output is not supported: the served models are raster models",
        );
    }
    if let Some(frames) = req.frame_count {
        return unsupported(
            "frame_count",
            &format!("GIF output is not supported, got {frames}"),
        );
    }
    if let Some(ms) = req.frame_duration_ms {
        return unsupported(
            "frame_duration_ms",
            &format!("GIF output is not supported, got {ms}"),
        );
    }
    if req.response_format == Some(openai::ResponseFormat::Url) {
        return unsupported(
            "response_format",
            "\"url\" is not supported (this server hosts no files); use \"b64_json\"",
        );
    }
    // `moderation` (low|auto) is accepted: a local server applies no moderation either way.
    let (width, height) = resolve_openai_size(req.size.as_deref(), caps)?;
    let n = check_n(req.n, caps)?;
    let output_format = match req.output_format {
        None | Some(openai::OutputFormat::Png) => OutputFormat::Png,
        Some(openai::OutputFormat::Jpeg) => OutputFormat::Jpeg,
        Some(openai::OutputFormat::Webp) => OutputFormat::Webp,
        Some(other) => {
            return Err(FieldError::new(
                "output_format",
                format!(
                    "\"{other}\" is not supported; {} produces png, jpeg or webp",
                    caps.id
                ),
            ))
        }
    };
    let output_compression = check_compression(req.output_compression)?;
    let background = check_background(
        req.background.map(|b| match b {
            openai::Background::Auto => Background::Auto,
            openai::Background::Opaque => Background::Opaque,
            openai::Background::Transparent => Background::Transparent,
        }),
        output_format,
        caps,
    )?;
    let partial_images = match req.partial_images {
        None => 0,
        Some(p) => check_partial_images("partial_images", Some(p), &Value::from(p))?,
    };
    let quality = req.quality.map(Quality::from_openai);
    let user = req
        .safety_identifier
        .clone()
        .filter(|s| !s.is_empty())
        .or_else(|| req.user.clone());

    Ok(ValidatedRequest {
        model: caps.id.clone(),
        prompt: req.prompt.clone(),
        negative_prompt: None,
        width,
        height,
        n,
        seed: None,
        steps: default_steps(quality, caps),
        guidance_scale: caps.default_guidance,
        scheduler: None,
        max_sequence_length: None,
        reference: None,
        strength: DEFAULT_STRENGTH,
        output_format,
        output_compression,
        background,
        quality,
        stream: req.stream.unwrap_or(false),
        partial_images,
        preview: PreviewMode::Auto,
        user,
    })
}

/// Turns a validated OpenAI request into an edit of `reference` (`/v1/images/edits`): image-to-image
/// with `strength`; steps from the quality table are raised so that at least one step runs.
pub fn with_reference(
    mut request: ValidatedRequest,
    reference: ReferenceSource,
    strength: f64,
    caps: &ModelCaps,
) -> Result<ValidatedRequest, FieldError> {
    if !(strength > 0.0 && strength <= 1.0) {
        return Err(FieldError::new(
            "strength",
            format!("must be in (0, 1], got {strength}"),
        ));
    }
    request.steps = check_img2img_steps(request.steps, strength, &LocalOptions::default(), caps)?;
    request.reference = Some(reference);
    request.strength = strength;
    Ok(request)
}

// ---------------------------------------------------------------------------------------------
// Shared rules
// ---------------------------------------------------------------------------------------------

fn check_prompt(field: &str, prompt: &str) -> Result<(), FieldError> {
    if field == "prompt" && prompt.is_empty() {
        return Err(FieldError::new(
            field,
            "must be at least 1 character, got \"\"",
        ));
    }
    let chars = prompt.chars().count();
    if chars > MAX_PROMPT_CHARS {
        return Err(FieldError::new(
            field,
            format!("must be at most {MAX_PROMPT_CHARS} characters, got {chars}"),
        ));
    }
    Ok(())
}

fn check_n(n: Option<i64>, caps: &ModelCaps) -> Result<usize, FieldError> {
    let Some(n) = n else { return Ok(1) };
    if n < 1 || n > caps.max_n as i64 {
        return Err(FieldError::new(
            "n",
            format!(
                "must be between 1 and {} for model {}, got {n}",
                caps.max_n, caps.id
            ),
        ));
    }
    Ok(n as usize)
}

fn check_seed(seed: &serde_json::Number) -> Result<u64, FieldError> {
    seed.as_u64().ok_or_else(|| {
        FieldError::new(
            "seed",
            format!("must be an integer between 0 and {}, got {seed}", u64::MAX),
        )
    })
}

fn check_compression(compression: Option<i64>) -> Result<Option<u8>, FieldError> {
    match compression {
        None => Ok(None),
        Some(c @ 0..=100) => Ok(Some(c as u8)),
        Some(c) => Err(FieldError::new(
            "output_compression",
            format!("must be between 0 and 100, got {c}"),
        )),
    }
}

fn check_partial_images(field: &str, value: Option<i64>, raw: &Value) -> Result<u8, FieldError> {
    match value {
        Some(p @ 0..=3) => Ok(p as u8),
        _ => Err(FieldError::new(
            field,
            format!("must be an integer between 0 and {MAX_PARTIAL_IMAGES}, got {raw}"),
        )),
    }
}

fn check_background(
    background: Option<Background>,
    format: OutputFormat,
    caps: &ModelCaps,
) -> Result<Background, FieldError> {
    let background = background.unwrap_or(Background::Auto);
    if background == Background::Transparent {
        if !format.supports_alpha() {
            return Err(FieldError::new(
                "background",
                format!(
                    "\"transparent\" needs output_format png or webp, got {}",
                    format.extension()
                ),
            ));
        }
        if !caps.supports_transparent {
            return Err(FieldError::new(
                "background",
                format!(
                    "\"transparent\" is not supported: model {} cannot produce an alpha channel (use opaque or auto)",
                    caps.id
                ),
            ));
        }
    }
    Ok(background)
}

/// The quality's steps from the model's table, or the model's default; within 1..=max_steps.
fn default_steps(quality: Option<Quality>, caps: &ModelCaps) -> usize {
    quality
        .map_or(caps.default_steps, |q| q.steps(&caps.quality_steps))
        .clamp(1, caps.max_steps.max(1))
}

/// Capabilities of a small SD-like model for tests: sides 256-1024 in steps of 8, native 512x512.
#[cfg(test)]
pub(crate) fn test_caps() -> ModelCaps {
    ModelCaps {
        id: "test/model".into(),
        name: "Test".into(),
        description: "test".into(),
        family: imago_models::specs::Family::StableDiffusion,
        size_multiple: 8,
        min_side: 256,
        max_side: 1024,
        default_width: 512,
        default_height: 512,
        default_steps: 4,
        max_steps: 50,
        default_guidance: 7.5,
        quality_steps: QualitySteps {
            auto: 4,
            low: 2,
            medium: 4,
            high: 8,
            xhigh: 12,
            max: 16,
        },
        schedulers: vec![
            "euler".into(),
            "euler_a".into(),
            "ddim".into(),
            "dpmpp_2m".into(),
        ],
        max_references: 1,
        max_n: 10,
        supports_transparent: false,
        preview_decoder: false,
        created: 1_700_000_000,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const PNG_1X1: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC";

    fn openrouter(extra: Value) -> openrouter::ImageGenerationRequest {
        let mut body = json!({"model": "test/model", "prompt": "a lighthouse"});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        serde_json::from_value(body).expect("wire request")
    }

    fn openai(extra: Value) -> openai::ImageGenerateRequest {
        let mut body = json!({"prompt": "a lighthouse", "model": "test/model"});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        serde_json::from_value(body).expect("wire request")
    }

    fn local(options: Value) -> Value {
        json!({"provider": {"options": {"local": options}}})
    }

    fn data_url() -> String {
        format!("data:image/png;base64,{PNG_1X1}")
    }

    fn reference(url: &str) -> Value {
        json!({"type": "image_url", "image_url": {"url": url}})
    }

    fn ok_or(extra: Value) -> ValidatedRequest {
        validate_openrouter(&openrouter(extra.clone()), &test_caps())
            .unwrap_or_else(|e| panic!("{extra}: {e}"))
    }

    fn ok_oa(extra: Value) -> ValidatedRequest {
        validate_openai(&openai(extra.clone()), &test_caps())
            .unwrap_or_else(|e| panic!("{extra}: {e}"))
    }

    fn assert_rejects(err: FieldError, field: &str, words: &[&str], case: &Value) {
        assert_eq!(err.field, field, "{case}: {err}");
        assert!(err.message.starts_with(field), "{case}: {err}");
        for word in words {
            assert!(
                err.message.contains(word),
                "{case}: \"{err}\" lacks {word:?}"
            );
        }
    }

    #[test]
    fn defaults() {
        let r = ok_or(json!({}));
        assert_eq!(r.model, "test/model");
        assert_eq!(r.prompt, "a lighthouse");
        assert_eq!((r.width, r.height, r.n), (512, 512, 1));
        assert_eq!((r.seed, r.steps, r.guidance_scale), (None, 4, 7.5));
        assert_eq!(r.output_format, OutputFormat::Png);
        assert_eq!(r.background, Background::Auto);
        assert_eq!((r.output_compression, r.quality), (None, None));
        assert_eq!(
            (r.stream, r.partial_images, r.preview),
            (false, 0, PreviewMode::Auto)
        );
        assert_eq!(
            (r.reference.clone(), r.scheduler, r.negative_prompt.clone()),
            (None, None, None)
        );
        assert_eq!(r.size(), "512x512");

        let r = ok_oa(json!({}));
        assert_eq!((r.width, r.height, r.n, r.steps), (512, 512, 1, 4));
        assert_eq!((r.stream, r.partial_images, r.seed), (false, 0, None));
    }

    #[test]
    fn accepted_fields_are_honoured() {
        let r = ok_or(json!({
            "n": 3, "seed": 18446744073709551615u64, "output_format": "webp",
            "output_compression": 70, "background": "opaque", "stream": true,
            "user": "u-1", "session_id": "s", "trace": {"trace_id": "t", "custom": 1},
            "resolution": "512", "aspect_ratio": "16:9",
            "provider": {"only": ["local"], "order": ["local", "openai"], "ignore": ["openai"],
                         "allow_fallbacks": false, "sort": {"by": "price", "partition": "none"},
                         "options": {"local": {"guidance_scale": 0, "negative_prompt": "blur",
                                               "scheduler": "DPMPP_2M", "preview": "latent"}}}
        }));
        assert_eq!((r.n, r.seed), (3, Some(u64::MAX)));
        assert_eq!(
            (r.output_format, r.output_compression),
            (OutputFormat::Webp, Some(70))
        );
        assert_eq!(r.background, Background::Opaque);
        assert_eq!(
            (r.stream, r.partial_images),
            (true, DEFAULT_STREAM_PARTIAL_IMAGES)
        );
        assert_eq!(r.user.as_deref(), Some("u-1"));
        assert_eq!((r.width, r.height), (680, 384));
        assert_eq!(r.guidance_scale, 0.0);
        assert_eq!(r.negative_prompt.as_deref(), Some("blur"));
        assert_eq!(
            r.scheduler.map(|s| s.to_string()).as_deref(),
            Some("dpmpp_2m")
        );
        assert_eq!(r.preview, PreviewMode::Latent);

        let r = ok_or(
            json!({"stream": true, "provider": {"sort": "latency", "options": {"local": {"partial_images": 0}}}}),
        );
        assert_eq!(r.partial_images, 0);
        let r = ok_or(json!({"provider": {"options": {"local": {"steps": null}}}}));
        assert_eq!(r.steps, 4);
    }

    #[test]
    fn quality_maps_to_steps_and_local_steps_override() {
        let table = [
            ("low", 2),
            ("medium", 4),
            ("high", 8),
            ("xhigh", 12),
            ("max", 16),
            ("auto", 4),
        ];
        for (quality, steps) in table {
            let r = ok_or(json!({"quality": quality}));
            assert_eq!(r.steps, steps, "{quality}");
            assert_eq!(r.quality.map(Quality::as_str), Some(quality));
        }
        let r =
            ok_or(json!({"quality": "high", "provider": {"options": {"local": {"steps": 20}}}}));
        assert_eq!((r.steps, r.quality), (20, Some(Quality::High)));
        let openai_table = [
            ("low", 2, Quality::Low),
            ("standard", 4, Quality::Medium),
            ("hd", 8, Quality::High),
            ("high", 8, Quality::High),
            ("max", 16, Quality::Max),
            ("auto", 4, Quality::Auto),
        ];
        for (quality, steps, mapped) in openai_table {
            let r = ok_oa(json!({"quality": quality}));
            assert_eq!((r.steps, r.quality), (steps, Some(mapped)), "{quality}");
        }
    }

    #[test]
    fn references() {
        let r = ok_or(json!({"input_references": [reference(&data_url())]}));
        let Some(ReferenceSource::DataUrl { media_type, bytes }) = &r.reference else {
            panic!("{:?}", r.reference);
        };
        assert_eq!(media_type, "image/png");
        assert_eq!(&bytes[1..4], b"PNG");
        assert_eq!(r.strength, DEFAULT_STRENGTH);

        let r = ok_or(
            json!({"input_references": [reference("https://example.com/a.png")],
                             "provider": {"options": {"local": {"strength": 0.5}}}}),
        );
        assert_eq!(
            r.reference,
            Some(ReferenceSource::Url("https://example.com/a.png".into()))
        );
        assert_eq!(r.strength, 0.5);

        let jpg = format!("data:image/jpg;base64,{PNG_1X1}");
        assert!(matches!(
            parse_reference_url("f", &jpg),
            Ok(ReferenceSource::DataUrl { ref media_type, .. }) if media_type == "image/jpeg"
        ));
        assert!(parse_reference_url("f", "HTTP://Example.com/x").is_ok());
    }

    #[test]
    fn img2img_default_steps_are_raised_to_run_one_step() {
        // A 1-step model with the default strength 0.8: int(1 x 0.8) = 0, so 2 steps run 1.
        let mut caps = test_caps();
        caps.default_steps = 1;
        let req = openrouter(json!({"input_references": [reference(&data_url())]}));
        let r = validate_openrouter(&req, &caps).expect("valid");
        assert_eq!((r.steps, r.strength), (2, 0.8));
        assert_eq!(img2img_steps(r.steps, r.strength), 1);
        // Explicit steps are never changed: a 400 naming what to raise.
        let req = openrouter(json!({"input_references": [reference(&data_url())],
                                    "provider": {"options": {"local": {"steps": 1}}}}));
        let err = validate_openrouter(&req, &caps).expect_err("0 steps");
        assert_rejects(
            err,
            "provider.options.local.steps",
            &["0.8", "1 steps", "= 0"],
            &json!("steps 1"),
        );
    }

    #[test]
    fn options_for_other_providers_are_ignored() {
        let r = ok_or(
            json!({"provider": {"options": {"openai": {"steps": 1000, "anything": true},
                                                       "black-forest-labs": {}}}}),
        );
        assert_eq!(r.steps, 4);
    }

    #[test]
    fn openai_fields() {
        let r = ok_oa(json!({
            "size": "1024x768", "n": 2, "output_format": "jpeg", "output_compression": 50,
            "background": "opaque", "moderation": "low", "response_format": "b64_json",
            "partial_images": 3, "stream": true, "user": "u", "safety_identifier": "s"
        }));
        assert_eq!((r.width, r.height, r.n), (1024, 768, 2));
        assert_eq!(
            (r.output_format, r.output_compression),
            (OutputFormat::Jpeg, Some(50))
        );
        assert_eq!((r.stream, r.partial_images), (true, 3));
        assert_eq!(r.user.as_deref(), Some("s"));
        let r = ok_oa(json!({"size": "auto", "user": "u", "safety_identifier": ""}));
        assert_eq!((r.width, r.height), (512, 512));
        assert_eq!(r.user.as_deref(), Some("u"));
        let r = ok_oa(json!({"size": null, "quality": null, "style": null}));
        assert_eq!((r.width, r.height), (512, 512));
    }

    #[test]
    fn transparent_background_on_a_model_with_alpha() {
        let mut caps = test_caps();
        caps.supports_transparent = true;
        for format in ["png", "webp"] {
            let req = openrouter(json!({"background": "transparent", "output_format": format}));
            let r = validate_openrouter(&req, &caps).expect("alpha model");
            assert_eq!(r.background, Background::Transparent);
        }
        let req = openrouter(json!({"background": "transparent", "output_format": "jpeg"}));
        let err = validate_openrouter(&req, &caps).expect_err("jpeg has no alpha");
        assert_rejects(err, "background", &["png or webp", "jpeg"], &json!("jpeg"));
    }

    #[test]
    fn openrouter_rejections() {
        let long = "x".repeat(257);
        let two_refs = json!([reference(&data_url()), reference(&data_url())]);
        let seventeen: Vec<Value> = (0..17).map(|_| reference(&data_url())).collect();
        let cases: Vec<(Value, &str, Vec<&str>)> = vec![
            (json!({"prompt": ""}), "prompt", vec!["at least 1"]),
            (
                json!({"size": "1024x1024", "resolution": "512"}),
                "resolution",
                vec!["512", "1024x1024"],
            ),
            (
                json!({"size": "1001x1000"}),
                "size",
                vec!["multiple of 8", "1001"],
            ),
            (json!({"n": 0}), "n", vec!["between 1 and 10", "got 0"]),
            (json!({"n": 11}), "n", vec!["between 1 and 10", "got 11"]),
            (
                json!({"seed": -1}),
                "seed",
                vec!["between 0 and 18446744073709551615", "got -1"],
            ),
            (json!({"seed": 1e3}), "seed", vec!["integer", "1000.0"]),
            (json!({"seed": 1.5}), "seed", vec!["integer", "1.5"]),
            (
                json!({"output_format": "svg"}),
                "output_format",
                vec!["svg", "raster"],
            ),
            (
                json!({"background": "transparent", "output_format": "jpeg"}),
                "background",
                vec!["png or webp", "jpeg"],
            ),
            (
                json!({"background": "transparent"}),
                "background",
                vec!["alpha", "test/model"],
            ),
            (
                json!({"output_compression": 101}),
                "output_compression",
                vec!["between 0 and 100", "101"],
            ),
            (
                json!({"output_compression": -1}),
                "output_compression",
                vec!["between 0 and 100", "-1"],
            ),
            (
                json!({"session_id": long}),
                "session_id",
                vec!["256", "257"],
            ),
            (
                json!({"input_references": two_refs}),
                "input_references",
                vec!["at most 1", "got 2"],
            ),
            (
                json!({"input_references": seventeen}),
                "input_references",
                vec!["at most 16", "got 17"],
            ),
            (
                json!({"input_references": [reference("data:image/png;base64,@@@")]}),
                "input_references[0].image_url.url",
                vec!["base64", "@@@"],
            ),
            (
                json!({"input_references": [reference("data:text/plain;base64,aGk=")]}),
                "input_references[0].image_url.url",
                vec!["image/png", "text/plain"],
            ),
            (
                json!({"input_references": [reference("data:image/png,abc")]}),
                "input_references[0].image_url.url",
                vec!["base64", "data:image/png,abc"],
            ),
            (
                json!({"input_references": [reference("data:image/png;base64,")]}),
                "input_references[0].image_url.url",
                vec!["no image data"],
            ),
            (
                json!({"input_references": [reference("ftp://example.com/a.png")]}),
                "input_references[0].image_url.url",
                vec!["http(s)", "ftp://example.com/a.png"],
            ),
            (
                json!({"input_references": [reference("https:///a.png")]}),
                "input_references[0].image_url.url",
                vec!["host", "https:///a.png"],
            ),
            (
                local(json!({"cfg": 3})),
                "provider.options.local.cfg",
                vec!["unknown option", "cfg", "steps"],
            ),
            (
                local(json!({"strength": 0.5})),
                "provider.options.local.strength",
                vec!["input reference"],
            ),
            (
                local(json!({"steps": 0})),
                "provider.options.local.steps",
                vec!["between 1 and 50", "got 0"],
            ),
            (
                local(json!({"steps": 51})),
                "provider.options.local.steps",
                vec!["between 1 and 50", "got 51"],
            ),
            (
                local(json!({"steps": "4"})),
                "provider.options.local.steps",
                vec!["integer", "\"4\""],
            ),
            (
                local(json!({"steps": 4.5})),
                "provider.options.local.steps",
                vec!["integer", "4.5"],
            ),
            (
                local(json!({"guidance_scale": -1})),
                "provider.options.local.guidance_scale",
                vec![">= 0", "-1"],
            ),
            (
                local(json!({"scheduler": "lms"})),
                "provider.options.local.scheduler",
                vec!["euler", "ddim", "\"lms\""],
            ),
            (
                local(json!({"scheduler": 3})),
                "provider.options.local.scheduler",
                vec!["string", "3"],
            ),
            (
                local(json!({"negative_prompt": 1})),
                "provider.options.local.negative_prompt",
                vec!["string", "1"],
            ),
            (
                local(json!({"partial_images": 4})),
                "provider.options.local.partial_images",
                vec!["between 0 and 3", "4"],
            ),
            (
                local(json!({"preview": "fast"})),
                "provider.options.local.preview",
                vec!["taesd", "fast"],
            ),
        ];
        let caps = test_caps();
        for (extra, field, words) in &cases {
            let err = validate_openrouter(&openrouter(extra.clone()), &caps)
                .expect_err(&format!("{extra} should be rejected"));
            assert_rejects(err, field, words, extra);
        }
        // Strength bounds, with a reference so only the bound is at fault.
        for strength in [json!(0), json!(1.5), json!(-0.1), json!("0.5")] {
            let extra = json!({"input_references": [reference(&data_url())],
                               "provider": {"options": {"local": {"strength": strength}}}});
            let err = validate_openrouter(&openrouter(extra.clone()), &caps).expect_err("strength");
            assert_rejects(err, "provider.options.local.strength", &["(0, 1]"], &extra);
        }
        let extra = json!({"input_references": [reference(&data_url())],
                           "provider": {"options": {"local": {"strength": 0.1, "steps": 4}}}});
        let err = validate_openrouter(&openrouter(extra.clone()), &caps).expect_err("0 steps");
        assert_rejects(
            err,
            "provider.options.local.strength",
            &["0.1", "= 0"],
            &extra,
        );
    }

    #[test]
    fn openai_rejections() {
        let cases: Vec<(Value, &str, Vec<&str>)> = vec![
            (json!({"prompt": ""}), "prompt", vec!["at least 1"]),
            (
                json!({"prompt": "x".repeat(32_001)}),
                "prompt",
                vec!["32000", "32001"],
            ),
            (
                json!({"response_format": "url"}),
                "response_format",
                vec!["url", "b64_json"],
            ),
            (json!({"style": "vivid"}), "style", vec!["vivid"]),
            (json!({"complexity": "high"}), "complexity", vec!["high"]),
            (json!({"svg": {"model": "x"}}), "svg", vec!["raster"]),
            (json!({"frame_count": 4}), "frame_count", vec!["GIF", "4"]),
            (
                json!({"frame_duration_ms": 100}),
                "frame_duration_ms",
                vec!["GIF", "100"],
            ),
            (
                json!({"output_format": "gif"}),
                "output_format",
                vec!["gif", "png"],
            ),
            (
                json!({"output_format": "svg"}),
                "output_format",
                vec!["svg", "png"],
            ),
            (json!({"size": "1K"}), "size", vec!["auto", "1K"]),
            (
                json!({"size": "1020x1024"}),
                "size",
                vec!["multiple of 8", "1020"],
            ),
            (json!({"size": "1792x1024"}), "size", vec!["1024", "1792"]),
            (json!({"n": 0}), "n", vec!["between 1 and 10", "0"]),
            (json!({"n": 11}), "n", vec!["between 1 and 10", "11"]),
            (
                json!({"partial_images": 4}),
                "partial_images",
                vec!["between 0 and 3", "4"],
            ),
            (
                json!({"partial_images": -1}),
                "partial_images",
                vec!["between 0 and 3", "-1"],
            ),
            (
                json!({"output_compression": 101}),
                "output_compression",
                vec!["100", "101"],
            ),
            (
                json!({"background": "transparent", "output_format": "jpeg"}),
                "background",
                vec!["png or webp", "jpeg"],
            ),
            (
                json!({"background": "transparent"}),
                "background",
                vec!["alpha"],
            ),
        ];
        let caps = test_caps();
        for (extra, field, words) in &cases {
            let err = validate_openai(&openai(extra.clone()), &caps)
                .expect_err(&format!("{extra} should be rejected"));
            assert_rejects(err, field, words, extra);
        }
    }

    #[test]
    fn unknown_fields_are_serde_errors_that_name_them() {
        let e = serde_json::from_value::<openrouter::ImageGenerationRequest>(
            json!({"model": "m", "prompt": "p", "steps": 4}),
        )
        .expect_err("unknown field");
        assert!(e.to_string().contains("`steps`"), "{e}");
        let e = serde_json::from_value::<openrouter::ImageGenerationRequest>(
            json!({"model": "m", "prompt": "p", "provider": {"zdr": true}}),
        )
        .expect_err("unknown provider field");
        assert!(e.to_string().contains("`zdr`"), "{e}");
        let e = serde_json::from_value::<openai::ImageGenerateRequest>(
            json!({"prompt": "p", "seed": 4}),
        )
        .expect_err("unknown field");
        assert!(e.to_string().contains("`seed`"), "{e}");
        let e = serde_json::from_value::<openrouter::ImageGenerationRequest>(
            json!({"model": "m", "prompt": "p", "input_references": [{"type": "text", "image_url": {"url": "x"}}]}),
        )
        .expect_err("wrong part type");
        assert!(e.to_string().contains("image_url"), "{e}");
    }
}
