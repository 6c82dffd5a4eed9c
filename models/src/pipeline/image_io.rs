//! Pixels in and out of the VAE, with diffusers' exact normalisation and rounding.
use candle_core::{DType, Device, Tensor};
use image::{imageops::FilterType, RgbImage};

use crate::error::{ModelError, Result};

/// VAE output (NCHW, about [-1, 1]) to images in [0, 1] as diffusers' `denormalize`: `(x / 2 + 0.5).clamp(0, 1)`.
pub fn denormalize(decoded: &Tensor) -> Result<Tensor> {
    Ok(((decoded.to_dtype(DType::F32)? / 2.0)? + 0.5)?.clamp(0f32, 1f32)?)
}

/// Images in [0, 1] (NCHW f32) to 8-bit RGB as diffusers' `numpy_to_pil`: `(x * 255).round()`,
/// numpy's round-half-to-even.
pub fn to_rgb_images(images: &Tensor) -> Result<Vec<RgbImage>> {
    let images = images.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    let (n, c, h, w) = images.dims4()?;
    if c != 3 {
        return Err(ModelError::Unsupported(format!(
            "the VAE produced {c} channels; only RGB output is supported"
        )));
    }
    let hwc = images.permute((0, 2, 3, 1))?.contiguous()?;
    let data = hwc.flatten_all()?.to_vec1::<f32>()?;
    let per_image = h * w * 3;
    (0..n)
        .map(|i| {
            let bytes = data[i * per_image..(i + 1) * per_image]
                .iter()
                .map(|v| (v * 255.0).round_ties_even().clamp(0.0, 255.0) as u8)
                .collect();
            RgbImage::from_raw(w as u32, h as u32, bytes)
                .ok_or_else(|| ModelError::Unsupported("image buffer size mismatch".into()))
        })
        .collect()
}

/// An input image as the VAE encoder takes it: resized to `width`x`height` when it differs
/// (Lanczos, as diffusers' image processor), scaled to [0, 1] in f32 then to [-1, 1]; NCHW, batch 1.
pub fn preprocess(
    image: &RgbImage,
    width: usize,
    height: usize,
    device: &Device,
) -> Result<Tensor> {
    let resized;
    let image = if image.width() as usize != width || image.height() as usize != height {
        resized = image::imageops::resize(image, width as u32, height as u32, FilterType::Lanczos3);
        &resized
    } else {
        image
    };
    let data: Vec<f32> = image
        .as_raw()
        .iter()
        .map(|&b| 2.0f32 * (b as f32 / 255.0f32) - 1.0f32)
        .collect();
    let hwc = Tensor::from_vec(data, (1, height, width, 3), &Device::Cpu)?;
    Ok(hwc.permute((0, 3, 1, 2))?.contiguous()?.to_device(device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_half_to_even_like_numpy() {
        // f32 inputs whose product with 255 is exactly k + 0.5 (0.5, 1.5), and ordinary values;
        // the expected bytes are numpy's `(np.float32(v) * 255).round()`.
        let t = Tensor::from_vec(
            vec![
                0.001_960_784_4f32,
                0.005_882_353,
                1.0,
                0.0,
                0.25,
                0.75,
                0.1,
                0.2,
                0.3,
                0.4,
                0.6,
                0.9,
            ],
            (1, 3, 2, 2),
            &Device::Cpu,
        )
        .unwrap();
        let img = &to_rgb_images(&t).unwrap()[0];
        assert_eq!(img.get_pixel(0, 0).0, [0, 64, 76]);
        assert_eq!(img.get_pixel(1, 0).0, [2, 191, 102]);
        assert_eq!(img.get_pixel(0, 1).0, [255, 26, 153]);
        assert_eq!(img.get_pixel(1, 1).0, [0, 51, 230]);
    }

    #[test]
    fn preprocess_maps_bytes_to_minus_one_one() {
        let img = RgbImage::from_raw(1, 1, vec![0, 255, 128]).unwrap();
        let t = preprocess(&img, 1, 1, &Device::Cpu).unwrap();
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v[0], -1.0);
        assert_eq!(v[1], 1.0);
        assert!((v[2] - (2.0 * (128.0 / 255.0) - 1.0)).abs() < 1e-7);
    }
}
