//! One tile of queries against all keys of one head: scores, online softmax, weighted sum of V,
//! with the SIMD-specific inner products behind [`Microkernel`].
//!
//! Each query row's result depends only on that row, the head's K and V, and the fixed tiling of
//! the keys: the row's position in its tile, the tile's size and the thread that runs it do not
//! change a bit (rows past the tile's end are zero rows through the same code).

use crate::element::Element;
use crate::math::exp_f32;

use super::pack::{HeadKv, KEY_TILE};

/// Query rows per microkernel call.
pub(crate) const ROWS: usize = 4;

/// The inner products for `ROWS` query rows against one key tile.
pub(crate) trait Microkernel {
    /// scores[r][j] = sum_d q[r][d] * k_tile[d][j]; `q` is ROWS rows of `head_dim`, `k_tile` is
    /// (head_dim, KEY_TILE), summed in order of d.
    fn scores(q: &[f32], head_dim: usize, k_tile: &[f32], scores: &mut [f32; ROWS * KEY_TILE]);

    /// acc[r] = acc[r] * rescale[r] + sum_j p[r][j] * v[j], summed in order of j; `v` is
    /// (KEY_TILE, padded_dim) and `acc` ROWS rows of `padded_dim`.
    fn update(
        p: &[f32; ROWS * KEY_TILE],
        v: &[f32],
        padded_dim: usize,
        acc: &mut [f32],
        rescale: [f32; ROWS],
    );
}

/// Per-task buffers, reused across heads.
pub(crate) struct TileScratch {
    q: Vec<f32>,
    acc: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
    scores: [f32; ROWS * KEY_TILE],
    row: Vec<f32>,
}

impl TileScratch {
    pub fn new(tile_rows: usize, head_dim: usize, padded_dim: usize) -> Self {
        let rows = tile_rows.next_multiple_of(ROWS);
        Self {
            q: vec![0.0; rows * head_dim],
            acc: vec![0.0; rows * padded_dim],
            max: vec![0.0; rows],
            sum: vec![0.0; rows],
            scores: [0.0; ROWS * KEY_TILE],
            row: vec![0.0; head_dim],
        }
    }
}

/// Where one head's tile reads and writes.
pub(crate) struct TileTask<'a, T> {
    /// The tile's query rows, `rows` tokens of `width` values (all heads).
    pub q: &'a [T],
    /// The tile's output rows, same layout as `q`.
    pub out: &'a mut [T],
    pub rows: usize,
    pub width: usize,
    pub head: usize,
    pub head_dim: usize,
    pub kv_len: usize,
    pub padded_dim: usize,
    pub scale: f32,
}

/// Attention of one head for one tile of query rows, written into the tile's output rows.
#[inline(always)]
pub(crate) fn attend_tile<K: Microkernel, T: Element>(
    task: TileTask<'_, T>,
    kv: HeadKv<'_>,
    s: &mut TileScratch,
) {
    let TileTask {
        q,
        out,
        rows,
        width,
        head,
        head_dim,
        kv_len,
        padded_dim,
        scale,
    } = task;
    let column = head * head_dim;
    let padded_rows = rows.next_multiple_of(ROWS);
    let q_tile = &mut s.q[..padded_rows * head_dim];
    for (i, dst) in q_tile.chunks_exact_mut(head_dim).enumerate() {
        if i < rows {
            let start = i * width + column;
            T::to_f32_slice(&q[start..start + head_dim], dst);
        } else {
            dst.fill(0.0);
        }
    }
    let acc = &mut s.acc[..padded_rows * padded_dim];
    acc.fill(0.0);
    s.max[..padded_rows].fill(f32::NEG_INFINITY);
    s.sum[..padded_rows].fill(0.0);

    let tile_k = head_dim * KEY_TILE;
    let tile_v = KEY_TILE * padded_dim;
    for (tile, (k_tile, v_tile)) in kv
        .k_tiles
        .chunks_exact(tile_k)
        .zip(kv.v_rows.chunks_exact(tile_v))
        .enumerate()
    {
        let valid = (kv_len - tile * KEY_TILE).min(KEY_TILE);
        for group in 0..padded_rows / ROWS {
            let first = group * ROWS;
            let q_rows = &q_tile[first * head_dim..(first + ROWS) * head_dim];
            K::scores(q_rows, head_dim, k_tile, &mut s.scores);
            let mut rescale = [0f32; ROWS];
            for (r, (scores, factor)) in s
                .scores
                .chunks_exact_mut(KEY_TILE)
                .zip(&mut rescale)
                .enumerate()
            {
                *factor = softmax_step(
                    scores,
                    valid,
                    scale,
                    &mut s.max[first + r],
                    &mut s.sum[first + r],
                );
            }
            let acc_rows = &mut acc[first * padded_dim..(first + ROWS) * padded_dim];
            K::update(&s.scores, v_tile, padded_dim, acc_rows, rescale);
        }
    }

    let row = &mut s.row[..head_dim];
    for i in 0..rows {
        let acc_row = &acc[i * padded_dim..i * padded_dim + head_dim];
        let total = s.sum[i];
        for (r, &a) in row.iter_mut().zip(acc_row) {
            *r = a / total;
        }
        let start = i * width + column;
        T::from_f32_slice(row, &mut out[start..start + head_dim]);
    }
}

/// The online softmax for one row and one key tile: turns the row's raw scores into
/// exp(scale * (score - new max)) (zero past `valid`), adds them to the running sum and returns
/// the factor exp(scale * (old max - new max)) the row's accumulator must be rescaled by.
#[inline(always)]
fn softmax_step(
    scores: &mut [f32],
    valid: usize,
    scale: f32,
    running_max: &mut f32,
    running_sum: &mut f32,
) -> f32 {
    const LANES: usize = 16;
    let mut lane_max = [f32::NEG_INFINITY; LANES];
    for chunk in scores[..valid].chunks(LANES) {
        for (m, &x) in lane_max.iter_mut().zip(chunk) {
            *m = if x > *m { x } else { *m };
        }
    }
    let tile_max = lane_max
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    let new_max = if tile_max > *running_max {
        tile_max
    } else {
        *running_max
    };
    let rescale = if *running_max == f32::NEG_INFINITY {
        0.0
    } else {
        exp_f32((*running_max - new_max) * scale)
    };
    for x in scores.iter_mut() {
        *x = exp_f32((*x - new_max) * scale);
    }
    scores[valid..].fill(0.0);
    let mut lane_sum = [0f32; LANES];
    for chunk in scores.chunks(LANES) {
        for (s, &x) in lane_sum.iter_mut().zip(chunk) {
            *s += x;
        }
    }
    let tile_sum = lane_sum.iter().fold(0.0, |s, &x| s + x);
    *running_sum = *running_sum * rescale + tile_sum;
    *running_max = new_max;
    rescale
}
