//! The surface-independent core of a generation: reference loading, the engine job, encoding.
//! `/api/v1/images` and `/v1/images/generations` only translate to and from their wire shapes.
use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::Response;
use image::RgbImage;
use imago_models::pipeline::Timings;

use super::auth::Caller;
use super::shutdown::Shutdown;
use super::AppState;
use crate::domain::request::{OutputFormat, ReferenceSource, ValidatedRequest};
use crate::domain::seed::random_seed;
use crate::engine::{EngineError, JobEvent, JobHandle, JobOutput};
use crate::error::{ApiError, Surface};
use crate::imaging::{self, ImageFormat, ReferenceInput};
use crate::providers::{Hop, Provider};
use axum::response::sse::Event;
use serde_json::Value;

/// One encoded output image.
pub struct EncodedImage {
    pub bytes: Vec<u8>,
    pub media_type: &'static str,
}

/// What a finished request produced, ready for either wire shape.
pub struct Batch {
    pub images: Vec<EncodedImage>,
    pub seed: u64,
    pub width: usize,
    pub height: usize,
    pub steps_run: usize,
    pub prompt_truncated: bool,
    /// CLIP tokens of the prompt (bos and eos included, at most the window).
    pub prompt_tokens: usize,
    pub timings: Timings,
    pub queue_time: Duration,
    /// Unix seconds at completion.
    pub created: u64,
}

/// A job in flight with the facts the response needs.
pub struct Submitted {
    pub job: JobHandle,
    pub seed: u64,
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn image_format(format: OutputFormat) -> ImageFormat {
    match format {
        OutputFormat::Png => ImageFormat::Png,
        OutputFormat::Jpeg => ImageFormat::Jpeg,
        OutputFormat::Webp => ImageFormat::Webp,
    }
}

/// The checks between validation and work: the per-request pixel cap (`--max-pixels-per-request`),
/// then the caller's quota and rate. Nothing is counted against the key when refused.
pub fn admit(
    state: &AppState,
    caller: &Caller,
    request: &ValidatedRequest,
) -> Result<(), ApiError> {
    let (n, width, height) = (
        request.n as u64,
        request.width as u64,
        request.height as u64,
    );
    let pixels = n * width * height;
    let limit = state.limits.max_pixels_per_request;
    if pixels > limit {
        return Err(ApiError::field(
            "n",
            format!(
                "n x width x height = {n} x {width} x {height} = {pixels} pixels is over this server's limit of {limit} pixels per request (--max-pixels-per-request); ask for fewer or smaller images"
            ),
        ));
    }
    state.auth.admit(caller, n, Instant::now())
}

/// Sends a request along its planned providers: the local engine through `local`, upstreams with
/// the body as the client sent it (parsed only when an upstream is among the hops). A route with
/// no local hop is charged to the caller's quota and rate here, before it is forwarded (`n`
/// images as asked, 1 when absent); the local path is charged by [`admit`] once validated.
pub async fn route<F, Fut>(
    state: &AppState,
    caller: &Caller,
    hops: &[Hop],
    surface: Surface,
    raw_body: Option<Bytes>,
    n: Option<i64>,
    local: F,
) -> Result<Response, ApiError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Response, ApiError>>,
{
    if !hops.iter().any(|hop| matches!(hop, Hop::Local)) {
        state
            .auth
            .admit(caller, n.unwrap_or(1).max(1) as u64, Instant::now())?;
    }
    let raw: Value = if hops.iter().all(|hop| matches!(hop, Hop::Local)) {
        Value::Null
    } else {
        raw_body
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    };
    crate::providers::dispatch(hops, surface, &raw, local).await
}

/// Fetches/decodes the reference image (a client error when it is bad) and queues the job.
pub async fn submit(state: &AppState, request: &ValidatedRequest) -> Result<Submitted, ApiError> {
    let served = state.registry.lookup(&request.model)?;
    let reference = match &request.reference {
        None => None,
        Some(source) => Some(load_reference(state, source).await?),
    };
    let seed = request.seed.unwrap_or_else(random_seed);
    match &served.provider {
        Provider::Local(local) => Ok(Submitted {
            job: local.submit(request, reference, seed)?,
            seed,
        }),
    }
}

async fn load_reference(state: &AppState, source: &ReferenceSource) -> Result<RgbImage, ApiError> {
    let limits = &state.limits.reference;
    let input = match source {
        ReferenceSource::DataUrl { media_type, bytes } => {
            ReferenceInput::DataUrl { media_type, bytes }
        }
        ReferenceSource::Url(url) => ReferenceInput::Url(url),
    };
    imaging::load_reference(input, limits)
        .await
        .map_err(|e| ApiError::field("input_references[0]", e.to_string()))
}

/// Maps an engine failure to the client's status: its own mistakes are 400s, the rest 500/502.
pub fn engine_error(err: EngineError) -> ApiError {
    match err {
        EngineError::Invalid(e) => match e {
            imago_models::ModelError::InvalidInput { field, message } => {
                ApiError::field(field, message)
            }
            other => ApiError::Internal(other.to_string()),
        },
        EngineError::Cancelled => ApiError::BadGateway("the generation was cancelled".into()),
        EngineError::Stopped => {
            ApiError::BadGateway("the engine stopped before the generation completed".into())
        }
        err @ EngineError::TimedOut { .. } => ApiError::Timeout(err.to_string()),
        other => ApiError::Internal(other.to_string()),
    }
}

/// Encodes the images off the async workers (PNG of a 1 MP image takes tens of ms).
pub async fn encode(output: JobOutput, request: &ValidatedRequest) -> Result<Batch, ApiError> {
    let JobOutput {
        images,
        seed,
        width,
        height,
        steps_run,
        prompt_truncated,
        prompt_tokens,
        timings,
        queue_time,
    } = output;
    let encoded = encode_images(images, request).await?;
    Ok(Batch {
        images: encoded,
        seed,
        width,
        height,
        steps_run,
        prompt_truncated,
        prompt_tokens,
        timings,
        queue_time,
        created: unix_now(),
    })
}

/// Runs a request to the end (the non-streaming path).
pub async fn generate(state: &AppState, request: &ValidatedRequest) -> Result<Batch, ApiError> {
    let submitted = submit(state, request).await?;
    let output = submitted.job.finish().await.map_err(engine_error)?;
    encode(output, request).await
}

/// The headers known before a generation runs (all a stream can send): the seed and the size.
pub fn stream_headers(seed: u64, width: usize, height: usize) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        HeaderName::from_static("x-imago-seed"),
        HeaderValue::from(seed),
    );
    if let Ok(size) = HeaderValue::from_str(&format!("{width}x{height}")) {
        headers.insert(HeaderName::from_static("x-imago-size"), size);
    }
    headers
}

