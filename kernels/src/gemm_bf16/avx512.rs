//! The AVX512-BF16 microkernel: `VDPBF16PS` multiplies 16 pairs of bf16 and adds both products
//! into 16 f32 lanes, so one instruction takes two steps along K for 16 output columns.
//!
//! Rounding (the same for every call, whatever the matrix sizes): each instruction adds its two
//! products into the f32 accumulator one after the other, rounding to nearest even, with bf16
//! inputs and f32 outputs denormals flushed to zero. Pairs are taken in increasing K order.

use std::arch::x86_64::*;

use super::{ALayout, BLayout, MR, NR, NR_VECTORS};

/// tile[MR x NR] = A-panel x B-panel over `k_pairs` pairs of K, added to the tile's values
/// when `accumulate` (continuing a sum over an earlier range of K).
///
/// `a`: pair `p` of row `m` at `a + m * row_step + p * pair_step` (u32 units, low half = even k),
/// with `(row_step, pair_step)` = `(1, MR)` for a packed panel or `(lda, 1)` for rows read in place.
/// `b`: pair `p` of column `n` at `b + p * NR + n` for a packed panel, or at
/// `b + offsets[first + p] + n` for rows read in place.
///
/// # Safety
/// The CPU must support avx512f and avx512bf16, and `a`, `b` must be valid for the reads above.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn microkernel(
    k_pairs: usize,
    a: *const u32,
    a_layout: ALayout,
    b: *const u32,
    b_layout: BLayout<'_>,
    tile: &mut [f32; MR * NR],
    accumulate: bool,
) {
    let mut acc = [[_mm512_setzero_ps(); NR_VECTORS]; MR];
    if accumulate {
        for (m, row) in acc.iter_mut().enumerate() {
            for (v, lane) in row.iter_mut().enumerate() {
                // SAFETY: m * NR + v * 16 + 16 <= MR * NR.
                *lane = unsafe { _mm512_loadu_ps(tile.as_ptr().add(m * NR + v * 16)) };
            }
        }
    }
    match (a_layout, b_layout) {
        (ALayout::Packed, BLayout::Packed) => {
            for p in 0..k_pairs {
                // SAFETY: pair p of both packed panels lies within the caller's bounds.
                unsafe { step(&mut acc, a.add(p * MR), 1, b.add(p * NR)) };
            }
        }
        (ALayout::Rows { lda }, BLayout::Packed) => {
            for p in 0..k_pairs {
                // SAFETY: row m's pair p is at a + m * lda + p, within the caller's bounds.
                unsafe { step(&mut acc, a.add(p), lda, b.add(p * NR)) };
            }
        }
        (ALayout::Packed, BLayout::Offsets { table, first }) => {
            let offsets = &table.offsets()[first..first + k_pairs];
            for (p, &offset) in offsets.iter().enumerate() {
                // SAFETY: the caller guarantees NR pairs at b + every offset of the table.
                unsafe { step(&mut acc, a.add(p * MR), 1, b.add(offset)) };
            }
        }
        (ALayout::Rows { lda }, BLayout::Offsets { table, first }) => {
            let offsets = &table.offsets()[first..first + k_pairs];
            for (p, &offset) in offsets.iter().enumerate() {
                // SAFETY: as in the two arms above.
                unsafe { step(&mut acc, a.add(p), lda, b.add(offset)) };
            }
        }
    }
    for (m, row) in acc.iter().enumerate() {
        for (v, lane) in row.iter().enumerate() {
            // SAFETY: m * NR + v * 16 + 16 <= MR * NR.
            unsafe { _mm512_storeu_ps(tile.as_mut_ptr().add(m * NR + v * 16), *lane) };
        }
    }
}

/// One pair of K: loads the B pairs of NR columns, broadcasts each row's A pair, accumulates.
#[inline(always)]
unsafe fn step(
    acc: &mut [[__m512; NR_VECTORS]; MR],
    a: *const u32,
    row_step: usize,
    b: *const u32,
) {
    let mut bv = [_mm512_setzero_si512(); NR_VECTORS];
    for (v, reg) in bv.iter_mut().enumerate() {
        // SAFETY: the caller guarantees NR u32 at b.
        *reg = unsafe { _mm512_loadu_si512(b.add(v * 16).cast()) };
    }
    for (m, row) in acc.iter_mut().enumerate() {
        // SAFETY: the caller guarantees a pair for each of the MR rows.
        let av = _mm512_set1_epi32(unsafe { a.add(m * row_step).read_unaligned() } as i32);
        for (lane, bv) in row.iter_mut().zip(&bv) {
            *lane = _mm512_dpbf16_ps(*lane, as_bf16x32(av), as_bf16x32(*bv));
        }
    }
}

#[inline(always)]
fn as_bf16x32(x: __m512i) -> __m512bh {
    // SAFETY: both are 512-bit plain-data vectors; the bits are read as 32 bf16.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(x) }
}
