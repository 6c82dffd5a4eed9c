//! 2-D convolution (NCHW, groups = 1) as an implicit GEMM: out[co, q] = Σ_k W[co, k] X̂[k, q]
//! with q an output pixel and k running over (input channel pair, ky, kx) — channels are paired
//! so that one bf16 pair is two channels at the same tap. W is A, packed once
//! ([`PackedConvWeights`]); the im2col matrix X̂ is never built.
//!
//! Each call first copies the input into a zero-padded, channel-pair-interleaved image (one u32
//! per pixel and channel pair). With stride 1, the row of X̂ for tap (c2, ky, kx) over a run of
//! output pixels is then a contiguous run of that image, offset by `ky * dilation * padded_width
//! plus kx * dilation`, when output pixels are numbered over the padded width: the microkernel
//! reads B in place through a table of offsets, and the `padded_width - out_width` extra
//! columns of each output row are computed and dropped. Other strides pack B panels by gathers.

use candle_core::{bail, Result};
use rayon::prelude::*;

use super::drivers::{store_row, Bias, OutElem};
use super::pack::bf16_bits_of;
use super::{pair, ALayout, BLayout, Microkernel, Out, PackedA, RowOffsets, ToBf16, MR, NR};
pub use crate::conv2d::Conv2dGeometry;

/// Output pixels per work unit (a multiple of NR).
const PIXELS_PER_UNIT: usize = 4 * NR;
/// Output channels per work unit (a multiple of MR), so that layers with few pixels still
/// give every core work.
const CHANNELS_PER_UNIT: usize = 16 * MR;
/// Pairs of K per chunk: a chunk of A (CHANNELS_PER_UNIT rows, 128 KiB) and the input rows a
/// chunk of B touches stay in L2 while all of the unit's tiles use them.
const KC_PAIRS: usize = 256;

/// A convolution's weight (cout, cin, kh, kw) packed as bf16 pairs in the kernel's K order
/// (channel pair, ky, kx), with its bias in f32.
#[derive(Clone, Debug)]
pub struct PackedConvWeights {
    cout: usize,
    cin: usize,
    kh: usize,
    kw: usize,
    a: PackedA,
    bias: Option<Vec<f32>>,
}

impl PackedConvWeights {
    /// Packs a contiguous (cout, cin, kh, kw) weight and an optional [cout] bias.
    pub fn pack<T: ToBf16>(
        weight: &[T],
        (cout, cin, kh, kw): (usize, usize, usize, usize),
        bias: Option<Vec<f32>>,
    ) -> Result<Self> {
        if weight.len() != cout * cin * kh * kw || cin * kh * kw == 0 {
            bail!(
                "conv2d_bf16: weight of {} values for shape ({cout}, {cin}, {kh}, {kw})",
                weight.len()
            );
        }
        if bias.as_ref().is_some_and(|b| b.len() != cout) {
            bail!("conv2d_bf16: bias length differs from {cout} output channels");
        }
        let taps = kh * kw;
        let value = |co: usize, ci: usize, tap: usize| -> u16 {
            if ci < cin {
                weight[(co * cin + ci) * taps + tap].bf16_bits()
            } else {
                0
            }
        };
        let a = PackedA::from_pairs(cout, cin.div_ceil(2) * taps, |co, p| {
            let (c2, tap) = (p / taps, p % taps);
            pair(value(co, 2 * c2, tap), value(co, 2 * c2 + 1, tap))
        });
        Ok(Self {
            cout,
            cin,
            kh,
            kw,
            a,
            bias,
        })
    }

    /// (cout, cin, kh, kw).
    pub fn shape(&self) -> (usize, usize, usize, usize) {
        (self.cout, self.cin, self.kh, self.kw)
    }
}

/// Output (height, width) of a convolution, or an error when the kernel does not fit.
pub fn conv2d_output_size(
    (h, w): (usize, usize),
    (kh, kw): (usize, usize),
    g: Conv2dGeometry,
) -> Result<(usize, usize)> {
    if g.stride == 0 || g.dilation == 0 {
        bail!("conv2d_bf16: stride and dilation must be at least 1");
    }
    let span = |size: usize, k: usize| -> Option<usize> {
        let reach = g.dilation * (k - 1) + 1;
        (size + 2 * g.padding)
            .checked_sub(reach)
            .map(|d| d / g.stride + 1)
    };
    match (span(h, kh), span(w, kw)) {
        (Some(oh), Some(ow)) => Ok((oh, ow)),
        _ => bail!("conv2d_bf16: kernel {kh}x{kw} larger than the padded {h}x{w} input"),
    }
}

