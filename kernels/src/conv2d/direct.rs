//! Stride-1 convolutions without im2col packing.
//!
//! With stride 1, im2col row k = (ci, ky, kx) over a run of output pixels of one output row is a
//! contiguous run of the zero-padded input: pixel (oy, ox) reads padded (oy + ky·d, ox + kx·d).
//! So each task copies the rows its band of output rows needs into a zero-padded band
//! (Cin x band rows x padded width), and the microkernel reads B's row k for a tile of NR
//! pixels in place at `tile start + offsets[k]`, one offset table for the whole call. Tiles
//! never cross an output row; a row's last tile, when the width is not a multiple of NR, reads
//! on into the padding and the next row (or the band's zero slack), and only its first columns
//! are stored.
//!
//! The sums are the packed GEMM's (see [`crate::gemm`]): C starts at the bias, and each K-block
//! of [`KC`] adds its chain of fused multiply-adds from zero, through the same microkernel body
//! and with the same weight panels. So every output has the same bits as through
//! [`super::im2col::Im2col`], whatever the batch, the band height or the number of threads.

use rayon::prelude::*;

use crate::gemm::{Microkernel, PackedMatrix, PanelSource, KC};

use super::ConvDims;

/// Output pixels per group of tiles that share each K-block's weight panels while they are in
/// cache (the GEMM's column block).
const GROUP_PIXELS: usize = 256;
/// Output pixels per task aimed for: more rows per band copy fewer halo rows twice.
const BAND_PIXELS: usize = 2048;
/// Tasks per rayon thread to aim for, so that uneven bands still balance.
const TASKS_PER_THREAD: usize = 4;

/// Whether [`conv2d_direct`] takes this convolution: stride 1 (1x1 unpadded ones read the
/// input as B directly and stay with the GEMM).
pub(crate) fn takes(dims: &ConvDims) -> bool {
    dims.geometry.stride == 1 && !dims.is_pointwise()
}

/// One output tile: NR computed pixels from band position `b`, stored at output position `c`
/// (first `cols` of them).
#[derive(Clone, Copy, Debug)]
struct Tile {
    b: usize,
    c: usize,
    cols: usize,
}

/// The call's fixed geometry.
struct Plan {
    dims: ConvDims,
    out_channels: usize,
    /// Padded input width.
    width: usize,
    /// Output rows per band (the last band may have fewer).
    band_rows: usize,
    /// Values per channel of a band: (band_rows + halo) padded rows.
    band_plane: usize,
    /// Values of a band buffer, with zero slack for the last tile's reads past its row.
    band_len: usize,
    /// Start of row k of B relative to a tile's band position.
    offsets: Vec<usize>,
}

impl Plan {
    fn new(dims: ConvDims, out_channels: usize, nr: usize) -> Self {
        let g = dims.geometry;
        let width = dims.width + 2 * g.padding;
        let halo = (dims.kernel_h - 1) * g.dilation;
        let wanted_tasks = rayon::current_num_threads() * TASKS_PER_THREAD;
        let band_rows = BAND_PIXELS
            .div_ceil(dims.out_w)
            .min(dims.out_h.div_ceil(wanted_tasks))
            .clamp(1, dims.out_h);
        let band_plane = (band_rows + halo) * width;
        let taps = dims.kernel_h * dims.kernel_w;
        let offsets: Vec<usize> = (0..dims.depth())
            .map(|k| {
                let (ci, ky, kx) = (k / taps, (k % taps) / dims.kernel_w, k % dims.kernel_w);
                ci * band_plane + ky * g.dilation * width + kx * g.dilation
            })
            .collect();
        // The furthest read: the last tile of the band's last row (start < its output width
        // out_w = width - (kw - 1)·d) at the largest offset, plus NR values, stays below
        // in_channels · band_plane + nr. The microkernel's reads rely on it: check it.
        let band_len = dims.in_channels * band_plane + nr;
        let last_tile = (band_rows - 1) * width + (dims.out_w - 1) / nr * nr;
        let furthest = offsets.iter().max().map_or(0, |&o| last_tile + o + nr);
        assert!(
            furthest <= band_len,
            "conv2d_direct: tiles read past the band ({furthest} > {band_len})"
        );
        Self {
            dims,
            out_channels,
            width,
            band_rows,
            band_plane,
            band_len,
            offsets,
        }
    }

