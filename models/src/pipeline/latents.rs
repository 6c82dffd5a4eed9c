//! Between the VAE's latent space and the denoiser's: the scaling every family's VAE config
//! asks for, and decoding to images in [0, 1].
use candle_core::{DType, Device, Tensor};

use super::image_io;
use image::RgbImage;

use crate::error::Result;
use crate::rng::TorchGenerator;
use crate::vae::AutoencoderKL;

/// diffusers' image-to-image start: the input image resized and normalised, encoded by the VAE, a
/// posterior sample drawn from `rng` (the generator's first draw), scaled into the denoiser's
/// latent space and repeated for the `batch` (the image is encoded once).
#[allow(clippy::too_many_arguments)]
pub(super) fn encode_init_image(
    vae: &AutoencoderKL,
    vae_dtype: DType,
    device: &Device,
    image: &RgbImage,
    width: usize,
    height: usize,
    batch: usize,
    rng: &mut TorchGenerator,
) -> Result<Tensor> {
    let image = image_io::preprocess(image, width, height, device)?;
    let posterior = vae.encode(&image.to_dtype(vae_dtype)?)?;
    let sample_noise = rng.randn_tensor(posterior.mean.dims(), device, DType::F32)?;
    let encoded = posterior
        .sample(&sample_noise.to_dtype(vae_dtype)?)?
        .to_dtype(DType::F32)?;
    let latents = scale_latents(vae, device, &encoded)?;
    Ok(if batch > 1 {
        latents.repeat((batch, 1, 1, 1))?
    } else {
        latents
    })
}

/// VAE latents to the denoiser's latent space: `(z - mean) * scaling / std` when the VAE config
/// has per-channel statistics, `(z - shift) * scaling` otherwise (FLUX's shift_factor).
pub(super) fn scale_latents(
    vae: &AutoencoderKL,
    device: &Device,
    encoded: &Tensor,
) -> Result<Tensor> {
    let config = vae.config();
    let scaling = config.scaling_factor;
    if let (Some(mean), Some(std)) = (&config.latents_mean, &config.latents_std) {
        let (mean, std) = channel_stats(device, mean, std)?;
        return Ok(((encoded.broadcast_sub(&mean)? * scaling)?.broadcast_div(&std))?);
    }
    let shift = config.shift_factor.unwrap_or(0.0);
    Ok(((encoded - shift)? * scaling)?)
}

/// Unscales latents as the VAE config says (`z * std / scaling + mean` with per-channel
/// statistics, `z / scaling + shift` otherwise), decodes them, and maps the result to [0, 1].
pub(super) fn decode_with_vae(
    vae: &AutoencoderKL,
    vae_dtype: DType,
    device: &Device,
    latents: &Tensor,
) -> Result<Tensor> {
    let config = vae.config();
    let scaling = config.scaling_factor;
    let z = if let (Some(mean), Some(std)) = (&config.latents_mean, &config.latents_std) {
        let (mean, std) = channel_stats(device, mean, std)?;
        ((latents.broadcast_mul(&std)? / scaling)?.broadcast_add(&mean))?
    } else {
        ((latents / scaling)? + config.shift_factor.unwrap_or(0.0))?
    };
    // Tiled above about a megapixel, where a whole decode's activations risk running out of memory.
    let decoded = vae.decode_auto(&z.to_dtype(vae_dtype)?)?;
    image_io::denormalize(&decoded)
}

/// A VAE config's per-channel latent mean and std as (1, C, 1, 1) tensors.
fn channel_stats(device: &Device, mean: &[f64], std: &[f64]) -> Result<(Tensor, Tensor)> {
    let c = mean.len();
    let to_tensor = |v: &[f64]| -> Result<Tensor> {
        let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
        Ok(Tensor::from_vec(v, (1, c, 1, 1), device)?)
    };
    Ok((to_tensor(mean)?, to_tensor(std)?))
}
