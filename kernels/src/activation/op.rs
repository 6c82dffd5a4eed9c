//! The activation kernel as a candle custom op: f32 tiles through the branch-free math, rayon
//! over blocks of whole rows (whole tiles for the element-wise kinds).

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape};
use rayon::prelude::*;

use crate::element::Element;
use crate::Simd;

use super::math::{gelu_erf, gelu_tanh, quick_gelu};
use super::ActivationKind;

/// Values converted to f32 at a time.
const TILE: usize = 1024;
/// Output values per rayon task.
const TASK: usize = 64 * TILE;

/// One of [`ActivationKind`] as a candle custom op. CPU only, contiguous f32/f16/bf16 input; the
/// output has the input's dtype. Every SIMD path gives bit-identical results (the same IEEE
/// operations, no fused multiply-adds); `simd` only picks the instruction width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActivationOp {
    kind: ActivationKind,
    simd: Simd,
}

impl ActivationOp {
    /// Running a path the CPU lacks is an error.
    pub fn new(kind: ActivationKind, simd: Simd) -> Self {
        Self { kind, simd }
    }
}

impl CustomOp1 for ActivationOp {
    fn name(&self) -> &'static str {
        "imago-activation"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let out_dims = self.kind.output_dims(layout.dims())?;
        let Some((start, end)) = layout.contiguous_offsets() else {
            bail!(
                "activation kernel: input must be contiguous, got strides {:?}",
                layout.stride()
            );
        };
        if !self.simd.is_available() {
            bail!(
                "activation kernel: this CPU cannot run the {:?} path",
                self.simd
            );
        }
        let row = layout.dims().last().copied().unwrap_or(1);
        let (kind, simd) = (self.kind, self.simd);
        let out = match storage {
            CpuStorage::F32(x) => CpuStorage::F32(apply(&x[start..end], row, kind, simd)),
            CpuStorage::F16(x) => CpuStorage::F16(apply(&x[start..end], row, kind, simd)),
            CpuStorage::BF16(x) => CpuStorage::BF16(apply(&x[start..end], row, kind, simd)),
            other => bail!(
                "activation kernel: dtype {:?} is not supported (f32, f16, bf16)",
                candle_core::backend::BackendStorage::dtype(other)
            ),
        };
        Ok((out, Shape::from(out_dims)))
    }
}

fn apply<T: Element>(x: &[T], row: usize, kind: ActivationKind, simd: Simd) -> Vec<T> {
    if kind != ActivationKind::Geglu {
        let mut out = vec![T::ZERO; x.len()];
        out.par_chunks_mut(TASK)
            .zip(x.par_chunks(TASK))
            .for_each(|(out, x)| map_tiles(x, out, kind, simd));
        return out;
    }
    let half = row / 2;
    let mut out = vec![T::ZERO; x.len() / 2];
    if half == 0 {
        return out;
    }
    let rows_per_task = (TASK / half).max(1);
    out.par_chunks_mut(rows_per_task * half)
        .zip(x.par_chunks(rows_per_task * row))
        .for_each(|(out, x)| {
            for (out_row, x_row) in out.chunks_exact_mut(half).zip(x.chunks_exact(row)) {
                let (value, gate) = x_row.split_at(half);
                geglu_tiles(value, gate, out_row, simd);
            }
        });
    out
}

fn map_tiles<T: Element>(x: &[T], out: &mut [T], kind: ActivationKind, simd: Simd) {
    let mut in_buf = [0f32; TILE];
    let mut out_buf = [0f32; TILE];
    for (x, out) in x.chunks(TILE).zip(out.chunks_mut(TILE)) {
        let (xs, ys) = (&mut in_buf[..x.len()], &mut out_buf[..x.len()]);
        T::to_f32_slice(x, xs);
        run(simd, Loop::Map(kind, xs, ys));
        T::from_f32_slice(ys, out);
    }
}

fn geglu_tiles<T: Element>(value: &[T], gate: &[T], out: &mut [T], simd: Simd) {
    let mut value_buf = [0f32; TILE];
    let mut gate_buf = [0f32; TILE];
    let mut out_buf = [0f32; TILE];
    let tiles = value
        .chunks(TILE)
        .zip(gate.chunks(TILE))
        .zip(out.chunks_mut(TILE));
    for ((value, gate), out) in tiles {
        let n = value.len();
        let (vs, gs, ys) = (&mut value_buf[..n], &mut gate_buf[..n], &mut out_buf[..n]);
        T::to_f32_slice(value, vs);
        T::to_f32_slice(gate, gs);
        run(simd, Loop::Geglu(vs, gs, ys));
        T::from_f32_slice(ys, out);
    }
}

/// One tile's work.
enum Loop<'a> {
    Map(ActivationKind, &'a [f32], &'a mut [f32]),
    Geglu(&'a [f32], &'a [f32], &'a mut [f32]),
}

fn run(simd: Simd, work: Loop<'_>) {
    match simd {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `cpu_fwd` checked that this CPU has AVX-512F.
        Simd::Avx512 => unsafe { run_avx512(work) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `cpu_fwd` checked that this CPU has AVX2 and FMA.
        Simd::Avx2Fma => unsafe { run_avx2(work) },
        _ => run_loop(work),
    }
}

/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn run_avx512(work: Loop<'_>) {
    run_loop(work)
}

/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2(work: Loop<'_>) {
    run_loop(work)
}

/// The loops, inlined into each path so the compiler vectorises them at that path's width.
#[inline(always)]
fn run_loop(work: Loop<'_>) {
    match work {
        Loop::Map(ActivationKind::GeluErf | ActivationKind::Geglu, x, y) => {
            for (y, &x) in y.iter_mut().zip(x) {
                *y = gelu_erf(x);
            }
        }
        Loop::Map(ActivationKind::GeluTanh, x, y) => {
            for (y, &x) in y.iter_mut().zip(x) {
                *y = gelu_tanh(x);
            }
        }
        Loop::Map(ActivationKind::QuickGelu, x, y) => {
            for (y, &x) in y.iter_mut().zip(x) {
                *y = quick_gelu(x);
            }
        }
        Loop::Geglu(value, gate, y) => {
            for ((y, &v), &g) in y.iter_mut().zip(value).zip(gate) {
                *y = v * gelu_erf(g);
            }
        }
    }
}
