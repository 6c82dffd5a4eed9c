//! Packing operands into bf16 pairs (see the module docs for the layouts).

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use super::{f32_to_bf16_bits, pair, MR, NR};

/// An element that can be rounded to bf16 (round to nearest even).
pub trait ToBf16: Copy + Send + Sync + 'static {
    fn bf16_bits(self) -> u16;

    /// The slice as bf16 bits without a copy, where it already is bf16.
    fn as_bf16_bits(values: &[Self]) -> Option<&[u16]> {
        let _ = values;
        None
    }
}

/// The values as bf16 bits: borrowed when they are bf16 already, else rounded into a new vector.
pub(super) fn bf16_bits_of<T: ToBf16>(values: &[T]) -> std::borrow::Cow<'_, [u16]> {
    match T::as_bf16_bits(values) {
        Some(bits) => std::borrow::Cow::Borrowed(bits),
        None => std::borrow::Cow::Owned(values.iter().map(|v| v.bf16_bits()).collect()),
    }
}

impl ToBf16 for f32 {
    #[inline(always)]
    fn bf16_bits(self) -> u16 {
        f32_to_bf16_bits(self)
    }
}

impl ToBf16 for bf16 {
    #[inline(always)]
    fn bf16_bits(self) -> u16 {
        self.to_bits()
    }

    fn as_bf16_bits(values: &[Self]) -> Option<&[u16]> {
        Some(values.reinterpret_cast())
    }
}

impl ToBf16 for f16 {
    #[inline(always)]
    fn bf16_bits(self) -> u16 {
        // f16 -> f32 is exact; one rounding to bf16.
        f32_to_bf16_bits(self.to_f32())
    }
}

/// Pairs along K of a length-K row: pair p = (row[2p], row[2p + 1]), zero past the end.
#[inline(always)]
pub(super) fn row_pair<T: ToBf16>(row: &[T], p: usize) -> u32 {
    let even = row.get(2 * p).map_or(0, |v| v.bf16_bits());
    let odd = row.get(2 * p + 1).map_or(0, |v| v.bf16_bits());
    pair(even, odd)
}

/// A (M x K) packed once in panels of [`MR`] rows, for operands reused across calls (weights).
#[derive(Clone, Debug)]
pub struct PackedA {
    m: usize,
    k: usize,
    /// Panel i (rows i*MR..) at `i * k_pairs * MR`, pair p of its row r at `p * MR + r`.
    panels: Vec<u32>,
}

impl PackedA {
    /// Packs the M x K matrix whose row `r` is `row(r)` (each of length K).
    pub fn pack<'a, T: ToBf16>(m: usize, k: usize, row: impl Fn(usize) -> &'a [T]) -> Self {
        let k_pairs = k.div_ceil(2);
        let panel_count = m.div_ceil(MR);
        let mut panels = vec![0u32; panel_count * k_pairs * MR];
        for (i, panel) in panels.chunks_exact_mut((k_pairs * MR).max(1)).enumerate() {
            for r in 0..MR.min(m - i * MR) {
                let src = row(i * MR + r);
                assert_eq!(
                    src.len(),
                    k,
                    "PackedA::pack: row {} has the wrong length",
                    i * MR + r
                );
                for p in 0..k_pairs {
                    panel[p * MR + r] = row_pair(src, p);
                }
            }
        }
        Self { m, k, panels }
    }

    /// Packs an M x (2 * k_pairs) matrix given pair by pair: `pair_at(row, p)`.
    pub(super) fn from_pairs(
        m: usize,
        k_pairs: usize,
        pair_at: impl Fn(usize, usize) -> u32,
    ) -> Self {
        let mut panels = vec![0u32; m.div_ceil(MR) * k_pairs * MR];
        for (i, panel) in panels.chunks_exact_mut((k_pairs * MR).max(1)).enumerate() {
            for r in 0..MR.min(m - i * MR) {
                for p in 0..k_pairs {
                    panel[p * MR + r] = pair_at(i * MR + r, p);
                }
            }
        }
        Self {
            m,
            k: 2 * k_pairs,
            panels,
        }
    }

    pub fn rows(&self) -> usize {
        self.m
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub(super) fn k_pairs(&self) -> usize {
        self.k.div_ceil(2)
    }

    pub(super) fn panel_count(&self) -> usize {
        self.m.div_ceil(MR)
    }

    /// Packed panel `i` (rows `i * MR ..`).
    pub(super) fn panel(&self, i: usize) -> &[u32] {
        let len = self.k_pairs() * MR;
        &self.panels[i * len..(i + 1) * len]
    }
}

