//! diffusers' tiled VAE decode / encode (`AutoencoderKL.tiled_decode`, `tiled_encode`): the input
//! is cut into overlapping square tiles of the config's `sample_size` (in pixels), each tile runs
//! through the VAE alone, and neighbouring outputs are cross-faded linearly over a quarter of a
//! tile before each is cropped and stitched. The network's activations are then those of one tile
//! whatever the image (the stitched output and one row of tile outputs are kept besides).
use candle_core::Tensor;

use super::model::{AutoencoderKL, DiagonalGaussian};
use crate::error::ModelError;
use crate::Result;

/// Images above this many pixels (per batch item) are decoded in tiles by [`AutoencoderKL::decode_auto`].
///
/// A whole decode keeps full-resolution activations alive (SD's last up block: 128 channels of
/// f32 per pixel, several such tensors at once, about 2 GiB at one megapixel), and the mid-block
/// self-attention builds a (h/8 · w/8)² score matrix: 1 GiB at 1024², 16 GiB at 2048². Both grow
/// with the pixel count (the attention with its square), so beyond about one megapixel a
/// whole decode risks running out of memory, while below it tiling would only cost quality.
pub const TILING_MIN_PIXELS: usize = 1024 * 1024;

/// diffusers' `tile_overlap_factor`: neighbouring tiles share a quarter of a tile.
const TILE_OVERLAP_FACTOR: f64 = 0.25;

/// diffusers' `AutoencoderKL` default `sample_size`, used when the config has none.
const DEFAULT_SAMPLE_SIZE: usize = 32;

/// One tile's side: `sample` pixels, `latent` latent positions
/// (`int(sample_size / 2 ** (len(block_out_channels) - 1))`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileSizes {
    pub sample: usize,
    pub latent: usize,
}

/// How one pass cuts its input and stitches its output, in diffusers' terms.
#[derive(Debug, Clone, Copy)]
struct TilePlan {
    /// Input tile side.
    tile: usize,
    /// Distance between tile starts (`overlap_size`).
    stride: usize,
    /// Rows/columns cross-faded with the previous tile, in output units.
    blend_extent: usize,
    /// Output rows/columns kept from each tile.
    row_limit: usize,
}

impl TilePlan {
    /// `tile_in` / `tile_out`: a tile's side in the input's and the output's units.
    fn new(tile_in: usize, tile_out: usize) -> Result<Self> {
        let stride = (tile_in as f64 * (1.0 - TILE_OVERLAP_FACTOR)) as usize;
        let blend_extent = (tile_out as f64 * TILE_OVERLAP_FACTOR) as usize;
        if stride == 0 {
            return Err(ModelError::Unsupported(format!(
                "VAE tile of {tile_in} leaves no stride between tiles (sample_size too small)"
            )));
        }
        Ok(Self {
            tile: tile_in,
            stride,
            blend_extent,
            row_limit: tile_out - blend_extent,
        })
    }
}

impl AutoencoderKL {
    /// The tile sizes diffusers derives from the config's `sample_size` (an integer, or the first
    /// of a list; 32 when absent).
    pub fn tile_sizes(&self) -> Result<TileSizes> {
        let config = self.config();
        let value = match &config.sample_size {
            None => serde_json::Value::from(DEFAULT_SAMPLE_SIZE),
            Some(serde_json::Value::Array(list)) => {
                list.first().cloned().unwrap_or(serde_json::Value::Null)
            }
            Some(other) => other.clone(),
        };
        let sample = value.as_u64().filter(|&s| s > 0).ok_or_else(|| {
            ModelError::Unsupported(format!("VAE config sample_size = {value} for tiling"))
        })? as usize;
        let downscale = self.downscale();
        let latent = sample / downscale;
        if latent == 0 {
            return Err(ModelError::Unsupported(format!(
                "VAE config sample_size = {sample} is below the VAE's {downscale}x downscale"
            )));
        }
        Ok(TileSizes { sample, latent })
    }

    /// Pixels per latent position along a side: 2 ** (len(block_out_channels) - 1).
    fn downscale(&self) -> usize {
        1 << self.config().block_out_channels.len().saturating_sub(1)
    }

