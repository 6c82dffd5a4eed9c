//! The microkernels: C tile (MR x NR) += A panel · B panel, one fused multiply-add per k per
//! element in increasing k order, and the run-time choice between them. Each kernel body is
//! generic over where B's rows are ([`BRows`]): a packed panel, or rows read in place through a
//! table of offsets (the stride-1 convolution), with the same arithmetic either way.

/// An ISA module's [`Microkernel`] (`MICROKERNEL`): entry points that run the module's
/// `tile::<B: BRows>` (MR x NR, from its `MR` and `NR` constants) on packed B panels or on rows
/// read through an offset table. `$needs` names what the CPU must support.
macro_rules! microkernel_entries {
    ($isa:expr, $needs:literal) => {
        pub(super) const MICROKERNEL: Microkernel = Microkernel {
            isa: $isa,
            mr: MR,
            nr: NR,
            run: tile_entry,
            run_at_offsets: offsets_entry,
        };

        #[doc = concat!("# Safety\nSee [`super::MicrokernelFn`]; the CPU must support ", $needs, ".")]
        unsafe fn tile_entry(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize) {
            // SAFETY: forwarded contract; Isa::microkernel hands a kernel out only when the CPU
            // supports its instruction set.
            unsafe { tile(kc, a, PackedRows::<NR>(b), c, ldc) }
        }

        #[doc = concat!("# Safety\nSee [`super::OffsetsMicrokernelFn`]; the CPU must support ", $needs, ".")]
        unsafe fn offsets_entry(
            kc: usize,
            a: *const f32,
            b: *const f32,
            offsets: *const usize,
            c: *mut f32,
            ldc: usize,
        ) {
            let rows = OffsetRows { base: b, offsets };
            // SAFETY: as in `tile_entry`.
            unsafe { tile(kc, a, rows, c, ldc) }
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod portable;

use std::sync::OnceLock;

use candle_core::{bail, Result};

/// The instruction set a microkernel is written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Plain Rust with `f32::mul_add`: runs everywhere (slowly where FMA is emulated).
    Portable,
    /// 256-bit AVX2 + FMA.
    Avx2,
    /// 512-bit AVX-512F.
    Avx512,
}

/// Environment variable that forces a microkernel ("portable", "avx2", "avx512"), read once.
pub const ISA_ENV: &str = "IMAGO_GEMM_ISA";

impl Isa {
    /// The best microkernel this CPU runs, or the one [`ISA_ENV`] names; decided once.
    pub fn detected() -> Isa {
        static CHOICE: OnceLock<Isa> = OnceLock::new();
        *CHOICE.get_or_init(|| {
            let forced = std::env::var(ISA_ENV)
                .ok()
                .and_then(|name| Isa::parse(&name));
            match forced {
                Some(isa) if isa.is_available() => isa,
                _ => Isa::best_available(),
            }
        })
    }

    fn parse(name: &str) -> Option<Isa> {
        match name.trim().to_ascii_lowercase().as_str() {
            "portable" | "scalar" => Some(Isa::Portable),
            "avx2" => Some(Isa::Avx2),
            "avx512" => Some(Isa::Avx512),
            _ => None,
        }
    }

    fn best_available() -> Isa {
        [Isa::Avx512, Isa::Avx2]
            .into_iter()
            .find(|isa| isa.is_available())
            .unwrap_or(Isa::Portable)
    }

    /// Whether this CPU can run the microkernel.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 | Isa::Avx512 => false,
        }
    }

    /// The f32 microkernel for this instruction set; an error if the CPU lacks it.
    pub fn microkernel(self) -> Result<Microkernel> {
        if !self.is_available() {
            bail!("gemm: this CPU cannot run the {self:?} microkernel");
        }
        Ok(match self {
            Isa::Portable => portable::MICROKERNEL,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => avx2::MICROKERNEL,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => avx512::MICROKERNEL,
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 | Isa::Avx512 => unreachable!("is_available is false off x86_64"),
        })
    }
}

/// Signature of a microkernel body: C (mr x nr, row stride `ldc`) += S, where each element of S
/// is a chain of fused multiply-adds from zero over the `kc` steps in order, step k adding the
/// product of A's k-th `mr` values and B's k-th `nr` values (panels in packed layout).
///
/// # Safety
/// `a` must be readable for `kc * mr` elements, `b` for `kc * nr` (in a layout the kernel
/// expects), `c` readable and writable at `r * ldc + j` for r < mr, j < nr, with no other thread
/// touching those elements, and the CPU must support the kernel's instruction set.
pub type MicrokernelFn<T> = unsafe fn(kc: usize, a: *const T, b: *const T, c: *mut f32, ldc: usize);

/// The same microkernel with B read in place: row k of B (its `nr` values for the tile) starts
/// at `b + offsets[k]` instead of `b + k * nr`. Same sums, same order, same bits.
///
/// # Safety
/// As [`MicrokernelFn`], with `offsets` readable for `kc` entries and `b + offsets[k] + j`
/// readable for k < kc, j < nr.
pub type OffsetsMicrokernelFn<T> =
    unsafe fn(kc: usize, a: *const T, b: *const T, offsets: *const usize, c: *mut f32, ldc: usize);

/// A microkernel and the panel widths it reads: MR rows of A, NR columns of B.
#[derive(Clone, Copy, Debug)]
pub struct Microkernel<T = f32> {
    pub isa: Isa,
    pub mr: usize,
    pub nr: usize,
    pub(crate) run: MicrokernelFn<T>,
    pub(crate) run_at_offsets: OffsetsMicrokernelFn<T>,
}

/// Where a microkernel finds row k of B: one generic kernel body serves the packed panel and the
/// in-place reads, so both do exactly the same arithmetic.
pub(crate) trait BRows: Copy {
    /// The first of row k's values.
    ///
    /// # Safety
    /// k < kc of the call, whose contract makes the row's source valid.
    unsafe fn row(self, k: usize) -> *const f32;
}

/// B as a packed panel: row k at `b + k * width`.
#[derive(Clone, Copy)]
pub(crate) struct PackedRows<const WIDTH: usize>(pub *const f32);

impl<const WIDTH: usize> BRows for PackedRows<WIDTH> {
    #[inline(always)]
    unsafe fn row(self, k: usize) -> *const f32 {
        self.0.wrapping_add(k * WIDTH)
    }
}

/// B read in place: row k at `base + offsets[k]`.
#[derive(Clone, Copy)]
pub(crate) struct OffsetRows {
    pub base: *const f32,
    pub offsets: *const usize,
}

impl BRows for OffsetRows {
    #[inline(always)]
    unsafe fn row(self, k: usize) -> *const f32 {
        // SAFETY: the caller keeps k below kc, and the call's contract makes `offsets` readable
        // for kc entries.
        self.base.wrapping_add(unsafe { *self.offsets.add(k) })
    }
}
