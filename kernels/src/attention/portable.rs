//! The portable path: plain loops in the same summation order as the SIMD paths, correct on any
//! target (the compiler vectorises across the independent columns by itself).

use crate::element::Element;

use super::pack::{HeadKv, KEY_TILE};
use super::tile::{attend_tile, Microkernel, TileScratch, TileTask, ROWS};

struct Portable;

impl Microkernel for Portable {
    fn scores(q: &[f32], head_dim: usize, k_tile: &[f32], scores: &mut [f32; ROWS * KEY_TILE]) {
        for (q_row, s_row) in q
            .chunks_exact(head_dim)
            .zip(scores.chunks_exact_mut(KEY_TILE))
        {
            s_row.fill(0.0);
            for (&x, k_row) in q_row.iter().zip(k_tile.chunks_exact(KEY_TILE)) {
                for (s, &k) in s_row.iter_mut().zip(k_row) {
                    *s += x * k;
                }
            }
        }
    }

    fn update(
        p: &[f32; ROWS * KEY_TILE],
        v: &[f32],
        padded_dim: usize,
        acc: &mut [f32],
        rescale: [f32; ROWS],
    ) {
        let rows = acc
            .chunks_exact_mut(padded_dim)
            .zip(p.chunks_exact(KEY_TILE))
            .zip(rescale);
        for ((acc_row, p_row), factor) in rows {
            for a in acc_row.iter_mut() {
                *a *= factor;
            }
            for (&weight, v_row) in p_row.iter().zip(v.chunks_exact(padded_dim)) {
                for (a, &x) in acc_row.iter_mut().zip(v_row) {
                    *a += weight * x;
                }
            }
        }
    }
}

pub(super) fn attend<T: Element>(task: TileTask<'_, T>, kv: HeadKv<'_>, scratch: &mut TileScratch) {
    attend_tile::<Portable, T>(task, kv, scratch)
}
