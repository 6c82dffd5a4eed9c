//! Where packed panels come from: an operand seen as a K x `len` matrix (see the module doc of
//! [`super`]), packed block by block on demand or handed out already packed.

use candle_core::{bail, Result};

/// An operand the GEMM driver reads in packed panels of element type `T`.
///
/// The driver asks for blocks `[k0, k0 + kc)` x `[first_lane, first_lane + lanes)` where `k0`
/// is a multiple of [`super::KC`], `kc` is the depth of that K-block, and `first_lane` is a
/// multiple of `width`.
pub trait PanelSource<T = f32>: Sync {
    /// K, the dimension summed over.
    fn depth(&self) -> usize;
    /// The other dimension: A's rows or B's columns.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Writes the block into `dst` (at least `ceil(lanes / width) * width * kc` long) in the
    /// packed layout, zero in the lanes past `lanes`.
    fn pack(
        &self,
        k0: usize,
        kc: usize,
        first_lane: usize,
        lanes: usize,
        width: usize,
        dst: &mut [T],
    );
    /// The block in packed layout without copying, if this source stores it so.
    fn packed(
        &self,
        _k0: usize,
        _kc: usize,
        _first_lane: usize,
        _lanes: usize,
        _width: usize,
    ) -> Option<&[T]> {
        None
    }
}

/// Rounds `len` up to a whole number of panels of `width`.
pub(crate) fn padded(len: usize, width: usize) -> usize {
    len.div_ceil(width) * width
}

/// Packs a block given an accessor for one lane's run of k values. `lane_values(lane, k0, kc,
/// out, stride)` writes value k0 + i of `lane` to `out[i * stride]`.
fn pack_by_lane(
    kc: usize,
    first_lane: usize,
    lanes: usize,
    width: usize,
    dst: &mut [f32],
    lane_values: impl Fn(usize, &mut [f32], usize),
) {
    for (p, panel) in dst[..padded(lanes, width) * kc]
        .chunks_exact_mut(width * kc)
        .enumerate()
    {
        for offset in 0..width {
            let lane = p * width + offset;
            if lane < lanes {
                lane_values(first_lane + lane, &mut panel[offset..], width);
            } else {
                panel[offset..]
                    .iter_mut()
                    .step_by(width)
                    .for_each(|v| *v = 0.0);
            }
        }
    }
}

/// A matrix whose element (k, lane) is at `data[k * ld + lane]`: B row-major (K x N), or A
/// column-major.
#[derive(Clone, Copy, Debug)]
pub struct KMajor<'a> {
    data: &'a [f32],
    depth: usize,
    len: usize,
    ld: usize,
}

impl<'a> KMajor<'a> {
    /// `depth` rows of `len` values, row `k` starting at `k * ld`.
    pub fn new(data: &'a [f32], depth: usize, len: usize, ld: usize) -> Result<Self> {
        check_extent("KMajor", data.len(), depth, len, ld)?;
        Ok(Self {
            data,
            depth,
            len,
            ld,
        })
    }
}

impl PanelSource for KMajor<'_> {
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
        for (p, panel) in dst[..padded(lanes, width) * kc]
            .chunks_exact_mut(width * kc)
            .enumerate()
        {
            let lane0 = first_lane + p * width;
            let full = width.min(lanes - p * width);
            for (k, row) in panel.chunks_exact_mut(width).enumerate() {
                let start = (k0 + k) * self.ld + lane0;
                row[..full].copy_from_slice(&self.data[start..start + full]);
                row[full..].iter_mut().for_each(|v| *v = 0.0);
            }
        }
    }
}

/// A matrix whose element (k, lane) is at `data[lane * ld + k]`: A row-major (M x K), or B
/// given as its transpose (a linear layer's (out, in) weight).
#[derive(Clone, Copy, Debug)]
pub struct LaneMajor<'a> {
    data: &'a [f32],
    depth: usize,
    len: usize,
    ld: usize,
}

impl<'a> LaneMajor<'a> {
    /// `len` rows of `depth` values, row `lane` starting at `lane * ld`.
    pub fn new(data: &'a [f32], depth: usize, len: usize, ld: usize) -> Result<Self> {
        check_extent("LaneMajor", data.len(), len, depth, ld)?;
        Ok(Self {
            data,
            depth,
            len,
            ld,
        })
    }
}

impl PanelSource for LaneMajor<'_> {
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
        pack_by_lane(kc, first_lane, lanes, width, dst, |lane, out, stride| {
            let row = &self.data[lane * self.ld + k0..lane * self.ld + k0 + kc];
            for (o, &v) in out.iter_mut().step_by(stride).zip(row) {
                *o = v;
            }
        });
    }
}

/// Checks that `rows` rows of `cols` values at stride `ld` fit in `available` values.
fn check_extent(what: &str, available: usize, rows: usize, cols: usize, ld: usize) -> Result<()> {
    if cols > ld && rows > 1 {
        bail!("{what}: row length {cols} exceeds the stride {ld}");
    }
    let needed = if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * ld + cols
    };
    if available < needed {
        bail!("{what}: {rows} x {cols} at stride {ld} needs {needed} values, got {available}");
    }
    Ok(())
}
