//! Encoding generated images for the response. Every encoder here is deterministic: the same
//! pixels and settings give the same bytes.
use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ExtendedColorType, ImageEncoder, RgbImage};

use super::{ImageFormat, ImagingError};

/// JPEG quality when the request gives no `output_compression`.
const DEFAULT_JPEG_QUALITY: u8 = 90;

/// Encodes `image` as `format`. `compression` is the request's `output_compression` (0..=100):
/// ignored for PNG; the JPEG quality (default 90, 0 treated as 1); for WebP, `None` or 100 means
/// lossless and any other value a lossy encode at that quality.
pub fn encode_image(
    image: &RgbImage,
    format: ImageFormat,
    compression: Option<u8>,
) -> Result<Vec<u8>, ImagingError> {
    let fail = |reason: String| ImagingError::Encode {
        format: format.name(),
        width: image.width(),
        height: image.height(),
        reason,
    };
    if image.width() == 0 || image.height() == 0 {
        return Err(fail("the image is empty".into()));
    }
    let mut out = Vec::new();
    match format {
        ImageFormat::Png => {
            PngEncoder::new_with_quality(&mut out, CompressionType::Default, FilterType::Adaptive)
                .write_image(
                    image.as_raw(),
                    image.width(),
                    image.height(),
                    ExtendedColorType::Rgb8,
                )
                .map_err(|e| fail(e.to_string()))?;
        }
        ImageFormat::Jpeg => {
            let quality = compression.unwrap_or(DEFAULT_JPEG_QUALITY).clamp(1, 100);
            JpegEncoder::new_with_quality(&mut out, quality)
                .write_image(
                    image.as_raw(),
                    image.width(),
                    image.height(),
                    ExtendedColorType::Rgb8,
                )
                .map_err(|e| fail(e.to_string()))?;
        }
        ImageFormat::Webp => {
            let encoder = webp::Encoder::from_rgb(image.as_raw(), image.width(), image.height());
            let memory = match compression {
                None | Some(100..) => encoder.encode_simple(true, 75.0),
                Some(quality) => encoder.encode_simple(false, f32::from(quality)),
            }
            .map_err(|e| fail(format!("{e:?}")))?;
            out.extend_from_slice(&memory);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A smooth, slightly textured test image: gradients plus low-frequency waves.
    fn smooth_image(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            let (fx, fy) = (x as f32, y as f32);
            let wave = ((fx * 0.15).sin() + (fy * 0.11).cos()) * 40.0;
            image::Rgb([
                (fx * 255.0 / width as f32 * 0.7 + 40.0 + wave).clamp(0.0, 255.0) as u8,
                (fy * 255.0 / height as f32 * 0.7 + 30.0 - wave).clamp(0.0, 255.0) as u8,
                (128.0 + wave * 1.5).clamp(0.0, 255.0) as u8,
            ])
        })
    }

    fn decode(bytes: &[u8], expected: image::ImageFormat) -> RgbImage {
        assert_eq!(image::guess_format(bytes).unwrap(), expected);
        image::load_from_memory_with_format(bytes, expected)
            .unwrap()
            .to_rgb8()
    }

    fn psnr(a: &RgbImage, b: &RgbImage) -> f64 {
        assert_eq!(a.dimensions(), b.dimensions());
        let sum: f64 = a
            .as_raw()
            .iter()
            .zip(b.as_raw())
            .map(|(&p, &q)| (f64::from(p) - f64::from(q)).powi(2))
            .sum();
        let mse = sum / a.as_raw().len() as f64;
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }

    #[test]
    fn png_is_lossless_deterministic_and_ignores_compression() {
        let image = smooth_image(67, 41);
        let bytes = encode_image(&image, ImageFormat::Png, None).unwrap();
        assert_eq!(decode(&bytes, image::ImageFormat::Png), image);
        assert_eq!(encode_image(&image, ImageFormat::Png, None).unwrap(), bytes);
        assert_eq!(
            encode_image(&image, ImageFormat::Png, Some(5)).unwrap(),
            bytes
        );
    }

    #[test]
    fn jpeg_quality_follows_compression() {
        let image = smooth_image(96, 64);
        let default = encode_image(&image, ImageFormat::Jpeg, None).unwrap();
        let q90 = encode_image(&image, ImageFormat::Jpeg, Some(90)).unwrap();
        assert_eq!(default, q90, "the default quality is 90");
        assert_eq!(
            encode_image(&image, ImageFormat::Jpeg, Some(90)).unwrap(),
            q90
        );
        let back = decode(&q90, image::ImageFormat::Jpeg);
        assert_eq!(back.dimensions(), (96, 64));
        let quality = psnr(&image, &back);
        eprintln!("jpeg q90: {} bytes, PSNR {quality:.1} dB", q90.len());
        assert!(quality > 30.0, "jpeg q90 PSNR {quality:.1} dB");

        let q20 = encode_image(&image, ImageFormat::Jpeg, Some(20)).unwrap();
        assert!(
            q20.len() < q90.len(),
            "q20 {} vs q90 {}",
            q20.len(),
            q90.len()
        );
        let q0 = encode_image(&image, ImageFormat::Jpeg, Some(0)).unwrap();
        let q1 = encode_image(&image, ImageFormat::Jpeg, Some(1)).unwrap();
        assert_eq!(q0, q1, "quality 0 is encoded as 1");
        assert_eq!(decode(&q0, image::ImageFormat::Jpeg).dimensions(), (96, 64));
    }

    #[test]
    fn webp_is_lossless_by_default_and_at_100() {
        let image = smooth_image(50, 37);
        let lossless = encode_image(&image, ImageFormat::Webp, None).unwrap();
        assert_eq!(decode(&lossless, image::ImageFormat::WebP), image);
        assert_eq!(
            encode_image(&image, ImageFormat::Webp, None).unwrap(),
            lossless
        );
        let at_100 = encode_image(&image, ImageFormat::Webp, Some(100)).unwrap();
        assert_eq!(decode(&at_100, image::ImageFormat::WebP), image);
    }

    #[test]
    fn webp_is_lossy_below_100() {
        let image = smooth_image(96, 64);
        let q80 = encode_image(&image, ImageFormat::Webp, Some(80)).unwrap();
        assert_eq!(
            encode_image(&image, ImageFormat::Webp, Some(80)).unwrap(),
            q80
        );
        let back = decode(&q80, image::ImageFormat::WebP);
        assert_eq!(back.dimensions(), (96, 64));
        assert_ne!(back, image, "q80 must be lossy");
        let quality = psnr(&image, &back);
        eprintln!("webp q80: {} bytes, PSNR {quality:.1} dB", q80.len());
        assert!(quality > 30.0, "webp q80 PSNR {quality:.1} dB");
        let lossless = encode_image(&image, ImageFormat::Webp, None).unwrap();
        let q20 = encode_image(&image, ImageFormat::Webp, Some(20)).unwrap();
        assert!(
            q20.len() < q80.len(),
            "q20 {} vs q80 {}",
            q20.len(),
            q80.len()
        );
        assert!(
            q80.len() < lossless.len(),
            "q80 {} vs lossless {}",
            q80.len(),
            lossless.len()
        );
    }

    #[test]
    fn an_empty_image_is_an_error_not_a_panic() {
        let empty = RgbImage::new(0, 4);
        for format in [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::Webp] {
            let err = encode_image(&empty, format, Some(50)).unwrap_err();
            assert!(err.to_string().contains("0x4"), "{err}");
        }
    }
}
