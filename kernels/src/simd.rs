//! The SIMD instruction sets the hand-written kernels have paths for, picked at run time.

use std::sync::OnceLock;

/// One code path of a kernel. Every path gives results within the kernel's tolerance of its
/// reference; results are bit-identical only between runs on the same path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Simd {
    /// 16-lane f32 with fused multiply-add (x86_64 AVX-512F).
    Avx512,
    /// 8-lane f32 with fused multiply-add (x86_64 AVX2 + FMA).
    Avx2Fma,
    /// Plain Rust, correct on every target (what the compiler vectorises by itself).
    Portable,
}

impl Simd {
    /// The widest path this CPU runs, detected once per process.
    pub fn detected() -> Simd {
        static DETECTED: OnceLock<Simd> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            [Simd::Avx512, Simd::Avx2Fma]
                .into_iter()
                .find(|simd| simd.is_available())
                .unwrap_or(Simd::Portable)
        })
    }

    /// Whether this CPU has the instructions the path needs.
    pub fn is_available(self) -> bool {
        match self {
            Simd::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2Fma => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Simd::Avx512 | Simd::Avx2Fma => false,
        }
    }

    /// Every path this CPU runs, widest first (for tests that compare them all).
    pub fn all_available() -> Vec<Simd> {
        [Simd::Avx512, Simd::Avx2Fma, Simd::Portable]
            .into_iter()
            .filter(|simd| simd.is_available())
            .collect()
    }
}
