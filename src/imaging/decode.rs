//! Turning untrusted encoded bytes into an RGB image: sniff the format, read the dimensions from
//! the header and refuse oversized images before any pixel is decoded.
use std::io::Cursor;

use image::{ImageFormat as CodecFormat, ImageReader, Limits, RgbImage};

use super::{ImagingError, ReferenceLimits};

/// Decoder working memory allowed beyond the output buffer's 8 bytes per pixel (16-bit RGBA).
const DECODER_SLACK_BYTES: u64 = 64 * 1024 * 1024;

/// Decodes a PNG, JPEG or WebP reference image to RGB8 (alpha is dropped). The format comes from
/// the bytes, never from a declared type; `limits.max_bytes` and `limits.max_pixels` are enforced
/// before decoding, the latter from the image header alone.
pub fn decode_reference_bytes(
    bytes: &[u8],
    limits: &ReferenceLimits,
) -> Result<RgbImage, ImagingError> {
    if bytes.len() > limits.max_bytes {
        return Err(ImagingError::TooManyBytes {
            limit: limits.max_bytes,
            size: bytes.len() as u64,
        });
    }
    let format = sniff_format(bytes)?;
    let name = format!("{format:?}").to_ascii_lowercase();
    let decode_error = |e: image::ImageError| ImagingError::Decode {
        format: name.clone(),
        reason: e.to_string(),
    };
    let (width, height) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(decode_error)?;
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(ImagingError::TooManyPixels {
            limit: limits.max_pixels,
            width,
            height,
        });
    }
    let mut decoder_limits = Limits::default();
    decoder_limits.max_image_width = Some(width);
    decoder_limits.max_image_height = Some(height);
    decoder_limits.max_alloc = Some(
        limits
            .max_pixels
            .saturating_mul(8)
            .saturating_add(DECODER_SLACK_BYTES),
    );
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(decoder_limits);
    Ok(reader.decode().map_err(decode_error)?.to_rgb8())
}

/// The format named by the magic bytes, if it is one we decode.
fn sniff_format(bytes: &[u8]) -> Result<CodecFormat, ImagingError> {
    match image::guess_format(bytes) {
        Ok(format @ (CodecFormat::Png | CodecFormat::Jpeg | CodecFormat::WebP)) => Ok(format),
        Ok(other) => Err(ImagingError::UnsupportedFormat {
            format: format!("{other:?}").to_ascii_lowercase(),
        }),
        Err(_) => Err(ImagingError::NotAnImage {
            found: describe_bytes(bytes),
        }),
    }
}

