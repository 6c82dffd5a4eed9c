//! FluxPipeline's latent packing: 2x2 patches of the (B, C, H, W) latents become tokens of 4C
//! channels, and the RoPE position ids of those tokens and of the text.
use candle_core::{DType, Device, Result, Tensor};

fn even(what: &str, value: usize) -> Result<()> {
    if value % 2 == 1 || value == 0 {
        candle_core::bail!("FLUX latent {what} {value} is not a positive even number");
    }
    Ok(())
}

/// `_pack_latents`: (B, C, H, W) -> (B, H/2 * W/2, 4C), channel order (c, dy, dx).
pub fn pack_latents(latents: &Tensor) -> Result<Tensor> {
    let (batch, channels, height, width) = latents.dims4()?;
    even("height", height)?;
    even("width", width)?;
    latents
        .reshape((batch, channels, height / 2, 2, width / 2, 2))?
        .permute((0, 2, 4, 1, 3, 5))?
        .contiguous()?
        .reshape((batch, (height / 2) * (width / 2), channels * 4))
}

/// `_unpack_latents`: (B, H/2 * W/2, 4C) -> (B, C, H, W); `latent_height`/`latent_width` are H, W.
pub fn unpack_latents(
    packed: &Tensor,
    latent_height: usize,
    latent_width: usize,
) -> Result<Tensor> {
    let (batch, tokens, channels) = packed.dims3()?;
    even("height", latent_height)?;
    even("width", latent_width)?;
    let (rows, cols) = (latent_height / 2, latent_width / 2);
    if tokens != rows * cols || channels % 4 != 0 {
        candle_core::bail!(
            "packed FLUX latents {:?} do not fit a {latent_height}x{latent_width} latent",
            packed.shape()
        );
    }
    packed
        .reshape((batch, rows, cols, channels / 4, 2, 2))?
        .permute((0, 3, 1, 4, 2, 5))?
        .contiguous()?
        .reshape((batch, channels / 4, latent_height, latent_width))
}

/// `_prepare_latent_image_ids(H/2, W/2)`: (H/2 * W/2, 3) f32 rows [0, row, column] in row-major order.
pub fn latent_image_ids(
    latent_height: usize,
    latent_width: usize,
    device: &Device,
) -> Result<Tensor> {
    even("height", latent_height)?;
    even("width", latent_width)?;
    let (rows, cols) = (latent_height / 2, latent_width / 2);
    let data: Vec<f32> = (0..rows)
        .flat_map(|r| (0..cols).flat_map(move |c| [0.0, r as f32, c as f32]))
        .collect();
    Tensor::from_vec(data, (rows * cols, 3), device)
}

/// The text tokens' ids: all zeros, (len, 3) f32.
pub fn text_ids(len: usize, device: &Device) -> Result<Tensor> {
    Tensor::zeros((len, 3), DType::F32, device)
}
