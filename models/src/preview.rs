//! Cheap previews of the denoising state: a linear map from latent channels to RGB, fitted to the
//! model's own VAE decoder at load time (least squares on a seeded random latent), so it works for
//! any VAE, SD or SDXL, finetuned or not, without stored coefficients.
use candle_core::{DType, Device, Tensor};
use image::RgbImage;

use crate::error::{ModelError, Result};
use crate::rng::TorchGenerator;

/// Latent cells per side of the fitting sample (decoded at 8x that size).
const FIT_SIDE: usize = 16;
/// Previews are at most this many pixels on the long side.
pub const MAX_PREVIEW_SIDE: usize = 512;

/// `rgb = weights^T · latent + bias`, per latent cell, in [0, 1].
#[derive(Clone, Debug, PartialEq)]
pub struct LatentPreview {
    channels: usize,
    /// `channels` rows of (r, g, b).
    weights: Vec<[f64; 3]>,
    bias: [f64; 3],
}

impl LatentPreview {
    /// Fits the map: decodes a seeded N(0, 1) latent (1, channels, 16, 16) with `decode` (latents in
    /// the UNet's space to images in [0, 1], NCHW), average-pools the image to the latent grid, and
    /// solves the least-squares problem for each colour.
    // Matrix code reads clearer with indices.
    #[allow(clippy::needless_range_loop)]
    pub fn fit(
        channels: usize,
        device: &Device,
        decode: impl Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<Self> {
        let latents = TorchGenerator::new(0).randn_tensor(
            &[1, channels, FIT_SIDE, FIT_SIDE],
            device,
            DType::F32,
        )?;
        let image = decode(&latents)?
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?;
        let (_, c, h, w) = image.dims4()?;
        if c != 3 || h % FIT_SIDE != 0 || w % FIT_SIDE != 0 {
            return Err(ModelError::Unsupported(format!(
                "cannot fit a latent preview to a {c}x{h}x{w} VAE output"
            )));
        }
        let pooled = image.avg_pool2d((h / FIT_SIDE, w / FIT_SIDE))?;
        let x = latents
            .to_device(&Device::Cpu)?
            .flatten_from(2)?
            .squeeze(0)?
            .to_vec2::<f32>()?; // (C, N)
        let y = pooled.flatten_from(2)?.squeeze(0)?.to_vec2::<f32>()?; // (3, N)
        let n = FIT_SIDE * FIT_SIDE;
        let k = channels + 1; // + bias
        let feature = |i: usize, cell: usize| if i < channels { x[i][cell] as f64 } else { 1.0 };
        // Normal equations (X^T X) w = X^T y, a k x k system solved once per colour.
        let mut xtx = vec![vec![0.0f64; k]; k];
        let mut xty = vec![[0.0f64; 3]; k];
        for cell in 0..n {
            for i in 0..k {
                let fi = feature(i, cell);
                for (j, slot) in xtx[i].iter_mut().enumerate() {
                    *slot += fi * feature(j, cell);
                }
                for (colour, value) in xty[i].iter_mut().enumerate() {
                    *value += fi * y[colour][cell] as f64;
                }
            }
        }
        let solution = solve(xtx, xty)
            .ok_or_else(|| ModelError::Unsupported("the latent preview fit is singular".into()))?;
        Ok(Self {
            channels,
            weights: solution[..channels].to_vec(),
            bias: solution[channels],
        })
    }

    /// One small RGB image per batch item from latents (n, C, h, w): at latent resolution, scaled
    /// up by an integer factor while the long side stays within [`MAX_PREVIEW_SIDE`].
    pub fn render(&self, latents: &Tensor) -> Result<Vec<RgbImage>> {
        let latents = latents.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
        let (n, c, h, w) = latents.dims4()?;
        if c != self.channels {
            return Err(ModelError::Unsupported(format!(
                "preview fitted for {} channels, got {c}",
                self.channels
            )));
        }
        let data = latents.flatten_all()?.to_vec1::<f32>()?;
        let scale = (MAX_PREVIEW_SIDE / h.max(w).max(1)).clamp(1, 8);
        let plane = h * w;
        (0..n)
            .map(|b| {
                let base = b * c * plane;
                let mut small = RgbImage::new(w as u32, h as u32);
                for (cell, pixel) in small.pixels_mut().enumerate() {
                    let mut rgb = self.bias;
                    for (ch, weight) in self.weights.iter().enumerate() {
                        let v = data[base + ch * plane + cell] as f64;
                        for colour in 0..3 {
                            rgb[colour] += weight[colour] * v;
                        }
                    }
                    pixel.0 = rgb.map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8);
                }
                if scale == 1 {
                    small
                } else {
                    image::imageops::resize(
                        &small,
                        (w * scale) as u32,
                        (h * scale) as u32,
                        image::imageops::FilterType::Triangle,
                    )
                }
            })
            .map(Ok)
            .collect()
    }
}

