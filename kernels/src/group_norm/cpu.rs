//! The fused CPU GroupNorm kernel: one read pass for each group's statistics and one pass that
//! writes normalize + affine (+ SiLU), parallel over (batch, group) blocks with rayon.
//!
//! Statistics are accumulated in f64 around a pivot (the block's first value), so the variance
//! does not lose digits when the mean is large; the write pass runs in f32 like torch's kernel,
//! centering each value before scaling it (see [`SplitMean`]).

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape};
use half::{bf16, f16, slice::HalfFloatSliceExt};
use rayon::prelude::*;

use crate::math::exp_f32;

use super::{check_channel_param, input_dims, Activation, GroupNormDims};

/// Elements converted to/from f32 at a time (fits L1 twice over).
const TILE: usize = 1024;
/// Independent accumulators in the statistics loop, so it can vectorise without reassociation.
const LANES: usize = 8;
/// Below this many elements the rayon hand-off costs more than it saves.
const PARALLEL_MIN_ELEMENTS: usize = 1 << 15;

/// The fused GroupNorm (+ activation) as a candle custom op over (x, weight, bias).
///
/// On CPU: x contiguous f32/f16/bf16, weight and bias contiguous [C] of any float dtype. On CUDA
/// (feature `cuda`): the same x, weight and bias contiguous f32. The output has x's dtype. No backward pass: use it through [`super::group_norm`], which
/// routes everything else to the reference ops.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupNormOp {
    num_groups: usize,
    eps: f64,
    activation: Activation,
}

impl GroupNormOp {
    pub fn new(num_groups: usize, eps: f64, activation: Activation) -> Self {
        Self {
            num_groups,
            eps,
            activation,
        }
    }
}

impl CustomOp3 for GroupNormOp {
    fn name(&self) -> &'static str {
        "imago-group-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = input_dims(x_layout.dims(), self.num_groups)?;
        let Some((start, end)) = x_layout.contiguous_offsets() else {
            bail!(
                "group_norm kernel: input must be contiguous, got strides {:?}",
                x_layout.stride()
            );
        };
        let params = ChannelParams {
            weight: &channel_values("weight", weight, weight_layout, dims.channels)?,
            bias: &channel_values("bias", bias, bias_layout, dims.channels)?,
            eps: self.eps,
            activation: self.activation,
        };
        let out = match x {
            CpuStorage::F32(v) => CpuStorage::F32(normalize(&v[start..end], dims, &params)),
            CpuStorage::F16(v) => CpuStorage::F16(normalize(&v[start..end], dims, &params)),
            CpuStorage::BF16(v) => CpuStorage::BF16(normalize(&v[start..end], dims, &params)),
            other => bail!(
                "group_norm kernel: input dtype {:?} is not supported (f32, f16, bf16)",
                other.dtype()
            ),
        };
        Ok((out, x_layout.shape().clone()))
    }

    /// The CUDA kernel (`super::cuda`): x contiguous f32/f16/bf16, weight and bias contiguous f32.
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        x_layout: &Layout,
        weight: &candle_core::CudaStorage,
        weight_layout: &Layout,
        bias: &candle_core::CudaStorage,
        bias_layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let launch = super::cuda::Launch {
            dims: input_dims(x_layout.dims(), self.num_groups)?,
            eps: self.eps,
            activation: self.activation,
        };
        launch.forward(x, x_layout, weight, weight_layout, bias, bias_layout)
    }
}

/// Reads a contiguous [C] parameter as f32 values.
pub(super) fn channel_values(
    name: &str,
    storage: &CpuStorage,
    layout: &Layout,
    channels: usize,
) -> Result<Vec<f32>> {
    check_channel_param(name, layout.dims(), channels)?;
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("group_norm kernel: {name} must be contiguous");
    };
    Ok(match storage {
        CpuStorage::F32(v) => v[start..end].to_vec(),
        CpuStorage::F64(v) => v[start..end].iter().map(|&w| w as f32).collect(),
        CpuStorage::F16(v) => v[start..end].iter().map(|w| w.to_f32()).collect(),
        CpuStorage::BF16(v) => v[start..end].iter().map(|w| w.to_f32()).collect(),
        other => bail!(
            "group_norm kernel: {name} dtype {:?} is not supported (f32, f64, f16, bf16)",
            other.dtype()
        ),
    })
}

/// What the write pass needs besides the data.
pub(super) struct ChannelParams<'a> {
    pub weight: &'a [f32],
    pub bias: &'a [f32],
    pub eps: f64,
    pub activation: Activation,
}

