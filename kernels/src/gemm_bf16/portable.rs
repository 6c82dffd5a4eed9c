//! The portable microkernel: the same packed layouts and the same products as the AVX512-BF16
//! one, computed with f32 multiplies and adds (pair order: even k, then odd k). It runs where the
//! CPU lacks AVX512-BF16 and in tests; its sums may differ from the SIMD kernel's in the last bits.

use super::{bf16_bits_to_f32, ALayout, BLayout, MR, NR};

/// tile[MR x NR] (+)= A-panel x B-panel over `k_pairs` pairs; as the SIMD microkernel.
pub(super) fn microkernel(
    k_pairs: usize,
    a: &[u32],
    a_layout: ALayout,
    b: &[u32],
    b_layout: BLayout<'_>,
    tile: &mut [f32; MR * NR],
    accumulate: bool,
) {
    if !accumulate {
        tile.fill(0.0);
    }
    for p in 0..k_pairs {
        let b_start = match b_layout {
            BLayout::Packed => p * NR,
            BLayout::Offsets { table, first } => table.offsets()[first + p],
        };
        let b_pairs = &b[b_start..b_start + NR];
        for m in 0..MR {
            let pair = match a_layout {
                ALayout::Packed => a[p * MR + m],
                ALayout::Rows { lda } => a[m * lda + p],
            };
            let (a_even, a_odd) = split_pair(pair);
            let row = &mut tile[m * NR..(m + 1) * NR];
            for (c, &bp) in row.iter_mut().zip(b_pairs) {
                let (b_even, b_odd) = split_pair(bp);
                *c += a_even * b_even;
                *c += a_odd * b_odd;
            }
        }
    }
}

#[inline(always)]
fn split_pair(pair: u32) -> (f32, f32) {
    (
        bf16_bits_to_f32(pair as u16),
        bf16_bits_to_f32((pair >> 16) as u16),
    )
}
