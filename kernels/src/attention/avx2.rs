//! The AVX2 + FMA path: 8-lane fused multiply-adds, four query rows by 16 keys (8 accumulators)
//! per pass for the scores and four rows by 16 columns per pass for the V update.

use std::arch::x86_64::{
    __m256, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_mul_ps, _mm256_set1_ps, _mm256_setzero_ps,
    _mm256_storeu_ps,
};

use crate::element::Element;

use super::pack::{HeadKv, COLUMN_PAD, KEY_TILE};
use super::tile::{attend_tile, Microkernel, TileScratch, TileTask, ROWS};

const LANES: usize = 8;
/// Vectors per pass: 16 keys (scores) or 16 columns (update).
const VECTORS: usize = 2;
const PASS: usize = VECTORS * LANES;
const _: () =
    assert!(ROWS == 4 && KEY_TILE.is_multiple_of(PASS) && COLUMN_PAD.is_multiple_of(PASS));

/// Only named inside [`attend`], which runs with AVX2 and FMA enabled.
struct Avx2Fma;

impl Microkernel for Avx2Fma {
    fn scores(q: &[f32], head_dim: usize, k_tile: &[f32], scores: &mut [f32; ROWS * KEY_TILE]) {
        // SAFETY: `Avx2Fma` is only used by `attend`, whose callers checked AVX2 and FMA.
        unsafe { scores_avx2(q, head_dim, k_tile, scores) }
    }

    fn update(
        p: &[f32; ROWS * KEY_TILE],
        v: &[f32],
        padded_dim: usize,
        acc: &mut [f32],
        rescale: [f32; ROWS],
    ) {
        // SAFETY: as in `scores`.
        unsafe { update_avx2(p, v, padded_dim, acc, rescale) }
    }
}

/// One head of one query tile on the AVX2 + FMA path.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn attend<T: Element>(
    task: TileTask<'_, T>,
    kv: HeadKv<'_>,
    scratch: &mut TileScratch,
) {
    attend_tile::<Avx2Fma, T>(task, kv, scratch)
}

#[target_feature(enable = "avx2,fma")]
#[inline]
fn load(s: &[f32]) -> __m256 {
    let s = &s[..LANES];
    // SAFETY: `s` holds LANES f32 values; loadu has no alignment requirement.
    unsafe { _mm256_loadu_ps(s.as_ptr()) }
}

#[target_feature(enable = "avx2,fma")]
#[inline]
fn store(s: &mut [f32], x: __m256) {
    let s = &mut s[..LANES];
    // SAFETY: `s` holds LANES writable f32 values; storeu has no alignment requirement.
    unsafe { _mm256_storeu_ps(s.as_mut_ptr(), x) }
}

#[target_feature(enable = "avx2,fma")]
fn scores_avx2(q: &[f32], head_dim: usize, k_tile: &[f32], scores: &mut [f32; ROWS * KEY_TILE]) {
    let (q0, rest) = q.split_at(head_dim);
    let (q1, rest) = rest.split_at(head_dim);
    let (q2, q3) = rest.split_at(head_dim);
    for pass in (0..KEY_TILE).step_by(PASS) {
        let mut acc = [[_mm256_setzero_ps(); VECTORS]; ROWS];
        let per_d = k_tile
            .chunks_exact(KEY_TILE)
            .zip(q0.iter().zip(q1).zip(q2.iter().zip(q3)));
        for (k_row, ((&x0, &x1), (&x2, &x3))) in per_d {
            let k = [load(&k_row[pass..]), load(&k_row[pass + LANES..])];
            for (acc_row, x) in acc.iter_mut().zip([x0, x1, x2, x3]) {
                let x = _mm256_set1_ps(x);
                for (a, &kc) in acc_row.iter_mut().zip(&k) {
                    *a = _mm256_fmadd_ps(x, kc, *a);
                }
            }
        }
        for (s_row, acc_row) in scores.chunks_exact_mut(KEY_TILE).zip(&acc) {
            for (c, &a) in acc_row.iter().enumerate() {
                store(&mut s_row[pass + c * LANES..], a);
            }
        }
    }
}

#[target_feature(enable = "avx2,fma")]
fn update_avx2(
    p: &[f32; ROWS * KEY_TILE],
    v: &[f32],
    padded_dim: usize,
    acc: &mut [f32],
    rescale: [f32; ROWS],
) {
    for column in (0..padded_dim).step_by(PASS) {
        let mut a = [[_mm256_setzero_ps(); VECTORS]; ROWS];
        for (r, (a_row, factor)) in a.iter_mut().zip(rescale).enumerate() {
            let factor = _mm256_set1_ps(factor);
            let start = r * padded_dim + column;
            for (c, ac) in a_row.iter_mut().enumerate() {
                *ac = _mm256_mul_ps(load(&acc[start + c * LANES..]), factor);
            }
        }
        for (j, v_row) in v.chunks_exact(padded_dim).enumerate() {
            let vv = [load(&v_row[column..]), load(&v_row[column + LANES..])];
            for (r, a_row) in a.iter_mut().enumerate() {
                let weight = _mm256_set1_ps(p[r * KEY_TILE + j]);
                for (ac, &vc) in a_row.iter_mut().zip(&vv) {
                    *ac = _mm256_fmadd_ps(weight, vc, *ac);
                }
            }
        }
        for (r, a_row) in a.iter().enumerate() {
            let start = r * padded_dim + column;
            for (c, &ac) in a_row.iter().enumerate() {
                store(&mut acc[start + c * LANES..], ac);
            }
        }
    }
}
