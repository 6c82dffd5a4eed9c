//! Loading a request's reference image from a data URL or an http(s) URL.
use image::RgbImage;

use super::data_url::check_image_media_type;
use super::decode::decode_reference_bytes;
use super::fetch::fetch_reference_bytes;
use super::{ImagingError, ReferenceInput, ReferenceLimits};

/// Loads a reference image as RGB8 under `limits`. A data URL's declared media type must be an
/// image type; URL bodies are fetched with the address, redirect, size and time checks of
/// `fetch`. In both cases the format is sniffed from the bytes (PNG, JPEG or WebP) and the pixel
/// count checked from the header before decoding, which runs on a blocking thread.
pub async fn load_reference(
    input: ReferenceInput<'_>,
    limits: &ReferenceLimits,
) -> Result<RgbImage, ImagingError> {
    let bytes = match input {
        ReferenceInput::DataUrl { media_type, bytes } => {
            check_image_media_type(media_type)?;
            if bytes.len() > limits.max_bytes {
                return Err(ImagingError::TooManyBytes {
                    limit: limits.max_bytes,
                    size: bytes.len() as u64,
                });
            }
            bytes.to_vec()
        }
        ReferenceInput::Url(url) => fetch_reference_bytes(url, limits).await?,
    };
    let limits = limits.clone();
    tokio::task::spawn_blocking(move || decode_reference_bytes(&bytes, &limits))
        .await
        .map_err(|e| ImagingError::Decode {
            format: "reference".into(),
            reason: format!("the decoder stopped: {e}"),
        })?
}

#[cfg(test)]
#[path = "reference_tests.rs"]
mod tests;
