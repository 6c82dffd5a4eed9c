//! Large feature maps (the VAE decoder at full resolution) computed a band of rows at a time, so
//! that the normalized copy of a layer's input and its upsampled input never exist in full.
//!
//! A 3x3 same-size convolution's output rows `r0..r1` need its input rows `r0 - 1..r1 + 1`
//! only: each band runs the layer's packed convolution on those rows (the two halo rows' own
//! outputs are dropped) and is copied into the full output. Each output value is the same dot
//! product over the same inputs as in the whole convolution (the kernels' results per pixel do
//! not depend on the image size), so a banded layer gives the same bits as the plain one.
use candle_core::{DType, Module, Result, Tensor};
use imago_kernels::GroupNormRows;

use super::Conv2d;

/// Layers take the banded path when the tensor they would otherwise materialize (their input, or
/// their upsampled input) is at least this large: the VAE decoder's last two levels at 512x512.
pub const BANDED_MIN_BYTES: usize = 60 << 20;
/// About the size of one band's convolution input.
pub const BAND_BYTES: usize = 24 << 20;

/// Whether a banded layer should handle an f32 tensor of `elements` values.
pub fn worth_banding(x: &Tensor, elements: usize) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32 && elements * 4 >= sizes().0
}

/// The band size the layers use: [`BAND_BYTES`].
pub fn band_bytes() -> usize {
    sizes().1
}

/// ([`BANDED_MIN_BYTES`], [`BAND_BYTES`]), or what a test on this thread set with
/// [`with_sizes`].
fn sizes() -> (usize, usize) {
    #[cfg(test)]
    if let Some(sizes) = SIZES_FOR_TEST.with(std::cell::Cell::get) {
        return sizes;
    }
    (BANDED_MIN_BYTES, BAND_BYTES)
}

#[cfg(test)]
thread_local! {
    static SIZES_FOR_TEST: std::cell::Cell<Option<(usize, usize)>> =
        const { std::cell::Cell::new(None) };
}

/// Runs `f` on this thread with other banding sizes, so that a test can band a small model's
/// maps (every layer banded, in many bands) and compare with the plain run.
#[cfg(test)]
pub(crate) fn with_sizes<R>(min_bytes: usize, band_bytes: usize, f: impl FnOnce() -> R) -> R {
    SIZES_FOR_TEST.with(|s| s.set(Some((min_bytes, band_bytes))));
    let result = f();
    SIZES_FOR_TEST.with(|s| s.set(None));
    result
}

/// The bands of `height` rows for an input of `channels` x `width` f32 values per row (and
/// `batch` samples), about `band_bytes` each: `(first row, rows)` pairs covering the height in
/// order.
pub fn bands(
    band_bytes: usize,
    (batch, channels, height, width): (usize, usize, usize, usize),
) -> Vec<(usize, usize)> {
    let row_bytes = (batch * channels * width * 4).max(1);
    let rows = (band_bytes / row_bytes).clamp(1, height.max(1));
    (0..height)
        .step_by(rows)
        .map(|first| (first, rows.min(height - first)))
        .collect()
}

/// Output rows `first..first + count` of `conv` (a 3x3 same-size convolution, see
/// [`Conv2d::keeps_size_3x3`]) over an input of `height` rows, `input_rows(a, b)` giving input
/// rows `a..b`; a view, not made contiguous (a following element-wise op need not copy it).
pub fn conv_rows(
    conv: &Conv2d,
    height: usize,
    first: usize,
    count: usize,
    input_rows: impl FnOnce(usize, usize) -> Result<Tensor>,
) -> Result<Tensor> {
    if !conv.keeps_size_3x3() {
        candle_core::bail!("banded convolution: the layer is not a 3x3 same-size convolution");
    }
    let a = first.saturating_sub(1);
    let b = (first + count + 1).min(height);
    let out = conv.forward(&input_rows(a, b)?)?;
    out.narrow(2, first - a, count)
}

/// `conv(rows(x))` for a whole tensor: `rows` normalizes `x` by bands, `conv` is a 3x3
/// same-size convolution; the normalized `x` never exists in full.
/// Bands of about `band_bytes` of input.
pub fn normalized_conv(
    rows: &GroupNormRows,
    conv: &Conv2d,
    x: &Tensor,
    band_bytes: usize,
) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let bands = bands(band_bytes, (n, c, h, w));
    stitch_rows(
        (n, h, w),
        &bands,
        "banded convolution",
        |_, first, count| conv_rows(conv, h, first, count, |a, b| rows.rows(x, a, b - a)),
    )
}

/// The (n, channels, height, width) tensor whose rows `first..first + count` are
/// `band(index, first, count)` for each of `bands` in order (its channels taken from the first
/// band): a banded layer's output, allocated once and filled band by band.
pub fn stitch_rows(
    (n, height, width): (usize, usize, usize),
    bands: &[(usize, usize)],
    what: &str,
    mut band: impl FnMut(usize, usize, usize) -> Result<Tensor>,
) -> Result<Tensor> {
    let mut out: Option<Tensor> = None;
    for (index, &(first, count)) in bands.iter().enumerate() {
        let rows = band(index, first, count)?;
        let out = match &out {
            Some(out) => out,
            None => {
                let (_, channels, _, _) = rows.dims4()?;
                out.insert(Tensor::zeros(
                    (n, channels, height, width),
                    rows.dtype(),
                    rows.device(),
                )?)
            }
        };
        out.slice_set(&rows.contiguous()?, 2, first)?;
    }
    out.ok_or_else(|| candle_core::Error::Msg(format!("{what} of an empty tensor")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::test_util::{bits, ramp};
    use candle_nn::Conv2dConfig;

    #[test]
    fn bands_cover_the_height_in_order() {
        for height in [1, 7, 8, 9, 100, 513] {
            let b = bands(BAND_BYTES, (1, 256, height, 512));
            assert_eq!(b[0].0, 0);
            assert_eq!(b.iter().map(|&(_, n)| n).sum::<usize>(), height);
            assert!(b.windows(2).all(|p| p[0].0 + p[0].1 == p[1].0));
        }
        // 24 MiB of 256 x 512 f32 rows: 48 rows a band.
        assert_eq!(bands(BAND_BYTES, (1, 256, 512, 512))[0].1, 48);
        assert_eq!(
            bands(1, (2, 3, 5, 4)),
            [(0, 1), (1, 1), (2, 1), (3, 1), (4, 1)]
        );
    }

    /// A convolution computed by bands of rows has the whole convolution's bits.
    #[test]
    fn banded_conv_matches_the_whole_conv() -> Result<()> {
        let x = ramp(&[2, 5, 19, 6], 0.02)?;
        let config = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let conv = Conv2d::new(ramp(&[4, 5, 3, 3], 0.01)?, Some(ramp(&[4], 0.1)?), config)?;
        let whole = conv.forward(&x)?;
        for (first, count) in [(0, 19), (0, 1), (0, 8), (8, 8), (16, 3), (18, 1)] {
            let band = conv_rows(&conv, 19, first, count, |a, b| x.narrow(2, a, b - a))?;
            let want = whole.narrow(2, first, count)?.contiguous()?;
            assert_eq!(bits(&band)?, bits(&want)?, "rows {first}+{count}");
        }
        let pointwise = Conv2d::new(ramp(&[4, 5, 1, 1], 0.01)?, None, Default::default())?;
        assert!(pointwise.is_pointwise() && !pointwise.keeps_size_3x3());
        assert!(conv_rows(&pointwise, 19, 0, 1, |a, b| x.narrow(2, a, b - a)).is_err());
        Ok(())
    }
}