/// Previews from a tiny autoencoder (TAESD family): `decode` of the predicted clean latents,
/// brought to [0, 1] and shrunk to at most [`MAX_PREVIEW_SIDE`] on the long side.
pub fn render_with_tiny_autoencoder(
    decoder: &crate::taesd::TinyAutoencoder,
    latents: &Tensor,
) -> Result<Vec<RgbImage>> {
    let decoded = decoder.decode(latents)?;
    // diffusers leaves the output unclamped; the image processor clamps when it denormalises.
    let images = crate::pipeline::image_io::to_rgb_images(
        &crate::pipeline::image_io::denormalize(&decoded)?,
    )?;
    Ok(images
        .into_iter()
        .map(|img| {
            let (w, h) = img.dimensions();
            let long = w.max(h) as usize;
            if long <= MAX_PREVIEW_SIDE {
                img
            } else {
                let scale = MAX_PREVIEW_SIDE as f64 / long as f64;
                let (nw, nh) = (
                    ((w as f64 * scale).round() as u32).max(1),
                    ((h as f64 * scale).round() as u32).max(1),
                );
                image::imageops::resize(&img, nw, nh, image::imageops::FilterType::Triangle)
            }
        })
        .collect())
}

/// Gaussian elimination with partial pivoting for `a x = b` with three right-hand sides.
#[allow(clippy::needless_range_loop)]
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<[f64; 3]>) -> Option<Vec<[f64; 3]>> {
    let k = a.len();
    for col in 0..k {
        let pivot = (col..k).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col].abs() < 1e-12 {
            return None;
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        for row in col + 1..k {
            let factor = a[row][col] / a[col][col];
            for j in col..k {
                a[row][j] -= factor * a[col][j];
            }
            for colour in 0..3 {
                b[row][colour] -= factor * b[col][colour];
            }
        }
    }
    let mut x = vec![[0.0f64; 3]; k];
    for row in (0..k).rev() {
        for colour in 0..3 {
            let mut sum = b[row][colour];
            for j in row + 1..k {
                sum -= a[row][j] * x[j][colour];
            }
            x[row][colour] = sum / a[row][row];
        }
    }
    Some(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A "VAE" that is exactly linear: the fit must recover its coefficients.
    #[test]
    fn recovers_a_linear_decoder() {
        let weights = [
            [0.3f32, -0.1, 0.2],
            [0.05, 0.4, -0.3],
            [-0.2, 0.1, 0.1],
            [0.1, 0.0, 0.25],
        ];
        let bias = [0.5f32, 0.45, 0.55];
        let decode = |z: &Tensor| -> Result<Tensor> {
            let (_, c, h, w) = z.dims4()?;
            let z = z.flatten_from(2)?.squeeze(0)?.to_vec2::<f32>()?;
            let mut out = vec![0f32; 3 * h * w];
            for colour in 0..3 {
                for cell in 0..h * w {
                    let mut v = bias[colour];
                    for ch in 0..c {
                        v += weights[ch][colour] * z[ch][cell];
                    }
                    out[colour * h * w + cell] = v;
                }
            }
            // Upsample 8x by repetition, as a decoder's output grid.
            let t = Tensor::from_vec(out, (1, 3, h, w), &Device::Cpu)?;
            Ok(t.upsample_nearest2d(h * 8, w * 8)?)
        };
        let fitted = LatentPreview::fit(4, &Device::Cpu, decode).unwrap();
        for (ch, row) in fitted.weights.iter().enumerate() {
            for colour in 0..3 {
                assert!(
                    (row[colour] - weights[ch][colour] as f64).abs() < 1e-5,
                    "{:?}",
                    fitted.weights
                );
            }
        }
        assert!((fitted.bias[1] - 0.45).abs() < 1e-5);
        let latents = Tensor::zeros((2, 4, 8, 6), DType::F32, &Device::Cpu).unwrap();
        let images = fitted.render(&latents).unwrap();
        assert_eq!(images.len(), 2);
        assert_eq!(images[0].dimensions(), (6 * 8, 8 * 8));
        assert_eq!(images[0].get_pixel(0, 0).0, [128, 115, 140]);
    }
}
