//! Operands packed once (layer weights at model load) in the layout described in [`super`].

use candle_core::{bail, Result};

use super::source::{padded, KMajor, LaneMajor, PanelSource};
use super::{Isa, KC};

/// A buffer of f32 whose usable part starts on a 64-byte boundary, so the microkernels' vector
/// loads from a panel never straddle two cache lines.
#[derive(Clone, Debug, Default)]
pub(crate) struct AlignedBuf<T = f32> {
    raw: Vec<T>,
    start: usize,
    len: usize,
}

/// Spare elements at the front, enough to reach a 64-byte boundary for any element of 2+ bytes.
const ALIGN_FLOATS: usize = 32;

impl<T: Copy + Default> AlignedBuf<T> {
    /// Makes room for `len` values (contents unspecified), reusing the allocation if it fits.
    pub fn resize(&mut self, len: usize) {
        if self.raw.len() < len + ALIGN_FLOATS {
            self.raw = vec![T::default(); len + ALIGN_FLOATS];
        }
        self.start = self.raw.as_ptr().align_offset(64).min(ALIGN_FLOATS - 1);
        self.len = len;
    }

    pub fn as_slice(&self) -> &[T] {
        &self.raw[self.start..self.start + self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [T] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

/// A whole operand in packed layout: `depth` (K) x `len` lanes in panels of `width`.
#[derive(Clone, Debug)]
pub struct PackedMatrix {
    depth: usize,
    len: usize,
    width: usize,
    data: AlignedBuf,
}

impl PackedMatrix {
    /// Packs every K-block of `source` in panels of `width` lanes.
    pub fn pack(source: &dyn PanelSource, width: usize) -> Result<Self> {
        if width == 0 {
            bail!("PackedMatrix: panel width must be at least 1");
        }
        let (depth, len) = (source.depth(), source.len());
        let padded_len = padded(len, width);
        let mut data = AlignedBuf::default();
        data.resize(depth * padded_len);
        let dst = data.as_mut_slice();
        for k0 in (0..depth).step_by(KC) {
            let kc = KC.min(depth - k0);
            source.pack(
                k0,
                kc,
                0,
                len,
                width,
                &mut dst[k0 * padded_len..(k0 + kc) * padded_len],
            );
        }
        Ok(Self {
            depth,
            len,
            width,
            data,
        })
    }

    /// A (M x K, row-major) packed as the left operand of `isa`'s microkernel.
    pub fn pack_a(isa: Isa, a: &[f32], m: usize, k: usize) -> Result<Self> {
        Self::pack(&LaneMajor::new(a, k, m, k)?, isa.microkernel()?.mr)
    }

    /// B (K x N, row-major) packed as the right operand of `isa`'s microkernel.
    pub fn pack_b(isa: Isa, b: &[f32], k: usize, n: usize) -> Result<Self> {
        Self::pack(&KMajor::new(b, k, n, n)?, isa.microkernel()?.nr)
    }

    /// B = Wᵀ given W (N x K, row-major), as a linear layer stores its (out, in) weight,
    /// packed as the right operand of `isa`'s microkernel.
    pub fn pack_b_transposed(isa: Isa, w: &[f32], n: usize, k: usize) -> Result<Self> {
        Self::pack(&LaneMajor::new(w, k, n, k)?, isa.microkernel()?.nr)
    }

    /// Lanes per panel this matrix was packed with.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Offset of the block starting at (k0, first_lane) of depth kc.
    fn block_offset(&self, k0: usize, kc: usize, first_lane: usize) -> usize {
        k0 * padded(self.len, self.width) + first_lane * kc
    }
}

impl PanelSource for PackedMatrix {
    fn depth(&self) -> usize {
        self.depth
    }

    fn len(&self) -> usize {
        self.len
    }

    fn pack(
        &self,
        k0: usize,
        kc: usize,
        first_lane: usize,
        lanes: usize,
        width: usize,
        dst: &mut [f32],
    ) {
        if let Some(block) = self.packed(k0, kc, first_lane, lanes, width) {
            dst[..block.len()].copy_from_slice(block);
            return;
        }
        // Another panel width: read the values back out of this layout.
        let padded_len = padded(self.len, self.width);
        let value = |k: usize, lane: usize| {
            let block = (k / KC) * KC;
            let block_kc = KC.min(self.depth - block);
            let panel = lane / self.width;
            self.data.as_slice()[block * padded_len
                + panel * block_kc * self.width
                + (k - block) * self.width
                + lane % self.width]
        };
        for (p, panel) in dst[..padded(lanes, width) * kc]
            .chunks_exact_mut(width * kc)
            .enumerate()
        {
            for (k, row) in panel.chunks_exact_mut(width).enumerate() {
                for (offset, v) in row.iter_mut().enumerate() {
                    let lane = p * width + offset;
                    *v = if lane < lanes {
                        value(k0 + k, first_lane + lane)
                    } else {
                        0.0
                    };
                }
            }
        }
    }

    fn packed(
        &self,
        k0: usize,
        kc: usize,
        first_lane: usize,
        lanes: usize,
        width: usize,
    ) -> Option<&[f32]> {
        let whole_block = k0.is_multiple_of(KC) && kc == KC.min(self.depth - k0);
        let aligned = width == self.width && first_lane.is_multiple_of(width);
        // The last panel of the request may only be partial if it is the matrix's last panel.
        let in_bounds = first_lane + lanes <= self.len;
        if !(whole_block && aligned && in_bounds) {
            return None;
        }
        let start = self.block_offset(k0, kc, first_lane);
        Some(&self.data.as_slice()[start..start + padded(lanes, width) * kc])
    }
}
