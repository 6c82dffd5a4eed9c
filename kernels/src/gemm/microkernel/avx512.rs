//! The AVX-512F microkernel: 12 rows x 32 columns of C in 24 zmm accumulators; per k, two
//! 16-wide loads of B and one broadcast of A per row.

use std::arch::x86_64::*;

use super::{BRows, Isa, Microkernel, OffsetRows, PackedRows};

const MR: usize = 12;
const NR: usize = 32;

microkernel_entries!(Isa::Avx512, "AVX-512F");

#[target_feature(enable = "avx512f")]
unsafe fn tile<B: BRows>(kc: usize, a: *const f32, b: B, c: *mut f32, ldc: usize) {
    // SAFETY (whole body): the caller guarantees a (kc * MR), B's rows (NR values each for
    // k < kc) and the C tile (r * ldc + j, r < MR, j < NR) are in bounds; unaligned
    // loads/stores have no alignment need.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        for k in 0..kc {
            let b_k = b.row(k);
            let b0 = _mm512_loadu_ps(b_k);
            let b1 = _mm512_loadu_ps(b_k.add(16));
            let a_k = a.add(k * MR);
            for (r, row) in acc.iter_mut().enumerate() {
                let a_rk = _mm512_set1_ps(*a_k.add(r));
                row[0] = _mm512_fmadd_ps(a_rk, b0, row[0]);
                row[1] = _mm512_fmadd_ps(a_rk, b1, row[1]);
            }
        }
        for (r, row) in acc.iter().enumerate() {
            let (c0, c1) = (c.add(r * ldc), c.add(r * ldc + 16));
            _mm512_storeu_ps(c0, _mm512_add_ps(_mm512_loadu_ps(c0), row[0]));
            _mm512_storeu_ps(c1, _mm512_add_ps(_mm512_loadu_ps(c1), row[1]));
        }
    }
}
