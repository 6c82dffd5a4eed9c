//! The portable microkernel: plain Rust, `f32::mul_add` so it matches the FMA kernels bit for
//! bit.

use super::{BRows, Isa, Microkernel, OffsetRows, PackedRows};

const MR: usize = 4;
const NR: usize = 8;

microkernel_entries!(Isa::Portable, "nothing beyond Rust");

/// # Safety
/// The caller guarantees a (kc * MR), B's rows (NR values each for k < kc) and the C tile.
unsafe fn tile<B: BRows>(kc: usize, a: *const f32, b: B, c: *mut f32, ldc: usize) {
    // SAFETY: the caller guarantees the extent of a.
    let a = unsafe { std::slice::from_raw_parts(a, kc * MR) };
    let mut acc = [[0f32; NR]; MR];
    for (k, a_k) in a.chunks_exact(MR).enumerate() {
        // SAFETY: k < kc, and row k holds NR readable values.
        let b_k = unsafe { std::slice::from_raw_parts(b.row(k), NR) };
        for (row, &a_rk) in acc.iter_mut().zip(a_k) {
            for (v, &b_kj) in row.iter_mut().zip(b_k) {
                *v = a_rk.mul_add(b_kj, *v);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            // SAFETY: r < MR, j < NR are inside the C tile.
            unsafe { *c.add(r * ldc + j) += v };
        }
    }
}