    /// Copies the padded input rows that output rows [oy0, oy0 + rows) read into `band`.
    fn fill_band(&self, input: &[f32], oy0: usize, rows: usize, band: &mut [f32]) {
        let d = &self.dims;
        let pad = d.geometry.padding;
        let needed = rows + (d.kernel_h - 1) * d.geometry.dilation;
        for ci in 0..d.in_channels {
            let plane = &input[ci * d.height * d.width..(ci + 1) * d.height * d.width];
            let channel = &mut band[ci * self.band_plane..(ci + 1) * self.band_plane];
            for (j, dst) in channel
                .chunks_exact_mut(self.width)
                .take(needed)
                .enumerate()
            {
                // Padded row oy0 + j is input row oy0 + j - pad.
                match (oy0 + j).checked_sub(pad).filter(|&iy| iy < d.height) {
                    Some(iy) => {
                        dst[..pad].fill(0.0);
                        dst[pad..pad + d.width]
                            .copy_from_slice(&plane[iy * d.width..(iy + 1) * d.width]);
                        dst[pad + d.width..].fill(0.0);
                    }
                    None => dst.fill(0.0),
                }
            }
        }
    }
}

/// The output of one sample shared by the band tasks, which write disjoint output rows.
#[derive(Clone, Copy)]
struct SharedOutput {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: each task writes only the output rows of its own band, in every channel (see
// `conv2d_direct`), and the borrow of the output outlives the parallel loop.
unsafe impl Send for SharedOutput {}
// SAFETY: as above.
unsafe impl Sync for SharedOutput {}

impl SharedOutput {
    /// The output values of `channel` at tile `tile`'s stored columns.
    ///
    /// # Safety
    /// The tile must be in the calling task's band, and no other reference to those values live.
    unsafe fn tile_row<'a>(self, channel: usize, positions: usize, tile: &Tile) -> &'a mut [f32] {
        let start = channel * positions + tile.c;
        assert!(
            start + tile.cols <= self.len,
            "conv2d_direct: tile outside the output"
        );
        // SAFETY: in bounds (asserted); exclusive per the function contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), tile.cols) }
    }
}

/// A task's reusable buffers.
#[derive(Default)]
struct Scratch {
    band: Vec<f32>,
    tiles: Vec<Tile>,
    /// A weight panel, should the packed weight not hand one out in place.
    a_panel: Vec<f32>,
    /// A tail tile (rows < MR or columns < NR) computed out of place.
    edge: Vec<f32>,
}

/// out (Cout x out_h·out_w) = conv(input (Cin x H x W)) + bias for one sample, stride 1, with
/// `weight` the (Cout x K) weight packed as A for `kernel`.
pub(crate) fn conv2d_direct(
    kernel: &Microkernel,
    weight: &PackedMatrix,
    bias: Option<&[f32]>,
    input: &[f32],
    dims: ConvDims,
    out: &mut [f32],
) {
    let out_channels = weight.len();
    assert!(
        takes(&dims)
            && weight.depth() == dims.depth()
            && input.len() == dims.in_channels * dims.height * dims.width
            && out.len() == out_channels * dims.positions()
            && bias.is_none_or(|b| b.len() == out_channels),
        "conv2d_direct: operands do not match {dims:?}"
    );
    if out.is_empty() {
        return;
    }
    let plan = Plan::new(dims, out_channels, kernel.nr);
    let shared = SharedOutput {
        ptr: out.as_mut_ptr(),
        len: out.len(),
    };
    let bands = dims.out_h.div_ceil(plan.band_rows);
    let task = |scratch: &mut Scratch, band: usize| {
        // SAFETY: band tasks write disjoint output rows.
        unsafe { run_band(kernel, weight, bias, input, &plan, band, shared, scratch) }
    };
    if bands == 1 {
        task(&mut Scratch::default(), 0);
    } else {
        (0..bands)
            .into_par_iter()
            .for_each_init(Scratch::default, task);
    }
}

/// Computes output rows [band · band_rows, ..) of every channel.
///
/// # Safety
/// No other thread may touch those output rows meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn run_band(
    kernel: &Microkernel,
    weight: &PackedMatrix,
    bias: Option<&[f32]>,
    input: &[f32],
    plan: &Plan,
    band: usize,
    out: SharedOutput,
    scratch: &mut Scratch,
) {
    let d = &plan.dims;
    let (mr, nr) = (kernel.mr, kernel.nr);
    let positions = d.positions();
    let oy0 = band * plan.band_rows;
    let rows = plan.band_rows.min(d.out_h - oy0);
    if scratch.band.len() != plan.band_len {
        scratch.band = vec![0.0; plan.band_len];
    }
    plan.fill_band(input, oy0, rows, &mut scratch.band);
    scratch.tiles.clear();
    for r in 0..rows {
        for ox in (0..d.out_w).step_by(nr) {
            scratch.tiles.push(Tile {
                b: r * plan.width + ox,
                c: (oy0 + r) * d.out_w + ox,
                cols: nr.min(d.out_w - ox),
            });
        }
    }
    scratch.edge.resize(mr * nr, 0.0);
    let band_ptr = scratch.band.as_ptr();
    let depth = d.depth();
    for group in scratch.tiles.chunks((GROUP_PIXELS / nr).max(1)) {
        for channel in 0..plan.out_channels {
            let init = bias.map_or(0.0, |b| b[channel]);
            for tile in group {
                // SAFETY: the tile is this band's, which only this task touches.
                unsafe { out.tile_row(channel, positions, tile) }.fill(init);
            }
        }
        for k0 in (0..depth).step_by(KC) {
            let kc = KC.min(depth - k0);
            let offsets = &plan.offsets[k0..k0 + kc];
            for mp in (0..plan.out_channels).step_by(mr) {
                let panel_rows = mr.min(plan.out_channels - mp);
                let a_panel = match weight.packed(k0, kc, mp, panel_rows, mr) {
                    Some(panel) => panel,
                    None => {
                        scratch.a_panel.resize(mr * kc, 0.0);
                        weight.pack(k0, kc, mp, panel_rows, mr, &mut scratch.a_panel);
                        &scratch.a_panel
                    }
                };
                let step = Step {
                    kernel,
                    kc,
                    a_panel,
                    panel_rows,
                    mp,
                    offsets,
                };
                for tile in group {
                    // SAFETY: the tile is this band's (function contract).
                    unsafe { step.run(band_ptr, tile, out, positions, &mut scratch.edge) };
                }
            }
        }
    }
}

/// One K-block of one weight panel: what the microkernel needs besides the tile.
struct Step<'a> {
    kernel: &'a Microkernel,
    kc: usize,
    a_panel: &'a [f32],
    /// Output channels in the panel (MR but in the last one), from channel `mp`.
    panel_rows: usize,
    mp: usize,
    /// B's row offsets for the K-block.
    offsets: &'a [usize],
}