/// out (batch, cout, oh, ow) = conv2d(x (batch, cin, h, w), W) + bias, computed in bf16 with f32
/// sums. x is rounded to bf16 first unless it is bf16 already. Parallel over blocks of output
/// pixels and channels; each output value depends only on its own image.
pub fn conv2d_bf16<T: ToBf16>(
    x: &[T],
    x_shape: (usize, usize, usize, usize),
    weights: &PackedConvWeights,
    geometry: Conv2dGeometry,
    out: Out<'_>,
) -> Result<()> {
    conv2d_bf16_with(Microkernel::detect(), x, x_shape, weights, geometry, out)
}

/// [`conv2d_bf16`] with a chosen microkernel (an error if this CPU cannot run it).
pub fn conv2d_bf16_with<T: ToBf16>(
    kernel: Microkernel,
    x: &[T],
    (batch, cin, h, w): (usize, usize, usize, usize),
    weights: &PackedConvWeights,
    geometry: Conv2dGeometry,
    out: Out<'_>,
) -> Result<()> {
    if !kernel.is_supported() {
        bail!("conv2d_bf16: this CPU cannot run the {kernel:?} microkernel");
    }
    if cin != weights.cin {
        bail!(
            "conv2d_bf16: input has {cin} channels, the weight expects {}",
            weights.cin
        );
    }
    if x.len() != batch * cin * h * w {
        bail!(
            "conv2d_bf16: input of {} values for shape ({batch}, {cin}, {h}, {w})",
            x.len()
        );
    }
    let (oh, ow) = conv2d_output_size((h, w), (weights.kh, weights.kw), geometry)?;
    if out.len() != batch * weights.cout * oh * ow {
        bail!(
            "conv2d_bf16: output holds {} values, expected {batch} x {} x {oh} x {ow}",
            out.len(),
            weights.cout
        );
    }
    if out.len() == 0 {
        return Ok(());
    }
    let input = PaddedPairs::new(&bf16_bits_of(x), (batch, cin, h, w), weights, geometry);
    let plan = Plan::new(&input, (oh, ow), weights, geometry);
    match out {
        Out::F32(o) => run(kernel, &input, &plan, weights, o),
        Out::Bf16(o) => run(kernel, &input, &plan, weights, o),
    }
    Ok(())
}

/// The input zero-padded and channel-pair-interleaved: pixel (y, x) of channel pair c2 of
/// image b at `b * image_len + c2 * plane + y * width + x`, as pair(channel 2c2, 2c2 + 1).
/// Zero slack at the end covers the reads past the last output pixel (dropped columns).
struct PaddedPairs {
    data: Vec<u32>,
    batch: usize,
    pairs: usize,
    height: usize,
    width: usize,
    image_len: usize,
}

impl PaddedPairs {
    fn new(
        x: &[u16],
        (batch, cin, h, w): (usize, usize, usize, usize),
        weights: &PackedConvWeights,
        g: Conv2dGeometry,
    ) -> Self {
        let (height, width) = (h + 2 * g.padding, w + 2 * g.padding);
        let pairs = cin.div_ceil(2);
        let plane = height * width;
        let image_len = pairs * plane;
        // Reads reach past a plane's last output pixel by up to a kernel's reach and a panel.
        let slack =
            (weights.kh * g.dilation + 1) * width + weights.kw * g.dilation + PIXELS_PER_UNIT;
        let mut data = vec![0u32; batch * image_len + slack];
        let channel = |b: usize, c: usize| &x[(b * cin + c) * h * w..(b * cin + c + 1) * h * w];
        data[..batch * image_len]
            .par_chunks_mut(plane)
            .enumerate()
            .for_each(|(index, dst)| {
                let (b, c2) = (index / pairs, index % pairs);
                let even = channel(b, 2 * c2);
                let odd = (2 * c2 + 1 < cin).then(|| channel(b, 2 * c2 + 1));
                for y in 0..h {
                    let row = &mut dst[(y + g.padding) * width + g.padding..][..w];
                    let e = &even[y * w..(y + 1) * w];
                    match odd {
                        Some(odd) => {
                            let o = &odd[y * w..(y + 1) * w];
                            row.iter_mut()
                                .zip(e)
                                .zip(o)
                                .for_each(|((d, &e), &o)| *d = pair(e, o));
                        }
                        None => row.iter_mut().zip(e).for_each(|(d, &e)| *d = pair(e, 0)),
                    }
                }
            });
        Self {
            data,
            batch,
            pairs,
            height,
            width,
            image_len,
        }
    }
}

