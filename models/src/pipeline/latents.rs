//! Between the VAE's latent space and the denoiser's: the scaling every family's VAE config
//! asks for, and decoding to images in [0, 1].
use candle_core::{DType, Device, Tensor};

use super::image_io;
use crate::error::Result;
use crate::vae::AutoencoderKL;

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
