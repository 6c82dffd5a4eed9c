//! `data:` URLs carrying a base64 image (RFC 2397).
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;

use super::ImagingError;

/// The decoded payload of a data URL and the media type it declared (lower-cased). The bytes are
/// not yet known to be an image: `load_reference` sniffs them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataUrl {
    pub media_type: String,
    pub bytes: Vec<u8>,
}

/// Standard alphabet; padding optional since some clients strip it.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Parses `data:image/<type>[;param=value...];base64,<data>`. The media type must be an image
/// type and the payload base64 (ASCII whitespace inside it is ignored).
pub fn parse_data_url(url: &str) -> Result<DataUrl, ImagingError> {
    let bad = |reason: String| ImagingError::BadDataUrl { reason };
    let rest = url
        .get(..5)
        .filter(|scheme| scheme.eq_ignore_ascii_case("data:"))
        .map(|_| &url[5..])
        .ok_or_else(|| bad("it does not start with \"data:\"".into()))?;
    let (header, payload) = rest
        .split_once(',')
        .ok_or_else(|| bad("no ',' separates the media type from the data".into()))?;
    let mut parts = header.split(';').map(str::trim);
    let media_type = parts.next().unwrap_or_default().to_ascii_lowercase();
    check_image_media_type(&media_type)?;
    if !parts.any(|p| p.eq_ignore_ascii_case("base64")) {
        return Err(bad(
            "only base64 data URLs are supported (\";base64,\" is missing)".into(),
        ));
    }
    let compact: Vec<u8> = payload
        .bytes()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if compact.is_empty() {
        return Err(bad("the data is empty".into()));
    }
    let bytes = BASE64
        .decode(&compact)
        .map_err(|e| bad(format!("the base64 data is invalid: {e}")))?;
    Ok(DataUrl { media_type, bytes })
}

/// A declared media type must be `image/<subtype>`; the bytes are still sniffed afterwards.
pub(super) fn check_image_media_type(media_type: &str) -> Result<(), ImagingError> {
    let is_image = media_type.split_once('/').is_some_and(|(kind, sub)| {
        kind.trim().eq_ignore_ascii_case("image") && !sub.trim().is_empty()
    });
    if is_image {
        Ok(())
    } else {
        Err(ImagingError::BadDataUrl {
            reason: format!("media type {media_type:?} is not an image type"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(url: &str) -> String {
        match parse_data_url(url) {
            Err(ImagingError::BadDataUrl { reason }) => reason,
            other => panic!("{url}: expected BadDataUrl, got {other:?}"),
        }
    }

    #[test]
    fn parses_base64_image_urls() {
        let parsed = parse_data_url("data:image/png;base64,iVBORw0KGgo=").unwrap();
        assert_eq!(parsed.media_type, "image/png");
        assert_eq!(parsed.bytes, b"\x89PNG\r\n\x1a\n");
        // Case-insensitive scheme and type, extra parameters, no padding, wrapped lines.
        let parsed = parse_data_url("DATA:Image/JPEG;name=a.jpg;base64,/9j/\n4A").unwrap();
        assert_eq!(parsed.media_type, "image/jpeg");
        assert_eq!(parsed.bytes, [0xff, 0xd8, 0xff, 0xe0]);
    }

    #[test]
    fn refuses_malformed_urls_saying_why() {
        assert!(reason("https://x/y.png").contains("data:"));
        assert!(reason("data:image/png;base64").contains("','"));
        assert!(reason("data:text/plain;base64,aGk=").contains("\"text/plain\""));
        assert!(reason("data:;base64,aGk=").contains("not an image type"));
        assert!(reason("data:image/png,rawbytes").contains("base64"));
        assert!(reason("data:image/png;base64,").contains("empty"));
        assert!(reason("data:image/png;base64,a$b=").contains("invalid"));
        assert!(reason("dat").contains("data:"));
    }
}
