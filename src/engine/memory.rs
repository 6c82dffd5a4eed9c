//! How many pixels one request may ask for on this device, so that a request too big for memory
//! is refused up front instead of failing (or swapping) after minutes.
//!
//! The estimate is the VAE decode, the stage whose memory grows fastest with the output: every
//! supported family's VAE decoder (SD 1/2, SDXL, FLUX; `block_out_channels` [128, 256, 512, 512])
//! upsamples its 256-channel features to the full output resolution before its last up block, and
//! there an input, a normalized copy and a convolution output (the residual) are alive at once:
//! 256 channels x 3 tensors x bytes per value, per output pixel. f32 (4 bytes) for SD/SDXL at
//! every dtype, since their VAE runs upcast (`force_upcast`); FLUX's VAE runs in the model dtype.
//! That is 3 KiB per pixel at f32: a 512x512 image needs about 768 MiB of decode activations, a
//! 1024x1024 one 3 GiB. The budget is [`MEMORY_SHARE`] of the memory available when the server
//! starts (`MemAvailable` on Linux for the CPU); the weights are loaded by then, so they are
//! already out of it. GPUs report no free memory through candle, so there the limit comes only from
//! `--max-pixels` (or stays off).
use imago_models::pipeline::LoadedModel;
use imago_models::specs::Family;
use imago_models::DType;

/// Channels of the widest full-resolution activation in the VAE decoder.
const FULL_RES_CHANNELS: u64 = 256;
/// Tensors of that size alive at once (input, normalized copy, convolution output).
const LIVE_TENSORS: u64 = 3;
/// The part of the available memory one request's decode may take (the rest: the denoiser's
/// activations, encoded images, other processes).
pub const MEMORY_SHARE: f64 = 0.5;

/// Bytes of decode activations per output pixel for `model`.
pub fn bytes_per_pixel(family: Family, dtype: DType) -> u64 {
    let value_bytes = match family {
        // SD/SDXL VAEs are upcast to f32 (their config's force_upcast).
        Family::StableDiffusion | Family::StableDiffusionXl => 4,
        Family::Flux => dtype.size_in_bytes() as u64,
    };
    FULL_RES_CHANNELS * LIVE_TENSORS * value_bytes
}

/// The most pixels (n x width x height) one request may ask for, and where the figure comes from;
/// `None` when nothing bounds it (a GPU without `--max-pixels`).
pub fn pixel_limit(model: &LoadedModel, max_pixels: Option<u64>) -> Option<(u64, String)> {
    if let Some(limit) = max_pixels {
        return Some((limit, format!("--max-pixels {limit}")));
    }
    if !model.device().is_cpu() {
        return None;
    }
    let available = available_memory_bytes()?;
    let per_pixel = bytes_per_pixel(model.family(), model.dtype());
    Some(limit_from_memory(available, per_pixel))
}

/// The pixel budget of `available` bytes at `per_pixel` bytes each.
fn limit_from_memory(available: u64, per_pixel: u64) -> (u64, String) {
    let budget = (available as f64 * MEMORY_SHARE) as u64;
    let limit = budget / per_pixel.max(1);
    (
        limit,
        format!(
            "memory estimate: {per_pixel} bytes of VAE decode activations per pixel against half of \
             the {} MiB available at start-up; --max-pixels sets the limit",
            available / (1024 * 1024)
        ),
    )
}

/// `MemAvailable` from /proc/meminfo, in bytes.
fn available_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_available(&meminfo)
}

fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line
        .trim_start_matches("MemAvailable:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sd_decode_costs_three_kib_per_pixel_at_any_dtype() {
        assert_eq!(bytes_per_pixel(Family::StableDiffusion, DType::F32), 3072);
        assert_eq!(bytes_per_pixel(Family::StableDiffusionXl, DType::F16), 3072);
        assert_eq!(bytes_per_pixel(Family::Flux, DType::BF16), 1536);
    }

    #[test]
    fn the_budget_is_half_the_available_memory() {
        // 8 GiB available: 4 GiB / 3 KiB = 1398101 pixels (a 1024x1024 image fits, two do not).
        let (limit, why) = limit_from_memory(8 << 30, 3072);
        assert_eq!(limit, 1_398_101);
        assert!(
            why.contains("8192 MiB") && why.contains("--max-pixels"),
            "{why}"
        );
    }

    #[test]
    fn reads_mem_available() {
        let meminfo =
            "MemTotal:       16384000 kB\nMemFree:  100 kB\nMemAvailable:    8000000 kB\n";
        assert_eq!(parse_mem_available(meminfo), Some(8_192_000_000));
        assert_eq!(parse_mem_available("MemTotal: 1 kB\n"), None);
    }
}