/// How the call is cut into work units and where B's pairs come from.
struct Plan {
    k_pairs: usize,
    /// Output (height, width) as returned to the caller.
    out_size: (usize, usize),
    /// Pixels per output row in the computed numbering: the padded width when B is read in
    /// place (stride 1), the output width otherwise.
    row_pitch: usize,
    /// Computed pixels per image (`out height * row_pitch`).
    pixels: usize,
    /// Start of the pairs of tap p for computed pixel 0: in place, `offsets[p] + q` is pixel
    /// q's pair; for gathers, (c2, ky, kx) are decoded from p instead.
    offsets: Option<RowOffsets>,
    stride: usize,
    dilation: usize,
    kh: usize,
    kw: usize,
}

impl Plan {
    fn new(
        input: &PaddedPairs,
        (oh, ow): (usize, usize),
        weights: &PackedConvWeights,
        g: Conv2dGeometry,
    ) -> Self {
        let taps = weights.kh * weights.kw;
        let k_pairs = input.pairs * taps;
        let plane = input.height * input.width;
        let in_place = g.stride == 1;
        let offsets = in_place.then(|| {
            RowOffsets::new(
                (0..k_pairs)
                    .map(|p| {
                        let (c2, ky, kx) = (p / taps, (p % taps) / weights.kw, p % weights.kw);
                        c2 * plane + ky * g.dilation * input.width + kx * g.dilation
                    })
                    .collect(),
            )
        });
        let row_pitch = if in_place { input.width } else { ow };
        Self {
            k_pairs,
            out_size: (oh, ow),
            row_pitch,
            pixels: oh * row_pitch,
            offsets,
            stride: g.stride,
            dilation: g.dilation,
            kh: weights.kh,
            kw: weights.kw,
        }
    }
}

/// A raw view of the output shared by the work units, which write disjoint tiles.
struct SharedOut<O> {
    ptr: *mut O,
    len: usize,
}

// SAFETY: units only write through `row`, on disjoint ranges (see `run`).
unsafe impl<O: Send> Sync for SharedOut<O> {}

