//! The portable microkernel: plain Rust, `f32::mul_add` so it matches the FMA kernels bit for
//! bit.

use super::{Isa, Microkernel};

const MR: usize = 4;
const NR: usize = 8;

pub(super) const MICROKERNEL: Microkernel = Microkernel {
    isa: Isa::Portable,
    mr: MR,
    nr: NR,
    run: tile,
};

/// # Safety
/// See [`super::MicrokernelFn`].
unsafe fn tile(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize) {
    // SAFETY: the caller guarantees the extents of a, b and the C tile.
    let (a, b) = unsafe {
        (
            std::slice::from_raw_parts(a, kc * MR),
            std::slice::from_raw_parts(b, kc * NR),
        )
    };
    let mut acc = [[0f32; NR]; MR];
    for (a_k, b_k) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
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
