//! bf16 matrix products on the CPU with f32 accumulation: C = A x B (+ bias), A: M x K, B: K x N.
//!
//! Operands are rounded to bf16 (round to nearest even) and packed as *pairs*: one u32 holds
//! the values at k = 2p (low half) and k = 2p + 1 (high half), which is what `VDPBF16PS`
//! consumes. B is packed in panels of [`NR`] columns (`k_pairs x NR` u32); A is read in panels
//! of [`MR`] rows, either packed (`k_pairs x MR` u32) or in place from bf16 rows. An odd K is
//! padded with a zero value.
//!
//! The microkernel is picked once at run time: AVX512-BF16 where the CPU has it
//! ([`Microkernel::Avx512Bf16`]), otherwise a portable one ([`Microkernel::Portable`]) on the same
//! layouts. Results are deterministic: every output element is computed by the same microkernel
//! with the same order along K whatever M, N, the panel it falls in (tail panels are zero-padded
//! and run the same code) and the number of threads (no split along K).

#[cfg(target_arch = "x86_64")]
mod avx512;
mod conv;
mod drivers;
mod op;
mod pack;
mod portable;
mod reference;

pub use conv::{
    conv2d_bf16, conv2d_bf16_with, conv2d_output_size, Conv2dGeometry, PackedConvWeights,
};
pub use drivers::{linear_bf16, matmul_bf16, matmul_bf16_with, Bias, Out};
pub use op::{Conv2dBf16, LinearBf16};
pub use pack::{PackedA, PackedB, ToBf16};
pub use reference::{conv2d_bf16_reference, matmul_bf16_reference};

/// Rows of A per microkernel call (broadcast operands).
pub const MR: usize = 8;
/// 16-lane f32 vectors of output columns per microkernel call.
const NR_VECTORS: usize = 3;
/// Columns of B per microkernel call.
pub const NR: usize = NR_VECTORS * 16;

/// Where a microkernel reads A's pairs.
#[derive(Clone, Copy, Debug)]
enum ALayout {
    /// A packed panel: pair p of row m at `p * MR + m`.
    Packed,
    /// Rows in place: pair p of row m at `m * lda + p` (u32 units).
    Rows { lda: usize },
}

/// Where a microkernel reads B's pairs.
#[derive(Clone, Copy, Debug)]
enum BLayout<'a> {
    /// A packed panel: pair p of column n at `p * NR + n`.
    Packed,
    /// Rows in place: pair p of column n at `table.offsets()[first + p] + n`.
    Offsets { table: &'a RowOffsets, first: usize },
}

/// Start offsets of B's pair rows for [`BLayout::Offsets`], with their maximum (so the bounds
/// of a whole microkernel call are checked in O(1)).
#[derive(Clone, Debug)]
struct RowOffsets {
    offsets: Vec<usize>,
    max: usize,
}

impl RowOffsets {
    fn new(offsets: Vec<usize>) -> Self {
        let max = offsets.iter().copied().max().unwrap_or(0);
        Self { offsets, max }
    }

    fn offsets(&self) -> &[usize] {
        &self.offsets
    }
}

/// The microkernel implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Microkernel {
    /// `VDPBF16PS` (x86-64 with avx512f + avx512bf16).
    Avx512Bf16,
    /// Plain f32 multiply-adds on the same layouts, correct on every CPU.
    Portable,
}

impl Microkernel {
    /// The fastest one this CPU runs (detected once). `IMAGO_BF16_KERNEL=portable` in the
    /// environment forces the portable one (read once), to exercise the fallback.
    pub fn detect() -> Self {
        static PICKED: std::sync::OnceLock<Microkernel> = std::sync::OnceLock::new();
        *PICKED.get_or_init(|| {
            let forced_portable = std::env::var("IMAGO_BF16_KERNEL").is_ok_and(|v| v == "portable");
            if !forced_portable && Self::Avx512Bf16.is_supported() {
                Self::Avx512Bf16
            } else {
                Self::Portable
            }
        })
    }

    /// Whether this CPU can run it.
    pub fn is_supported(self) -> bool {
        match self {
            Self::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Self::Avx512Bf16 => {
                is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Self::Avx512Bf16 => false,
        }
    }

    /// tile (+)= A-panel x B-panel over `k_pairs` pairs (added to the tile when `accumulate`).
    /// `a` must hold MR rows of `k_pairs` pairs in `a_layout`, `b` the `k_pairs` rows of NR
    /// pairs in `b_layout`; both are checked.
    #[allow(clippy::too_many_arguments)]
    fn run(
        self,
        k_pairs: usize,
        a: &[u32],
        a_layout: ALayout,
        b: &[u32],
        b_layout: BLayout<'_>,
        tile: &mut [f32; MR * NR],
        accumulate: bool,
    ) {
        let a_needed = match a_layout {
            ALayout::Packed => k_pairs * MR,
            ALayout::Rows { lda } => (MR - 1) * lda + k_pairs,
        };
        let b_fits = match b_layout {
            BLayout::Packed => b.len() >= k_pairs * NR,
            BLayout::Offsets { table, first } => {
                first + k_pairs <= table.offsets.len() && b.len() >= table.max + NR
            }
        };
        assert!(
            a.len() >= a_needed && b_fits,
            "gemm_bf16 microkernel: operands too short"
        );
        match self {
            #[cfg(target_arch = "x86_64")]
            Self::Avx512Bf16 if self.is_supported() => {
                // SAFETY: the CPU has avx512f + avx512bf16 (checked above) and the slices hold
                // every pair the kernel reads (asserted above).
                unsafe {
                    avx512::microkernel(
                        k_pairs,
                        a.as_ptr(),
                        a_layout,
                        b.as_ptr(),
                        b_layout,
                        tile,
                        accumulate,
                    )
                }
            }
            _ => portable::microkernel(k_pairs, a, a_layout, b, b_layout, tile, accumulate),
        }
    }
}

/// f32 -> bf16 bits, rounding to nearest even; NaN stays a (quiet) NaN. Branch-free so loops
/// over slices vectorise.
#[inline(always)]
pub fn f32_to_bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
    let is_nan = (bits & 0x7fff_ffff) > 0x7f80_0000;
    if is_nan {
        ((bits >> 16) | 0x40) as u16
    } else {
        rounded as u16
    }
}

/// bf16 bits -> f32 (exact).
#[inline(always)]
pub fn bf16_bits_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// A pair of bf16 values as the kernels store it: `even` in the low half.
#[inline(always)]
fn pair(even: u16, odd: u16) -> u32 {
    (even as u32) | ((odd as u32) << 16)
}