/// A storage element the kernel reads and writes through f32 tiles.
pub(super) trait Element: Copy + Send + Sync {
    const ZERO: Self;
    /// `src` as f32 values: itself for f32, converted into `buf` (same length) otherwise.
    fn as_f32<'a>(src: &'a [Self], buf: &'a mut [f32]) -> &'a [f32];
    /// Lets `fill` write f32 values to `dst`: in place for f32, through `buf` otherwise.
    fn write_f32(dst: &mut [Self], buf: &mut [f32], fill: impl FnOnce(&mut [f32]));
}

impl Element for f32 {
    const ZERO: Self = 0.0;
    fn as_f32<'a>(src: &'a [Self], _: &'a mut [f32]) -> &'a [f32] {
        src
    }
    fn write_f32(dst: &mut [Self], _: &mut [f32], fill: impl FnOnce(&mut [f32])) {
        fill(dst)
    }
}

macro_rules! half_element {
    ($t:ty) => {
        impl Element for $t {
            const ZERO: Self = <$t>::ZERO;
            fn as_f32<'a>(src: &'a [Self], buf: &'a mut [f32]) -> &'a [f32] {
                let buf = &mut buf[..src.len()];
                src.convert_to_f32_slice(buf);
                buf
            }
            fn write_f32(dst: &mut [Self], buf: &mut [f32], fill: impl FnOnce(&mut [f32])) {
                let buf = &mut buf[..dst.len()];
                fill(buf);
                dst.convert_from_f32_slice(buf);
            }
        }
    };
}
half_element!(f16);
half_element!(bf16);

/// Normalizes every (batch, group) block of a contiguous (N, C, *) buffer.
fn normalize<T: Element>(x: &[T], dims: GroupNormDims, params: &ChannelParams) -> Vec<T> {
    let mut y = vec![T::ZERO; x.len()];
    let block = dims.elements_per_group();
    if block == 0 {
        return y;
    }
    let per_group = dims.channels_per_group();
    let run_block = |(index, (xb, yb)): (usize, (&[T], &mut [T]))| {
        let first_channel = (index % dims.num_groups) * per_group;
        normalize_block(xb, yb, dims.spatial, first_channel, params);
    };
    if x.len() >= PARALLEL_MIN_ELEMENTS {
        x.par_chunks(block)
            .zip(y.par_chunks_mut(block))
            .enumerate()
            .for_each(run_block);
    } else {
        x.chunks(block)
            .zip(y.chunks_mut(block))
            .enumerate()
            .for_each(run_block);
    }
    y
}

/// One group of one sample: `x` and `y` hold its channels back to back, `spatial` values each.
fn normalize_block<T: Element>(
    x: &[T],
    y: &mut [T],
    spatial: usize,
    first_channel: usize,
    params: &ChannelParams,
) {
    let mut in_buf = [0f32; TILE];
    let mut out_buf = [0f32; TILE];
    let (center, inv_std) = block_statistics(x, params.eps);
    let channels = x.chunks_exact(spatial).zip(y.chunks_exact_mut(spatial));
    for (offset, (xc, yc)) in channels.enumerate() {
        let channel = ChannelAffine::new(center, inv_std, params, first_channel + offset);
        for (xt, yt) in xc.chunks(TILE).zip(yc.chunks_mut(TILE)) {
            let xs = T::as_f32(xt, &mut in_buf);
            T::write_f32(yt, &mut out_buf, |ys| {
                channel.apply(xs, ys, params.activation)
            });
        }
    }
}

/// One group's centre and 1 / std (eps inside the root), from a read pass over its values.
pub(super) fn block_statistics<T: Element>(x: &[T], eps: f64) -> (SplitMean, f64) {
    let mut in_buf = [0f32; TILE];
    let mut moments = Moments::default();
    for tile in x.chunks(TILE) {
        moments.add(T::as_f32(tile, &mut in_buf));
    }
    let (mean, variance) = moments.mean_variance();
    (SplitMean::new(mean), 1.0 / (variance + eps).sqrt())
}

/// The element-wise step of one channel of one sample: centre, scale and bias, so that any part
/// of the channel can be written apart from the rest with the same bits.
#[derive(Clone, Copy)]
pub(super) struct ChannelAffine {
    center: SplitMean,
    scale: f32,
    bias: f32,
}

impl ChannelAffine {
    pub(super) fn new(
        center: SplitMean,
        inv_std: f64,
        params: &ChannelParams,
        channel: usize,
    ) -> Self {
        Self {
            center,
            scale: (inv_std * f64::from(params.weight[channel])) as f32,
            bias: params.bias[channel],
        }
    }