    /// The pipelines' policy: tile when one decoded image would exceed [`TILING_MIN_PIXELS`] and
    /// the latent is larger than one tile (diffusers' own condition in `_decode`). False when the
    /// config gives no usable tile size.
    pub fn needs_tiling(&self, latent_height: usize, latent_width: usize) -> bool {
        let Ok(tile) = self.tile_sizes() else {
            return false;
        };
        let downscale = self.downscale();
        let pixels = latent_height * downscale * latent_width * downscale;
        pixels > TILING_MIN_PIXELS && (latent_height > tile.latent || latent_width > tile.latent)
    }

    /// [`Self::tiled_decode`] when [`Self::needs_tiling`], else [`Self::decode`].
    pub fn decode_auto(&self, latents: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = latents.dims4()?;
        if self.needs_tiling(h, w) {
            self.tiled_decode(latents)
        } else {
            self.decode(latents)
        }
    }

    /// diffusers' `tiled_decode`: `latents` (already unscaled, as for [`Self::decode`]) in
    /// overlapping tiles of `tile_sizes().latent`, each through post_quant_conv and the decoder.
    /// Like diffusers' method it always tiles (a tile start every 3/4 tile, so even a latent of
    /// exactly one tile gets a second, partial one); diffusers' `decode` with `enable_tiling()`
    /// only calls it for a latent larger than one tile, which [`Self::needs_tiling`] includes.
    pub fn tiled_decode(&self, latents: &Tensor) -> Result<Tensor> {
        let sizes = self.tile_sizes()?;
        let plan = TilePlan::new(sizes.latent, sizes.sample)?;
        run_tiled(latents, plan, |tile| self.decode(tile))
    }

    /// diffusers' `tiled_encode`: `image` (NCHW in [-1, 1]) in overlapping tiles of
    /// `tile_sizes().sample` pixels; the stitched moments give the posterior. Always tiles, as
    /// diffusers' method (its `encode` calls it only for an image larger than one tile).
    pub fn tiled_encode(&self, image: &Tensor) -> Result<DiagonalGaussian> {
        let sizes = self.tile_sizes()?;
        let plan = TilePlan::new(sizes.sample, sizes.latent)?;
        let moments = run_tiled(image, plan, |tile| self.moments(tile))?;
        DiagonalGaussian::from_moments(&moments)
    }
}

/// Tile starts along a side of `len`: 0, stride, 2·stride, ... below `len` (Python's `range`).
fn tile_starts(len: usize, stride: usize) -> impl Iterator<Item = usize> {
    (0..len).step_by(stride)
}

/// Runs `f` on every tile, row by row, blending each output tile into the one above and the one
/// to its left and keeping its top-left `row_limit` square. Only the previous row of (blended)
/// outputs is kept, which is all the blends read.
fn run_tiled(
    input: &Tensor,
    plan: TilePlan,
    f: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let (_, _, height, width) = input.dims4()?;
    let mut stitched_rows = Vec::new();
    let mut above: Vec<Tensor> = Vec::new();
    for top in tile_starts(height, plan.stride) {
        let tile_h = plan.tile.min(height - top);
        let mut row: Vec<Tensor> = Vec::new();
        let mut cropped = Vec::new();
        for (j, left) in tile_starts(width, plan.stride).enumerate() {
            let tile_w = plan.tile.min(width - left);
            let tile = input
                .narrow(2, top, tile_h)?
                .narrow(3, left, tile_w)?
                .contiguous()?;
            let mut out = f(&tile)?;
            // diffusers blends in place, so later tiles read the blended neighbours: keep those.
            if let Some(up) = above.get(j) {
                out = blend(up, &out, plan.blend_extent, 2)?;
            }
            if let Some(prev) = row.last() {
                out = blend(prev, &out, plan.blend_extent, 3)?;
            }
            let (_, _, out_h, out_w) = out.dims4()?;
            cropped.push(out.narrow(2, 0, plan.row_limit.min(out_h))?.narrow(
                3,
                0,
                plan.row_limit.min(out_w),
            )?);
            row.push(out);
        }
        stitched_rows.push(Tensor::cat(&cropped, 3)?);
        above = row;
    }
    Ok(Tensor::cat(&stitched_rows, 2)?)
}