impl<O> SharedOut<O> {
    /// The `len` values from `start` as a mutable slice.
    ///
    /// # Safety
    /// No other live reference may overlap `start..start + len` while the slice is used.
    #[allow(clippy::mut_from_ref)]
    unsafe fn row(&self, start: usize, len: usize) -> &mut [O] {
        assert!(
            start + len <= self.len,
            "conv2d_bf16: tile row outside the output"
        );
        // SAFETY: in bounds (asserted); exclusivity is the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }
}

/// A work unit's reusable buffers.
#[derive(Default)]
struct UnitScratch {
    /// Packed B panels of the current K chunk (gathered B only).
    b_block: Vec<u32>,
    /// The f32 sums of the unit's (channel panel, pixel panel) tiles.
    tiles: Vec<[f32; MR * NR]>,
}

fn run<O: OutElem>(
    kernel: Microkernel,
    input: &PaddedPairs,
    plan: &Plan,
    weights: &PackedConvWeights,
    out: &mut [O],
) {
    let cout = weights.cout;
    let (oh, ow) = plan.out_size;
    let pixel_blocks = plan.pixels.div_ceil(PIXELS_PER_UNIT);
    let channel_blocks = cout.div_ceil(CHANNELS_PER_UNIT);
    let units = input.batch * pixel_blocks * channel_blocks;
    let shared = SharedOut {
        ptr: out.as_mut_ptr(),
        len: out.len(),
    };
    let bias = weights.bias.as_deref().map_or(Bias::None, Bias::PerRow);
    (0..units)
        .into_par_iter()
        .for_each_init(UnitScratch::default, |scratch, unit| {
            let image = unit / (pixel_blocks * channel_blocks);
            let pixel_block = (unit / channel_blocks) % pixel_blocks;
            let first = (unit % channel_blocks) * CHANNELS_PER_UNIT / MR;
            let channel_panels = first..weights.a.panel_count().min(first + CHANNELS_PER_UNIT / MR);
            let q0 = pixel_block * PIXELS_PER_UNIT;
            let q_count = PIXELS_PER_UNIT.min(plan.pixels - q0);
            let pixel_panels = q_count.div_ceil(NR);
            let image_data = &input.data[image * input.image_len..];
            let tiles = &mut scratch.tiles;
            tiles.clear();
            tiles.resize(channel_panels.len() * pixel_panels, [0f32; MR * NR]);

            // K in chunks of KC_PAIRS so the chunk's A panels and input rows stay in cache while
            // all of the unit's tiles use them; the tiles carry the f32 sums from chunk to chunk,
            // so the additions happen in the same order as without chunks.
            for chunk in (0..plan.k_pairs).step_by(KC_PAIRS) {
                let kc = KC_PAIRS.min(plan.k_pairs - chunk);
                if plan.offsets.is_none() {
                    gather_panels(
                        image_data,
                        input,
                        plan,
                        q0,
                        q_count,
                        chunk..chunk + kc,
                        &mut scratch.b_block,
                    );
                }
                for j in 0..pixel_panels {
                    let (b, b_layout) = match &plan.offsets {
                        Some(table) => (
                            &image_data[q0 + j * NR..],
                            BLayout::Offsets {
                                table,
                                first: chunk,
                            },
                        ),
                        None => (
                            &scratch.b_block[j * kc * NR..(j + 1) * kc * NR],
                            BLayout::Packed,
                        ),
                    };
                    for (local, i) in channel_panels.clone().enumerate() {
                        let a = &weights.a.panel(i)[chunk * MR..(chunk + kc) * MR];
                        let tile = &mut tiles[local * pixel_panels + j];
                        kernel.run(kc, a, ALayout::Packed, b, b_layout, tile, chunk > 0);
                    }
                }
            }

            // Computed pixel q is output (q / row_pitch, q % row_pitch) when that column < ow.
            let out_image = image * cout * oh * ow;
            for (local, i) in channel_panels.enumerate() {
                let rows = MR.min(cout - i * MR);
                for j in 0..pixel_panels {
                    let tile = &tiles[local * pixel_panels + j];
                    let mut c = 0;
                    let cols = NR.min(q_count - j * NR);
                    while c < cols {
                        let q = q0 + j * NR + c;
                        let (y, x) = (q / plan.row_pitch, q % plan.row_pitch);
                        let run_len = (plan.row_pitch - x).min(cols - c);
                        if x < ow {
                            let len = run_len.min(ow - x);
                            for r in 0..rows {
                                let channel = i * MR + r;
                                let start = out_image + channel * oh * ow + y * ow + x;
                                // SAFETY: each unit owns the output of its image, block of channels
                                // and block of pixels; `row` checks the bounds.
                                let dst = unsafe { shared.row(start, len) };
                                store_row(
                                    &tile[r * NR + c..r * NR + c + len],
                                    dst,
                                    bias,
                                    channel,
                                    0,
                                );
                            }
                        }
                        c += run_len;
                    }
                }
            }
        });
}

/// Packs pairs `pairs` of the B panels of computed pixels q0..q0+q_count (zero-padded to whole
/// panels) into `block`, panel j at `j * pairs.len() * NR`, by gathers from the padded input.
fn gather_panels(
    image: &[u32],
    input: &PaddedPairs,
    plan: &Plan,
    q0: usize,
    q_count: usize,
    pairs: std::ops::Range<usize>,
    block: &mut Vec<u32>,
) {
    let panels = q_count.div_ceil(NR);
    let panel_len = pairs.len() * NR;
    block.clear();
    block.resize(panels * panel_len, 0);
    let taps = plan.kh * plan.kw;
    let plane = input.height * input.width;
    for (local, p) in pairs.enumerate() {
        let (c2, ky, kx) = (p / taps, (p % taps) / plan.kw, p % plan.kw);
        let tap = &image[c2 * plane + ky * plan.dilation * input.width + kx * plan.dilation..];
        for t in 0..q_count {
            let q = q0 + t;
            let (y, x) = (q / plan.row_pitch, q % plan.row_pitch);
            block[(t / NR) * panel_len + local * NR + t % NR] =
                tap[y * plan.stride * input.width + x * plan.stride];
        }
    }
}
