//! The blocked drivers around the microkernel: which panels meet, in which order, on which
//! thread, and the epilogue (bias, rounding to the output type).

use candle_core::{bail, Result};
use half::bf16;
use rayon::prelude::*;

use super::pack::{bf16_bits_of, pack_a_panel};
use super::{f32_to_bf16_bits, ALayout, BLayout, Microkernel, PackedB, ToBf16, MR, NR};

/// Rows of A per parallel work unit of [`matmul_bf16`] (a multiple of MR): enough to reuse each
/// B panel from cache several times, small enough to spread 77-token products over two cores.
const ROWS_PER_UNIT: usize = 4 * MR;

/// A bias added to the f32 sums before rounding to the output type.
#[derive(Clone, Copy, Debug)]
pub enum Bias<'a> {
    None,
    /// One value per output row (M of them).
    PerRow(&'a [f32]),
    /// One value per output column (N of them).
    PerColumn(&'a [f32]),
}

impl Bias<'_> {
    pub(super) fn check(&self, m: usize, n: usize) -> Result<()> {
        match *self {
            Bias::PerRow(b) if b.len() != m => {
                bail!("gemm_bf16: {} row biases for {m} rows", b.len())
            }
            Bias::PerColumn(b) if b.len() != n => {
                bail!("gemm_bf16: {} column biases for {n} columns", b.len())
            }
            _ => Ok(()),
        }
    }
}

/// The output matrix, row-major and contiguous (M x N).
#[derive(Debug)]
pub enum Out<'a> {
    F32(&'a mut [f32]),
    Bf16(&'a mut [bf16]),
}

impl Out<'_> {
    pub(super) fn len(&self) -> usize {
        match self {
            Out::F32(o) => o.len(),
            Out::Bf16(o) => o.len(),
        }
    }
}

/// An output element: the f32 sum, rounded (to nearest even) for bf16.
pub(super) trait OutElem: Copy + Send + Sync {
    fn from_sum(x: f32) -> Self;
}

impl OutElem for f32 {
    #[inline(always)]
    fn from_sum(x: f32) -> Self {
        x
    }
}

impl OutElem for bf16 {
    #[inline(always)]
    fn from_sum(x: f32) -> Self {
        bf16::from_bits(f32_to_bf16_bits(x))
    }
}

/// Writes one tile row (+ bias) to `dst`: `src[c]` is output (row, col0 + c).
#[inline(always)]
pub(super) fn store_row<O: OutElem>(
    src: &[f32],
    dst: &mut [O],
    bias: Bias<'_>,
    row: usize,
    col0: usize,
) {
    match bias {
        Bias::None => dst
            .iter_mut()
            .zip(src)
            .for_each(|(d, &s)| *d = O::from_sum(s)),
        Bias::PerRow(b) => {
            let b = b[row];
            dst.iter_mut()
                .zip(src)
                .for_each(|(d, &s)| *d = O::from_sum(s + b));
        }
        Bias::PerColumn(b) => {
            let b = &b[col0..col0 + dst.len()];
            dst.iter_mut()
                .zip(src)
                .zip(b)
                .for_each(|((d, &s), &b)| *d = O::from_sum(s + b));
        }
    }
}

/// out (M x N) = A (M x K, row r at `a[r * lda ..][..K]`) x B (pre-packed K x N) + bias.
///
/// A is rounded to bf16 first unless it is bf16 already; bf16 rows with even K and even `lda`
/// are read in place. Parallel over blocks of rows; each output row's value depends only on
/// that row of A and on B.
pub fn matmul_bf16<T: ToBf16>(
    a: &[T],
    m: usize,
    lda: usize,
    b: &PackedB,
    bias: Bias<'_>,
    out: Out<'_>,
) -> Result<()> {
    matmul_bf16_with(Microkernel::detect(), a, m, lda, b, bias, out)
}