/// diffusers' `blend_v` (`dim` 2) / `blend_h` (`dim` 3): the first `extent` rows/columns of `b`
/// become `a`'s last ones · (1 - k/extent) + `b`'s · (k/extent), with extent capped by both sizes.
fn blend(a: &Tensor, b: &Tensor, extent: usize, dim: usize) -> Result<Tensor> {
    let a_len = a.dim(dim)?;
    let b_len = b.dim(dim)?;
    let extent = extent.min(a_len).min(b_len);
    if extent == 0 {
        return Ok(b.clone());
    }
    // As torch for f32: each weight is computed in f64 and rounded once to f32.
    let weight = |f: fn(f64) -> f64| -> Result<Tensor> {
        let values: Vec<f32> = (0..extent)
            .map(|k| f(k as f64 / extent as f64) as f32)
            .collect();
        let mut shape = [1usize; 4];
        shape[dim] = extent;
        Ok(Tensor::from_vec(values, &shape[..], b.device())?.to_dtype(b.dtype())?)
    };
    let keep_a = weight(|t| 1.0 - t)?;
    let keep_b = weight(|t| t)?;
    let head = (a
        .narrow(dim, a_len - extent, extent)?
        .broadcast_mul(&keep_a)?
        + b.narrow(dim, 0, extent)?.broadcast_mul(&keep_b)?)?;
    let tail = b.narrow(dim, extent, b_len - extent)?;
    Ok(Tensor::cat(&[&head, &tail], dim)?)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{DType, Device, Tensor};
    use candle_nn::VarBuilder;

    use super::*;
    use crate::vae::VaeConfig;

    const PARITY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/parity");
    const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/vae-tiling");

    /// A fixture VAE (f16 weights computed in f32) with its `sample_size` replaced by `tile`, as
    /// diffusers' `from_pretrained(..., sample_size=tile)` does.
    fn fixture_vae(case: &str, tile: usize) -> AutoencoderKL {
        let dir = format!("{PARITY}/{case}/model/vae");
        let text = std::fs::read_to_string(format!("{dir}/config.json")).expect("vae config");
        let mut config = VaeConfig::from_json(&text).expect("parse vae config");
        config.sample_size = Some(serde_json::Value::from(tile));
        let file = format!("{dir}/diffusion_pytorch_model.safetensors");
        // SAFETY: a committed fixture, not modified while mapped.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[file], DType::F32, &Device::Cpu) }
            .expect("vae weights");
        AutoencoderKL::new(vb, &config).expect("vae")
    }

    fn data(file: &str) -> HashMap<String, Tensor> {
        candle_core::safetensors::load(format!("{DATA}/{file}"), &Device::Cpu).expect(file)
    }

    fn abs_diff(a: &Tensor, b: &Tensor) -> (f32, f32) {
        assert_eq!(a.dims(), b.dims());
        let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap();
        let max = d.max(0).unwrap().to_scalar::<f32>().unwrap();
        let mean = d.mean(0).unwrap().to_scalar::<f32>().unwrap();
        (max, mean)
    }

    fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f32) {
        let (max, _) = abs_diff(got, want);
        assert!(max <= tol, "{what}: max abs diff {max} > {tol}");
    }

    /// Ours against diffusers' `enable_tiling(); tiled_decode / tiled_encode` on the same inputs.
    fn check_against_diffusers(case: &str, prefix: &str, tile: usize) {
        let vae = fixture_vae(case, tile);
        let inputs = data("inputs.safetensors");
        let want = data(&format!("{prefix}-tile{tile}.safetensors"));
        let latents = &inputs[&format!("{prefix}_latents")];
        let decoded = vae.tiled_decode(latents).expect("tiled decode");
        assert_close("tiled_decode", &decoded, &want["decoded"], 1e-4);
        let posterior = vae.tiled_encode(&inputs["image"]).expect("tiled encode");
        assert_close("tiled_encode mean", &posterior.mean, &want["mean"], 1e-4);
        assert_close(
            "tiled_encode logvar",
            &posterior.logvar,
            &want["logvar"],
            1e-4,
        );
    }

    /// The decoder's banded wiring (banded resnets, the last level computed inside the
    /// upsampler's buffer, the two-piece upsampler, the banded output conv) gives the plain
    /// decode's bits: every layer banded, in bands of a few rows, against no banding at all.
    #[test]
    fn banded_decode_gives_the_plain_bits() {
        // Channels halve into the last level (as SD's 256 -> 128), so its first resnet has the
        // 1x1 shortcut the in-place split needs; deterministic random weights.
        let config = VaeConfig::from_json(
            r#"{"block_out_channels": [16, 32, 32], "layers_per_block": 2, "norm_num_groups": 8,
                "latent_channels": 4, "in_channels": 3, "out_channels": 3, "sample_size": 64,
                "scaling_factor": 0.18215,
                "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
                "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]}"#,
        )
        .expect("vae config");
        let vb = crate::tiny_weights::deterministic_var_builder(11, DType::F32, &Device::Cpu);
        let vae = AutoencoderKL::new(vb, &config).expect("vae");
        let latents = crate::rng::TorchGenerator::new(3)
            .randn_tensor(&[1, 4, 9, 7], &Device::Cpu, DType::F32)
            .expect("latents");
        let latents = &latents;
        let plain = crate::nn::banded::with_sizes(usize::MAX, 0, || vae.decode(latents))
            .expect("plain decode");
        let banded =
            crate::nn::banded::with_sizes(0, 2048, || vae.decode(latents)).expect("banded decode");
        let bits = |t: &Tensor| -> Vec<u32> {
            let values = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            values.iter().map(|v| v.to_bits()).collect()
        };
        assert_eq!(plain.dims(), banded.dims());
        assert!(bits(&plain) == bits(&banded), "banded decode differs");
    }

    #[test]
    fn sd_32px_tiles_match_diffusers() {
        check_against_diffusers("sd-turbo-1step", "sd", 32);
    }

    #[test]
    fn sd_64px_tiles_match_diffusers() {
        check_against_diffusers("sd-turbo-1step", "sd", 64);
    }

    #[test]
    fn flux_32px_tiles_match_diffusers() {
        check_against_diffusers("flux-schnell-4step", "flux", 32);
    }

    #[test]
    fn tile_sizes_follow_sample_size() {
        let mut vae = fixture_vae("sd-turbo-1step", 512);
        assert_eq!(
            vae.tile_sizes().unwrap(),
            TileSizes {
                sample: 512,
                latent: 64
            }
        );
        vae = fixture_vae("sd-turbo-1step", 32);
        assert_eq!(
            vae.tile_sizes().unwrap(),
            TileSizes {
                sample: 32,
                latent: 4
            }
        );
    }

    /// Mean |x[k] - x[k-1]| along `dim` (2: rows, 3: columns) for every k ≥ 1.
    fn step_profile(image: &Tensor, dim: usize) -> Vec<f32> {
        let n = image.dim(dim).unwrap();
        let steps = (image.narrow(dim, 1, n - 1).unwrap() - image.narrow(dim, 0, n - 1).unwrap())
            .unwrap()
            .abs()
            .unwrap();
        let other = if dim == 2 { 3 } else { 2 };
        steps
            .mean(other)
            .unwrap()
            .mean(1)
            .unwrap()
            .mean(0)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    }

    fn std(t: &Tensor) -> f32 {
        let t = t.flatten_all().unwrap();
        let mean = t.mean(0).unwrap().to_scalar::<f32>().unwrap();
        let var = (t - mean as f64).unwrap().sqr().unwrap().mean(0).unwrap();
        var.to_scalar::<f32>().unwrap().sqrt()
    }

    /// Tiled against whole decodes. The fixture VAEs have random weights, so their GroupNorms and
    /// mid-block attention see very different statistics per tile than over the whole latent, and
    /// tiles of a few latents differ from the whole decode by about the output's own spread
    /// (diffusers' tiled_decode gives the same numbers, see the parity tests above). What must
    /// hold is that the difference vanishes as tiles grow (zero once one tile covers the latent)
    /// and that tiling keeps the image's overall contrast (no blend darkening or blow-up).
    #[test]
    fn tiled_passes_converge_to_whole_passes() {
        let inputs = data("inputs.safetensors");
        for (case, prefix) in [("sd-turbo-1step", "sd"), ("flux-schnell-4step", "flux")] {
            let latents = &inputs[&format!("{prefix}_latents")];
            let image = &inputs["image"];
            let vae = fixture_vae(case, 32);
            let whole = [
                vae.decode(latents).unwrap(),
                vae.encode(image).unwrap().mean,
            ];
            let mut previous = [f32::INFINITY; 2];
            for tile in [32, 64, 96, 128] {
                let vae = fixture_vae(case, tile);
                let tiled = [
                    vae.tiled_decode(latents).unwrap(),
                    vae.tiled_encode(image).unwrap().mean,
                ];
                for (k, what) in ["decode", "encode mean"].into_iter().enumerate() {
                    let (max, mean) = abs_diff(&tiled[k], &whole[k]);
                    let std_ratio = std(&tiled[k]) / std(&whole[k]);
                    println!(
                        "{prefix} {what}, {tile}px tiles vs whole: max {max:.3} mean {mean:.3}, std ratio {std_ratio:.3}"
                    );
                    assert!(
                        mean < previous[k],
                        "{prefix} {what} {tile}px: diff did not shrink"
                    );
                    assert!(
                        (0.9..1.1).contains(&std_ratio),
                        "{prefix} {what} {tile}px: tiled/whole std ratio {std_ratio}"
                    );
                    previous[k] = mean;
                }
            }
            // 128 px = 16 latents covers the 96x80 image: one tile, exactly the whole pass.
            assert_eq!(
                previous, [0.0; 2],
                "{prefix}: one tile must equal the whole pass"
            );
        }
    }

    /// At every seam (where one tile's crop ends and where its blend with the previous tile ends)
    /// the step between neighbouring rows / columns is an ordinary step of the image: at most
    /// 1.5 times the image's mean step (measured: at most 1.27 times).
    #[test]
    fn tiled_decode_has_no_seams() {
        let inputs = data("inputs.safetensors");
        for (case, prefix) in [("sd-turbo-1step", "sd"), ("flux-schnell-4step", "flux")] {
            for tile in [32, 64] {
                let vae = fixture_vae(case, tile);
                let image = vae
                    .tiled_decode(&inputs[&format!("{prefix}_latents")])
                    .unwrap();
                let sizes = vae.tile_sizes().unwrap();
                let plan = TilePlan::new(sizes.latent, sizes.sample).unwrap();
                for dim in [2, 3] {
                    let steps = step_profile(&image, dim);
                    let mean = steps.iter().sum::<f32>() / steps.len() as f32;
                    let seams = (plan.row_limit..image.dim(dim).unwrap())
                        .step_by(plan.row_limit)
                        .flat_map(|r| [r, r + plan.blend_extent]);
                    for seam in seams.filter(|&r| r < image.dim(dim).unwrap()) {
                        // steps[k] is the step from row k to row k + 1.
                        let ratio = steps[seam - 1] / mean;
                        println!("{prefix} {tile}px dim {dim} seam {seam}: step / mean {ratio:.2}");
                        assert!(
                            ratio < 1.5,
                            "{prefix} {tile}px: seam at {seam} (dim {dim}) steps {ratio}x the mean"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn policy_tiles_only_large_images_larger_than_a_tile() {
        // The fixture's own sample_size: 64 px tiles, 8 latents.
        let vae = fixture_vae("sd-turbo-1step", 64);
        assert!(
            !vae.needs_tiling(128, 128),
            "exactly one megapixel decodes whole"
        );
        assert!(vae.needs_tiling(129, 128));
        assert!(vae.needs_tiling(96, 256));
        assert!(!vae.needs_tiling(8, 8));
        // Tiles as large as the image: nothing to gain from tiling.
        let huge_tiles = fixture_vae("sd-turbo-1step", 2048);
        assert!(!huge_tiles.needs_tiling(200, 200));
        assert!(huge_tiles.needs_tiling(257, 200));

        let latents = &data("inputs.safetensors")["sd_latents"];
        let auto = vae.decode_auto(latents).unwrap();
        let (max, _) = abs_diff(&auto, &vae.decode(latents).unwrap());
        assert_eq!(max, 0.0, "a small image decodes whole");
    }

    #[test]
    fn unusable_sample_size_is_an_error_not_a_panic() {
        let mut vae = fixture_vae("sd-turbo-1step", 4); // below the 8x downscale
        assert!(vae.tile_sizes().is_err());
        assert!(!vae.needs_tiling(1000, 1000));
        let latents = &data("inputs.safetensors")["sd_latents"];
        assert!(vae.tiled_decode(latents).is_err());
        vae = fixture_vae("sd-turbo-1step", 8); // 1-latent tiles leave no stride
        assert!(vae.tiled_decode(latents).is_err());
    }
}