/// A short description of unrecognised data for the error message.
fn describe_bytes(bytes: &[u8]) -> String {
    const SHOWN: usize = 16;
    if bytes.is_empty() {
        return "no data".into();
    }
    let head = &bytes[..bytes.len().min(SHOWN)];
    let printable = head
        .iter()
        .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace());
    if printable {
        format!("text starting with {:?}", String::from_utf8_lossy(head))
    } else {
        let hex: Vec<String> = head.iter().map(|b| format!("{b:02x}")).collect();
        format!("{} bytes starting with {}", bytes.len(), hex.join(" "))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::time::Instant;

    use super::*;
    use crate::imaging::{encode_image, ImageFormat};

    mod png_bomb {
        include!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/common/png_bomb.rs"
        ));
    }
    pub(crate) use png_bomb::zero_png;

    pub(crate) fn limits() -> ReferenceLimits {
        ReferenceLimits::default()
    }

    /// The error of a refused image; a wrongly decoded image is reported by its size only (a
    /// bomb's pixel dump would flood the output).
    pub(crate) fn refused(result: Result<RgbImage, ImagingError>) -> ImagingError {
        match result {
            Ok(image) => panic!(
                "expected an error, decoded a {:?} image",
                image.dimensions()
            ),
            Err(err) => err,
        }
    }

    fn gradient(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x * 4) as u8, (y * 4) as u8, ((x + y) * 2) as u8])
        })
    }

    #[test]
    fn the_zero_png_generator_makes_valid_pngs() {
        let small = zero_png(301, 203);
        let decoded = decode_reference_bytes(&small, &limits()).unwrap();
        assert_eq!(decoded.dimensions(), (301, 203));
        assert!(decoded.pixels().all(|p| p.0 == [0, 0, 0]));
    }

    #[test]
    fn a_decompression_bomb_is_refused_from_its_header() {
        let bomb = zero_png(11000, 11000);
        assert!(bomb.len() < 120_000, "bomb is {} bytes", bomb.len());
        let start = Instant::now();
        let err = refused(decode_reference_bytes(&bomb, &limits()));
        let elapsed = start.elapsed();
        eprintln!(
            "bomb of {} bytes (11000x11000) refused in {elapsed:?}",
            bomb.len()
        );
        assert!(
            matches!(
                err,
                ImagingError::TooManyPixels { limit, width: 11000, height: 11000 } if limit == 4096 * 4096
            ),
            "{err}"
        );
        assert!(err.to_string().contains("11000x11000"), "{err}");
        assert!(elapsed.as_millis() < 50, "took {elapsed:?}");
    }

    #[test]
    fn every_format_is_checked_against_max_pixels() {
        let image = gradient(40, 30);
        let limits = ReferenceLimits {
            max_pixels: 1199,
            ..limits()
        };
        for format in [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::Webp] {
            for compression in [None, Some(70)] {
                let bytes = encode_image(&image, format, compression).unwrap();
                let err = refused(decode_reference_bytes(&bytes, &limits));
                assert!(
                    matches!(
                        err,
                        ImagingError::TooManyPixels {
                            limit: 1199,
                            width: 40,
                            height: 30
                        }
                    ),
                    "{format:?}: {err}"
                );
                let at_limit = ReferenceLimits {
                    max_pixels: 1200,
                    ..limits.clone()
                };
                let decoded = decode_reference_bytes(&bytes, &at_limit).unwrap();
                assert_eq!(decoded.dimensions(), (40, 30), "{format:?}");
            }
        }
    }

    #[test]
    fn decodes_to_rgb_dropping_alpha() {
        let rgba = image::RgbaImage::from_fn(5, 4, |x, y| {
            image::Rgba([x as u8 * 50, y as u8 * 60, 9, 17])
        });
        let mut png = Vec::new();
        image::DynamicImage::ImageRgba8(rgba.clone())
            .write_to(&mut Cursor::new(&mut png), CodecFormat::Png)
            .unwrap();
        let decoded = decode_reference_bytes(&png, &limits()).unwrap();
        for (x, y, pixel) in decoded.enumerate_pixels() {
            let source = rgba.get_pixel(x, y).0;
            assert_eq!(pixel.0, [source[0], source[1], source[2]]);
        }
        let lossless = encode_image(&gradient(9, 7), ImageFormat::Webp, None).unwrap();
        assert_eq!(
            decode_reference_bytes(&lossless, &limits()).unwrap(),
            gradient(9, 7)
        );
    }

    #[test]
    fn refuses_what_is_not_png_jpeg_or_webp() {
        let err = refused(decode_reference_bytes(b"<!DOCTYPE html><html>", &limits()));
        assert!(matches!(err, ImagingError::NotAnImage { .. }), "{err}");
        assert!(err.to_string().contains("<!DOCTYPE html><"), "{err}");

        let err = refused(decode_reference_bytes(&[0, 1, 2, 250, 251], &limits()));
        assert!(
            err.to_string()
                .contains("5 bytes starting with 00 01 02 fa fb"),
            "{err}"
        );

        let err = refused(decode_reference_bytes(b"", &limits()));
        assert!(err.to_string().contains("no data"), "{err}");

        let err = refused(decode_reference_bytes(b"GIF89a\x01\x00\x01\x00", &limits()));
        assert!(
            matches!(&err, ImagingError::UnsupportedFormat { format } if format == "gif"),
            "{err}"
        );

        let mut truncated = encode_image(&gradient(20, 20), ImageFormat::Png, None).unwrap();
        truncated.truncate(60);
        let err = refused(decode_reference_bytes(&truncated, &limits()));
        assert!(
            matches!(&err, ImagingError::Decode { format, .. } if format == "png"),
            "{err}"
        );
    }

    #[test]
    fn refuses_too_many_bytes_before_sniffing() {
        let bytes = encode_image(&gradient(20, 20), ImageFormat::Png, None).unwrap();
        let limits = ReferenceLimits {
            max_bytes: bytes.len() - 1,
            ..limits()
        };
        let err = refused(decode_reference_bytes(&bytes, &limits));
        assert!(
            matches!(err, ImagingError::TooManyBytes { limit, size } if limit == bytes.len() - 1 && size == bytes.len() as u64),
            "{err}"
        );
    }
}