/// Headers every successful generation response carries.
pub fn batch_headers(batch: &Batch) -> HeaderMap {
    let mut headers = stream_headers(batch.seed, batch.width, batch.height);
    let mut put = |name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    };
    put("x-imago-steps", batch.steps_run.to_string());
    put("x-queue-time-ms", batch.queue_time.as_millis().to_string());
    let t = batch.timings;
    put(
        "x-inference-time-ms",
        (t.text_encode + t.denoise + t.decode)
            .as_millis()
            .to_string(),
    );
    if batch.steps_run > 0 {
        let step_ms = t.denoise.as_secs_f64() * 1000.0 / batch.steps_run as f64;
        put("x-imago-step-ms", format!("{step_ms:.1}"));
    }
    if batch.prompt_truncated {
        put("x-imago-prompt-truncated", "true".into());
    }
    headers
}

/// Usage as both APIs report it: the prompt's CLIP tokens in, one output token per 16x16 pixel
/// patch of every image out (a self-hosted server bills nothing; the numbers describe the work).
pub struct UsageCounts {
    pub prompt_tokens: u64,
    pub image_tokens: u64,
}

pub fn usage_counts(batch: &Batch, request: &ValidatedRequest) -> UsageCounts {
    let per_image = (batch.width.div_ceil(16) * batch.height.div_ceil(16)) as u64;
    UsageCounts {
        prompt_tokens: batch.prompt_tokens as u64,
        image_tokens: per_image * request.n as u64,
    }
}