/// [`matmul_bf16`] with a chosen microkernel (an error if this CPU cannot run it), so tests can
/// run the portable fallback on machines that have AVX512-BF16.
pub fn matmul_bf16_with<T: ToBf16>(
    kernel: Microkernel,
    a: &[T],
    m: usize,
    lda: usize,
    b: &PackedB,
    bias: Bias<'_>,
    out: Out<'_>,
) -> Result<()> {
    if !kernel.is_supported() {
        bail!("matmul_bf16: this CPU cannot run the {kernel:?} microkernel");
    }
    let (k, n) = (b.k(), b.columns());
    if m > 0 && (lda < k || a.len() < (m - 1) * lda + k) {
        bail!(
            "matmul_bf16: A holds {} values, too few for {m} rows of {k} with stride {lda}",
            a.len()
        );
    }
    if out.len() != m * n {
        bail!(
            "matmul_bf16: output holds {} values, expected {m} x {n}",
            out.len()
        );
    }
    bias.check(m, n)?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let a_bits = bf16_bits_of(&a[..(m - 1) * lda + k]);
    match out {
        Out::F32(o) => matmul_rows(kernel, &a_bits, lda, b, bias, o),
        Out::Bf16(o) => matmul_rows(kernel, &a_bits, lda, b, bias, o),
    }
    Ok(())
}

/// A linear layer: out (rows x out_features) = x (rows x in_features, contiguous) x Wᵀ + bias,
/// with W pre-packed by [`PackedB::pack_transposed`].
pub fn linear_bf16<T: ToBf16>(
    x: &[T],
    w: &PackedB,
    bias: Option<&[f32]>,
    out: Out<'_>,
) -> Result<()> {
    let k = w.k();
    if k == 0 || !x.len().is_multiple_of(k) {
        bail!(
            "linear_bf16: input of {} values is not rows of {k} features",
            x.len()
        );
    }
    let bias = bias.map_or(Bias::None, Bias::PerColumn);
    matmul_bf16(x, x.len() / k, k, w, bias, out)
}

fn matmul_rows<O: OutElem>(
    kernel: Microkernel,
    a: &[u16],
    lda: usize,
    b: &PackedB,
    bias: Bias<'_>,
    out: &mut [O],
) {
    let n = b.columns();
    let k_pairs = b.k_pairs();
    let in_place = in_place_rows(a, b.k(), lda);
    out.par_chunks_mut(ROWS_PER_UNIT * n)
        .enumerate()
        .for_each(|(unit, out_rows)| {
            let mut tile = [0f32; MR * NR];
            let mut packed = Vec::new();
            let row0 = unit * ROWS_PER_UNIT;
            let unit_rows = out_rows.len() / n;
            // A panels of this unit: read in place when whole, else packed (zero-padded).
            let panels: Vec<(usize, usize)> = (0..unit_rows.div_ceil(MR))
                .map(|i| (row0 + i * MR, MR.min(unit_rows - i * MR)))
                .collect();
            for j in 0..b.panel_count() {
                let b_panel = b.panel(j);
                let cols = NR.min(n - j * NR);
                for &(r0, rows) in &panels {
                    match in_place {
                        Some(words) if rows == MR => {
                            let lda_words = lda / 2;
                            let a_rows = &words[r0 * lda_words..];
                            kernel.run(
                                k_pairs,
                                a_rows,
                                ALayout::Rows { lda: lda_words },
                                b_panel,
                                BLayout::Packed,
                                &mut tile,
                                false,
                            );
                        }
                        _ => {
                            if packed.is_empty() {
                                packed = vec![0u32; k_pairs * MR];
                            }
                            let src: Vec<&[u16]> = (r0..r0 + rows)
                                .map(|r| &a[r * lda..r * lda + b.k()])
                                .collect();
                            pack_a_panel(&src, k_pairs, &mut packed);
                            kernel.run(
                                k_pairs,
                                &packed,
                                ALayout::Packed,
                                b_panel,
                                BLayout::Packed,
                                &mut tile,
                                false,
                            );
                        }
                    }
                    for r in 0..rows {
                        let dst = &mut out_rows[(r0 - row0 + r) * n + j * NR..][..cols];
                        store_row(&tile[r * NR..r * NR + cols], dst, bias, r0 + r, j * NR);
                    }
                }
            }
        });
}

/// A's bf16 rows as u32 pairs, when they can be read in place: even K and stride (no pair
/// straddles two rows) and a 4-byte aligned start.
fn in_place_rows(a: &[u16], k: usize, lda: usize) -> Option<&[u32]> {
    if !k.is_multiple_of(2) || !lda.is_multiple_of(2) {
        return None;
    }
    // SAFETY: u16 -> u32 reinterprets plain integers; every bit pattern is a valid u32, and
    // align_to only returns the correctly aligned middle part.
    let (head, words, _) = unsafe { a.align_to::<u32>() };
    head.is_empty().then_some(words)
}