/// B (K x N) packed once in panels of [`NR`] columns, for operands reused across calls (weights).
#[derive(Clone, Debug)]
pub struct PackedB {
    k: usize,
    n: usize,
    /// Panel j (columns j*NR..) at `j * k_pairs * NR`, pair p of its column c at `p * NR + c`.
    panels: Vec<u32>,
}

impl PackedB {
    /// Packs B = Wᵀ from W (N x K), whose row `n` is `w_row(n)` (length K): the layout of a
    /// linear layer's weight (out_features x in_features).
    pub fn pack_transposed<'a, T: ToBf16>(
        n: usize,
        k: usize,
        w_row: impl Fn(usize) -> &'a [T],
    ) -> Self {
        let k_pairs = k.div_ceil(2);
        let mut panels = vec![0u32; n.div_ceil(NR) * k_pairs * NR];
        for (j, panel) in panels.chunks_exact_mut((k_pairs * NR).max(1)).enumerate() {
            for c in 0..NR.min(n - j * NR) {
                let src = w_row(j * NR + c);
                assert_eq!(
                    src.len(),
                    k,
                    "PackedB::pack_transposed: row {} has the wrong length",
                    j * NR + c
                );
                for p in 0..k_pairs {
                    panel[p * NR + c] = row_pair(src, p);
                }
            }
        }
        Self { k, n, panels }
    }

    /// Packs B (K x N) whose row `k` is `b_row(k)` (length N).
    pub fn pack<'a, T: ToBf16>(k: usize, n: usize, b_row: impl Fn(usize) -> &'a [T]) -> Self {
        let k_pairs = k.div_ceil(2);
        let mut panels = vec![0u32; n.div_ceil(NR) * k_pairs * NR];
        let panel_len = (k_pairs * NR).max(1);
        for p in 0..k_pairs {
            let even = b_row(2 * p);
            let odd = (2 * p + 1 < k).then(|| b_row(2 * p + 1));
            for (i, &e) in even.iter().enumerate() {
                let o = odd.map_or(0, |row| row[i].bf16_bits());
                panels[(i / NR) * panel_len + p * NR + i % NR] = pair(e.bf16_bits(), o);
            }
        }
        Self { k, n, panels }
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn columns(&self) -> usize {
        self.n
    }

    pub(super) fn k_pairs(&self) -> usize {
        self.k.div_ceil(2)
    }

    pub(super) fn panel_count(&self) -> usize {
        self.n.div_ceil(NR)
    }

    /// Packed panel `j` (columns `j * NR ..`).
    pub(super) fn panel(&self, j: usize) -> &[u32] {
        let len = self.k_pairs() * NR;
        &self.panels[j * len..(j + 1) * len]
    }
}

/// Packs up to MR rows of A given as bf16 bits (the rest zero) into `panel` (`k_pairs * MR` u32),
/// for A operands that cannot be read in place.
pub(super) fn pack_a_panel(rows: &[&[u16]], k_pairs: usize, panel: &mut [u32]) {
    panel[..k_pairs * MR].fill(0);
    for (r, src) in rows.iter().enumerate() {
        for p in 0..k_pairs {
            let even = src.get(2 * p).copied().unwrap_or(0);
            let odd = src.get(2 * p + 1).copied().unwrap_or(0);
            panel[p * MR + r] = pair(even, odd);
        }
    }
}