/// How one API shape renders the events of a streaming generation.
pub trait StreamRenderer: Send + Sync + 'static {
    fn partial(
        &self,
        request: &ValidatedRequest,
        partial_image_index: u32,
        image_index: u32,
        image: &EncodedImage,
    ) -> Event;
    fn completed(&self, batch: &Batch, request: &ValidatedRequest) -> Vec<Event>;
    fn error(&self, err: &ApiError) -> Event;
}

/// The events of a streaming generation: partial images as the engine sends previews (encoded here,
/// off the denoising thread), then the final images, or one error event; `[DONE]` always ends the
/// stream. Dropping the stream (the client left) drops the job handle, which cancels the job.
/// When `shutdown` says streams must end (the grace period is over), the stream sends an error
/// event and `[DONE]` and drops the job.
pub fn event_stream<R: StreamRenderer>(
    job: JobHandle,
    request: ValidatedRequest,
    renderer: R,
    shutdown: Shutdown,
) -> impl futures_util::Stream<Item = Result<Event, std::convert::Infallible>> + Send {
    use std::collections::VecDeque;
    use std::sync::Arc;

    let renderer = Arc::new(renderer);
    let request = Arc::new(request);
    let start = (Some(job), VecDeque::<Event>::new());
    futures_util::stream::unfold(start, move |(mut job, mut queue)| {
        let renderer = renderer.clone();
        let request = request.clone();
        let shutdown = shutdown.clone();
        async move {
            loop {
                if let Some(event) = queue.pop_front() {
                    return Some((Ok(event), (job, queue)));
                }
                let mut running = job.take()?;
                let next = tokio::select! {
                    event = running.events.recv() => event,
                    () = shutdown.closing() => {
                        tracing::warn!("stream ended by the server's shutdown");
                        queue.push_back(renderer.error(&ApiError::ShuttingDown));
                        queue.push_back(super::sse::done());
                        continue;
                    }
                };
                match next {
                    Some(JobEvent::Preview {
                        partial_image_index,
                        images,
                    }) => {
                        match encode_images(images, &request).await {
                            Ok(encoded) => {
                                queue.extend(encoded.iter().enumerate().map(|(i, img)| {
                                    renderer.partial(&request, partial_image_index, i as u32, img)
                                }))
                            }
                            Err(err) => {
                                tracing::warn!(error = %err, "preview encoding failed; preview skipped")
                            }
                        }
                        job = Some(running);
                    }
                    Some(JobEvent::Finished(result)) => {
                        let batch = match result {
                            Ok(output) => encode(output, &request).await,
                            Err(err) => Err(engine_error(err)),
                        };
                        match batch {
                            Ok(batch) => queue.extend(renderer.completed(&batch, &request)),
                            Err(err) => {
                                tracing::warn!(error = %err, "stream failed after it started");
                                queue.push_back(renderer.error(&err));
                            }
                        }
                        queue.push_back(super::sse::done());
                    }
                    None => {
                        queue.push_back(renderer.error(&ApiError::BadGateway(
                            "the engine stopped during the generation".into(),
                        )));
                        queue.push_back(super::sse::done());
                    }
                }
            }
        }
    })
}

/// Encodes images in the request's format on a blocking thread (PNG of a 1 MP image takes tens of
/// ms; previews and final images alike stay off the async workers).
async fn encode_images(
    images: Vec<RgbImage>,
    request: &ValidatedRequest,
) -> Result<Vec<EncodedImage>, ApiError> {
    let format = image_format(request.output_format);
    let compression = request.output_compression;
    tokio::task::spawn_blocking(move || {
        images
            .iter()
            .map(|img| {
                imaging::encode_image(img, format, compression).map(|bytes| EncodedImage {
                    bytes,
                    media_type: format.media_type(),
                })
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|e| ApiError::Internal(format!("encoder task failed: {e}")))?
    .map_err(|e| ApiError::Internal(format!("cannot encode the image: {e}")))
}

/// Base64 of encoded image bytes.
pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