    pub(super) fn apply(&self, xs: &[f32], ys: &mut [f32], activation: Activation) {
        match activation {
            Activation::None => affine(xs, ys, self.center, self.scale, self.bias),
            Activation::Silu => affine_silu(xs, ys, self.center, self.scale, self.bias),
        }
    }
}

/// The mean as an f32 pair hi + lo: `(x - hi) - lo` centers x with almost no rounding even when
/// the mean is large against the spread (folding the mean into the bias, as torch does, loses
/// about |mean| / std ulps there).
#[derive(Clone, Copy)]
pub(super) struct SplitMean {
    hi: f32,
    lo: f32,
}

impl SplitMean {
    fn new(mean: f64) -> Self {
        let hi = mean as f32;
        let lo = (mean - f64::from(hi)) as f32;
        Self { hi, lo }
    }

    #[inline(always)]
    fn center(self, x: f32) -> f32 {
        (x - self.hi) - self.lo
    }
}

/// y = (x - mean) * scale + bias, where scale = weight / std.
fn affine(xs: &[f32], ys: &mut [f32], mean: SplitMean, scale: f32, bias: f32) {
    for (y, &x) in ys.iter_mut().zip(xs) {
        *y = mean.center(x) * scale + bias;
    }
}

/// The affine step followed by SiLU, v / (1 + exp(-v)) as torch computes it (torch's CPU kernel
/// also uses a vectorised polynomial exp rather than libm).
fn affine_silu(xs: &[f32], ys: &mut [f32], mean: SplitMean, scale: f32, bias: f32) {
    for (y, &x) in ys.iter_mut().zip(xs) {
        let v = mean.center(x) * scale + bias;
        *y = v / (1.0 + exp_f32(-v));
    }
}

/// Running sums of (x - pivot) and (x - pivot)^2 in f64, over LANES independent accumulators.
#[derive(Default)]
struct Moments {
    count: usize,
    pivot: f64,
    sum: [f64; LANES],
    sum_sq: [f64; LANES],
}

impl Moments {
    fn add(&mut self, xs: &[f32]) {
        let Some(&first) = xs.first() else { return };
        if self.count == 0 {
            self.pivot = f64::from(first);
        }
        self.count += xs.len();
        let chunks = xs.chunks_exact(LANES);
        let rest = chunks.remainder();
        for chunk in chunks {
            self.add_lanes(chunk);
        }
        self.add_lanes(rest);
    }

    /// Adds up to LANES values, one per accumulator.
    #[inline(always)]
    fn add_lanes(&mut self, values: &[f32]) {
        let lanes = self.sum.iter_mut().zip(self.sum_sq.iter_mut());
        for ((sum, sum_sq), &x) in lanes.zip(values) {
            let d = f64::from(x) - self.pivot;
            *sum += d;
            *sum_sq += d * d;
        }
    }

    /// Mean and biased variance; (0, 0) for no values.
    fn mean_variance(&self) -> (f64, f64) {
        if self.count == 0 {
            return (0.0, 0.0);
        }
        let n = self.count as f64;
        let shifted_mean = self.sum.iter().sum::<f64>() / n;
        let mean_sq = self.sum_sq.iter().sum::<f64>() / n;
        let variance = (mean_sq - shifted_mean * shifted_mean).max(0.0);
        (self.pivot + shifted_mean, variance)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exact-ish two-pass statistics in f64, for comparison.
    fn two_pass(xs: &[f32]) -> (f64, f64) {
        let n = xs.len() as f64;
        let mean = xs.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let var = xs
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / n;
        (mean, var)
    }

    #[test]
    fn moments_keep_variance_digits_under_a_large_mean() {
        // Values around 1e4 with spread ~1e-2: naive f32 sum-of-squares would lose everything.
        let xs: Vec<f32> = (0..5003)
            .map(|i| 1.0e4 + ((i * 7919) % 101) as f32 * 1.0e-2 - 0.5)
            .collect();
        let mut moments = Moments::default();
        for tile in xs.chunks(TILE) {
            moments.add(tile);
        }
        let (mean, var) = moments.mean_variance();
        let (mean_ref, var_ref) = two_pass(&xs);
        assert!(
            (mean - mean_ref).abs() <= 1e-12 * mean_ref.abs(),
            "{mean} vs {mean_ref}"
        );
        assert!(
            (var - var_ref).abs() <= 1e-9 * var_ref,
            "{var} vs {var_ref}"
        );
    }

    #[test]
    fn moments_of_a_constant_block_have_zero_variance() {
        let mut moments = Moments::default();
        moments.add(&[3.25; 37]);
        assert_eq!(moments.mean_variance(), (3.25, 0.0));
    }
}
