//! The AVX-512F path: 16-lane fused multiply-adds, four query rows by 64 keys (16 accumulators)
//! for the scores and four rows by up to 64 columns for the V update.

use std::arch::x86_64::{
    __m512, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_mul_ps, _mm512_set1_ps, _mm512_setzero_ps,
    _mm512_storeu_ps,
};

use crate::element::Element;

use super::pack::{HeadKv, KEY_TILE};
use super::tile::{attend_tile, Microkernel, TileScratch, TileTask, ROWS};

const LANES: usize = 16;
const KEY_VECTORS: usize = KEY_TILE / LANES;
const _: () = assert!(ROWS == 4 && KEY_TILE.is_multiple_of(LANES));

/// Only named inside [`attend`], which runs with AVX-512F enabled.
struct Avx512;

impl Microkernel for Avx512 {
    fn scores(q: &[f32], head_dim: usize, k_tile: &[f32], scores: &mut [f32; ROWS * KEY_TILE]) {
        // SAFETY: `Avx512` is only used by `attend`, whose callers checked AVX-512F.
        unsafe { scores_avx512(q, head_dim, k_tile, scores) }
    }

    fn update(
        p: &[f32; ROWS * KEY_TILE],
        v: &[f32],
        padded_dim: usize,
        acc: &mut [f32],
        rescale: [f32; ROWS],
    ) {
        // SAFETY: as in `scores`.
        unsafe { update_avx512(p, v, padded_dim, acc, rescale) }
    }
}

/// One head of one query tile on the AVX-512F path.
///
/// # Safety
/// The CPU must support AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn attend<T: Element>(
    task: TileTask<'_, T>,
    kv: HeadKv<'_>,
    scratch: &mut TileScratch,
) {
    attend_tile::<Avx512, T>(task, kv, scratch)
}

#[target_feature(enable = "avx512f")]
#[inline]
fn load(s: &[f32]) -> __m512 {
    let s = &s[..LANES];
    // SAFETY: `s` holds LANES f32 values; loadu has no alignment requirement.
    unsafe { _mm512_loadu_ps(s.as_ptr()) }
}

#[target_feature(enable = "avx512f")]
#[inline]
fn store(s: &mut [f32], x: __m512) {
    let s = &mut s[..LANES];
    // SAFETY: `s` holds LANES writable f32 values; storeu has no alignment requirement.
    unsafe { _mm512_storeu_ps(s.as_mut_ptr(), x) }
}

#[target_feature(enable = "avx512f")]
fn scores_avx512(q: &[f32], head_dim: usize, k_tile: &[f32], scores: &mut [f32; ROWS * KEY_TILE]) {
    let (q0, rest) = q.split_at(head_dim);
    let (q1, rest) = rest.split_at(head_dim);
    let (q2, q3) = rest.split_at(head_dim);
    let mut acc = [[_mm512_setzero_ps(); KEY_VECTORS]; ROWS];
    let per_d = k_tile
        .chunks_exact(KEY_TILE)
        .zip(q0.iter().zip(q1).zip(q2.iter().zip(q3)));
    for (k_row, ((&x0, &x1), (&x2, &x3))) in per_d {
        let mut k = [_mm512_setzero_ps(); KEY_VECTORS];
        for (c, kc) in k.iter_mut().enumerate() {
            *kc = load(&k_row[c * LANES..]);
        }
        for (acc_row, x) in acc.iter_mut().zip([x0, x1, x2, x3]) {
            let x = _mm512_set1_ps(x);
            for (a, &kc) in acc_row.iter_mut().zip(&k) {
                *a = _mm512_fmadd_ps(x, kc, *a);
            }
        }
    }
    for (s_row, acc_row) in scores.chunks_exact_mut(KEY_TILE).zip(&acc) {
        for (c, &a) in acc_row.iter().enumerate() {
            store(&mut s_row[c * LANES..], a);
        }
    }
}

#[target_feature(enable = "avx512f")]
fn update_avx512(
    p: &[f32; ROWS * KEY_TILE],
    v: &[f32],
    padded_dim: usize,
    acc: &mut [f32],
    rescale: [f32; ROWS],
) {
    let mut column = 0;
    while column + 4 * LANES <= padded_dim {
        update_columns::<4>(p, v, padded_dim, acc, rescale, column);
        column += 4 * LANES;
    }
    match (padded_dim - column) / LANES {
        3 => update_columns::<3>(p, v, padded_dim, acc, rescale, column),
        2 => update_columns::<2>(p, v, padded_dim, acc, rescale, column),
        1 => update_columns::<1>(p, v, padded_dim, acc, rescale, column),
        _ => {}
    }
}

/// The update for C vectors of columns starting at `column`, accumulators held in registers
/// across the whole key tile.
#[target_feature(enable = "avx512f")]
#[inline]
fn update_columns<const C: usize>(
    p: &[f32; ROWS * KEY_TILE],
    v: &[f32],
    padded_dim: usize,
    acc: &mut [f32],
    rescale: [f32; ROWS],
    column: usize,
) {
    let mut a = [[_mm512_setzero_ps(); C]; ROWS];
    for (r, (a_row, factor)) in a.iter_mut().zip(rescale).enumerate() {
        let factor = _mm512_set1_ps(factor);
        let start = r * padded_dim + column;
        for (c, ac) in a_row.iter_mut().enumerate() {
            *ac = _mm512_mul_ps(load(&acc[start + c * LANES..]), factor);
        }
    }
    for (j, v_row) in v.chunks_exact(padded_dim).enumerate() {
        let mut vv = [_mm512_setzero_ps(); C];
        for (c, vc) in vv.iter_mut().enumerate() {
            *vc = load(&v_row[column + c * LANES..]);
        }
        for (r, a_row) in a.iter_mut().enumerate() {
            let weight = _mm512_set1_ps(p[r * KEY_TILE + j]);
            for (ac, &vc) in a_row.iter_mut().zip(&vv) {
                *ac = _mm512_fmadd_ps(weight, vc, *ac);
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
