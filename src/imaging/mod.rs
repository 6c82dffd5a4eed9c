//! Image bytes in and out of the server: encoding generated images (PNG, JPEG, WebP) and loading
//! reference images from data URLs or http(s) URLs under size, pixel, address and time limits.
mod address;
mod data_url;
mod decode;
mod encode;
mod error;
mod fetch;
mod reference;

use std::time::Duration;

pub use address::is_public_address;
pub use data_url::{parse_data_url, DataUrl};
pub use decode::decode_reference_bytes;
pub use encode::encode_image;
pub use error::ImagingError;
pub use reference::load_reference;

/// The raster formats the server writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    Png,
    Jpeg,
    Webp,
}

impl ImageFormat {
    /// The IANA media type, e.g. `image/png`.
    pub fn media_type(self) -> &'static str {
        match self {
            ImageFormat::Png => "image/png",
            ImageFormat::Jpeg => "image/jpeg",
            ImageFormat::Webp => "image/webp",
        }
    }

    /// The lower-case name used in messages and file extensions.
    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Png => "png",
            ImageFormat::Jpeg => "jpeg",
            ImageFormat::Webp => "webp",
        }
    }
}

/// Where a reference image comes from. `DataUrl` carries an already base64-decoded payload
/// (see [`parse_data_url`]); its declared media type is checked but its bytes are sniffed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReferenceInput<'a> {
    DataUrl {
        media_type: &'a str,
        bytes: &'a [u8],
    },
    Url(&'a str),
}

/// Bounds on loading one reference image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReferenceLimits {
    /// Most bytes of encoded image accepted (data URL payload or HTTP body).
    pub max_bytes: usize,
    /// Most pixels (width * height) accepted, checked from the header before decoding.
    pub max_pixels: u64,
    /// Allow fetching from loopback/private/link-local/... addresses (tests, trusted networks).
    pub allow_private: bool,
    /// Overall time for a URL fetch: DNS, connects, every redirect hop and the body.
    pub timeout: Duration,
    /// Most redirects followed; each hop is checked like the first URL.
    pub max_redirects: usize,
}

impl Default for ReferenceLimits {
    /// The server's limits: 20 MiB, 4096x4096 pixels, public addresses only, 20 s, 5 redirects.
    fn default() -> Self {
        ReferenceLimits {
            max_bytes: 20 * 1024 * 1024,
            max_pixels: 4096 * 4096,
            allow_private: false,
            timeout: Duration::from_secs(20),
            max_redirects: 5,
        }
    }
}
