//! Packed, cache-blocked f32 GEMM: C = A·B (+ bias per row or per column), optionally added to
//! what C already holds, with AVX-512F, AVX2+FMA and portable microkernels picked at run time.
//!
//! # Determinism
//! Every element of C is `((init + s_0) + s_1) + ...`, where `init` is `bias + c_old` (each
//! term present only when asked for) and `s_b` is the sum over K-block b (k in
//! `[b·KC, (b+1)·KC)`, [`KC`] fixed) as a chain of fused multiply-adds from zero in increasing k
//! order. (Summing per block and then across blocks keeps the rounding error growing with
//! KC + K/KC rather than K.) Tail tiles run the full microkernel on a zero-padded copy, so the
//! result does not depend on M, N, the tiling, the number of threads, nor on which microkernel
//! ran (the portable one uses `f32::mul_add`): all three give the same bits.
//!
//! # Operands as panel sources
//! Both operands are seen the same way, as a K x `len` matrix whose `len` side is cut into
//! panels of `width` lanes: A (M x K) is viewed transposed (lane = row of A, width = the
//! microkernel's MR), B (K x N) as it is (lane = column of B, width = NR). A [`PanelSource`]
//! packs any (k-range, lane-range) block into the packed layout on demand; [`PackedMatrix`] holds
//! a whole operand packed once (weights, at model load) and hands out slices of it.
//!
//! # Packed layout (f32)
//! K is cut into blocks of [`KC`] (the last one shorter); a block starts at
//! `k_block * KC * padded_len` (`padded_len` = `len` rounded up to `width`). Inside a block of
//! depth `kc`, panel `p` (lanes `p*width ..`) starts at `p * kc * width`, and element
//! (k, lane) sits at `(k - k0) * width + (lane - p*width)`: for each k, `width` consecutive
//! lane values. Lanes past `len` are zero.
//!
//! # Extension point: other packed element types
//! [`KC`] is even, so K-blocks never split a pair of consecutive k. A bf16 variant for
//! AVX512-BF16 (`vdpbf16ps`, which sums products over pairs of k) packs with k grouped in pairs:
//! inside a panel, element (k, lane) at `((k - k0) / 2) * 2 * width + 2 * (lane - p*width) +
//! (k - k0) % 2`, a block of odd depth padded with a zero k. The driver's loops ([`driver`])
//! are generic over the packed element type `T` and take the microkernel as a
//! [`Microkernel<T>`], so a bf16 path adds: packing into that layout, a `Microkernel<bf16>`
//! (C stays f32), and its own entry point next to [`gemm`].

mod driver;
mod microkernel;
mod pack;
mod reference;
mod source;

use candle_core::{bail, Result};

pub use driver::{Bias, GemmOutput};
pub use microkernel::{Isa, Microkernel};
pub use pack::PackedMatrix;
pub use reference::gemm_reference;
pub use source::{KMajor, LaneMajor, PanelSource};

/// Depth of a K-block: panels of this depth stay in L1 (A) and L2 (B) while the microkernel runs.
/// Even, so a bf16 layout's k pairs never straddle two blocks.
pub const KC: usize = 256;

/// C = A·B (+ bias) (+ C if `accumulate`), with the microkernel of `isa`.
///
/// `a` is the K x M view of A (lanes are A's rows, packed `isa.microkernel().mr` wide), `b` the
/// K x N view of B (lanes are B's columns, `nr` wide). `c` is M x N, row-major with row stride
/// `c.ld`. Parallel over output blocks with rayon.
pub fn gemm(
    isa: Isa,
    a: &dyn PanelSource,
    b: &dyn PanelSource,
    c: GemmOutput<'_>,
    bias: Bias<'_>,
    accumulate: bool,
) -> Result<()> {
    if a.depth() != b.depth() {
        bail!(
            "gemm: A has depth {} but B has depth {}",
            a.depth(),
            b.depth()
        );
    }
    let kernel = isa.microkernel()?;
    driver::run(&kernel, a, b, c, bias, accumulate)
}