impl Step<'_> {
    /// Adds the K-block's sums to the tile's outputs of the panel's channels.
    ///
    /// # Safety
    /// `band` must be the band buffer of `Plan::band_len` values the tile was laid out in, and
    /// the tile this task's own.
    unsafe fn run(
        &self,
        band: *const f32,
        tile: &Tile,
        out: SharedOutput,
        positions: usize,
        edge: &mut [f32],
    ) {
        let (mr, nr) = (self.kernel.mr, self.kernel.nr);
        assert!(
            self.a_panel.len() >= mr * self.kc && self.offsets.len() == self.kc,
            "conv2d_direct: weight panel or offsets shorter than the K-block"
        );
        let b = band.wrapping_add(tile.b);
        if self.panel_rows == mr && tile.cols == nr {
            let c = out.ptr.wrapping_add(self.mp * positions + tile.c);
            // SAFETY: the panel holds kc · mr values; B's reads stay inside the band (see
            // `Plan::band_len`); the tile is inside this task's output rows; the kernel's ISA
            // was checked when it was handed out.
            unsafe {
                (self.kernel.run_at_offsets)(
                    self.kc,
                    self.a_panel.as_ptr(),
                    b,
                    self.offsets.as_ptr(),
                    c,
                    positions,
                )
            };
            return;
        }
        // A tail: the same kernel into a copy, so tails round like full tiles.
        for r in 0..self.panel_rows {
            // SAFETY: the tile is this task's (function contract).
            let c = unsafe { out.tile_row(self.mp + r, positions, tile) };
            edge[r * nr..r * nr + tile.cols].copy_from_slice(c);
        }
        // SAFETY: as above, with `edge` a full mr x nr tile at stride nr.
        unsafe {
            (self.kernel.run_at_offsets)(
                self.kc,
                self.a_panel.as_ptr(),
                b,
                self.offsets.as_ptr(),
                edge.as_mut_ptr(),
                nr,
            )
        };
        for r in 0..self.panel_rows {
            // SAFETY: as above.
            let c = unsafe { out.tile_row(self.mp + r, positions, tile) };
            c.copy_from_slice(&edge[r * nr..r * nr + tile.cols]);
        }
    }
}
