//! What can go wrong encoding an image or loading a reference image.
use std::net::IpAddr;
use std::time::Duration;

use thiserror::Error;

/// Each message names the offending value and the bound it broke, so it can go back to the
/// client as is (all reference problems are the client's).
#[derive(Debug, Error)]
pub enum ImagingError {
    #[error("reference image is too large: {size} bytes, the limit is {limit} bytes")]
    TooManyBytes { limit: usize, size: u64 },
    #[error("reference image is too large: {width}x{height} = {pixels} pixels, the limit is {limit} pixels", pixels = u64::from(*.width) * u64::from(*.height))]
    TooManyPixels { limit: u64, width: u32, height: u32 },
    #[error("reference is not an image: found {found}")]
    NotAnImage { found: String },
    #[error("reference image format {format} is not supported (png, jpeg and webp are)")]
    UnsupportedFormat { format: String },
    #[error("reference image ({format}) cannot be decoded: {reason}")]
    Decode { format: String, reason: String },
    #[error("bad data URL: {reason}")]
    BadDataUrl { reason: String },
    #[error("bad reference URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("URL scheme {scheme:?} is not allowed (only http and https are)")]
    SchemeNotAllowed { scheme: String },
    #[error("host {host:?} resolves to {address}, which is not a public address")]
    AddressNotPublic { host: String, address: IpAddr },
    #[error("too many redirects: more than {limit}")]
    TooManyRedirects { limit: usize },
    #[error("fetching the reference image failed with HTTP status {status}")]
    HttpStatus { status: u16 },
    #[error("fetching the reference image took longer than {:.1} s", .timeout.as_secs_f64())]
    Timeout { timeout: Duration },
    #[error("fetching the reference image failed: {reason}")]
    FetchFailed { reason: String },
    #[error("cannot encode a {width}x{height} image as {format}: {reason}")]
    Encode {
        format: &'static str,
        width: u32,
        height: u32,
        reason: String,
    },
}
