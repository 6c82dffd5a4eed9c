//! K and V of every (sample, head) converted to f32 and laid out for the microkernels, once per
//! call (each query tile then reads them many times).
//!
//! K is stored transposed per tile of `KEY_TILE` keys, (head_dim, KEY_TILE), so the score
//! microkernel loads a row of keys as vectors; V is stored (keys, padded head_dim), rows padded
//! with zeros to a multiple of `COLUMN_PAD` so the update microkernel has no column tail. Keys
//! past kv_len are zero in both.

use rayon::prelude::*;

use crate::element::Element;

use super::AttentionDims;

/// Keys per tile: the online softmax rescales once per tile.
pub(crate) const KEY_TILE: usize = 64;
/// V rows (and the output accumulator) are padded to a multiple of this many columns.
pub(crate) const COLUMN_PAD: usize = 16;

/// Packed K and V for all samples and heads.
pub(crate) struct PackedKv {
    /// [batch][head][key tile][head_dim][KEY_TILE]
    k_tiles: Vec<f32>,
    /// [batch][head][tiles * KEY_TILE][padded_dim]
    v_rows: Vec<f32>,
    pub tiles: usize,
    pub padded_dim: usize,
    head_dim: usize,
}

/// One head of one sample.
pub(crate) struct HeadKv<'a> {
    /// [key tile][head_dim][KEY_TILE]
    pub k_tiles: &'a [f32],
    /// [tiles * KEY_TILE][padded_dim]
    pub v_rows: &'a [f32],
}

impl PackedKv {
    pub fn new<T: Element>(k: &[T], v: &[T], dims: AttentionDims) -> Self {
        let head_dim = dims.head_dim;
        let tiles = dims.kv_len.div_ceil(KEY_TILE);
        let padded_dim = head_dim.next_multiple_of(COLUMN_PAD);
        let k_block = tiles * head_dim * KEY_TILE;
        let v_block = tiles * KEY_TILE * padded_dim;
        let blocks = dims.batch * dims.heads;
        let mut k_tiles = vec![0f32; blocks * k_block];
        let mut v_rows = vec![0f32; blocks * v_block];
        let width = dims.width();
        let sample_len = dims.kv_len * width;
        k_tiles
            .par_chunks_mut(k_block.max(1))
            .zip(v_rows.par_chunks_mut(v_block.max(1)))
            .enumerate()
            .for_each(|(block, (kt, vr))| {
                let (sample, head) = (block / dims.heads, block % dims.heads);
                let offset = sample * sample_len + head * head_dim;
                let mut row = vec![0f32; head_dim];
                for key in 0..dims.kv_len {
                    let start = offset + key * width;
                    T::to_f32_slice(&k[start..start + head_dim], &mut row);
                    let tile = &mut kt[(key / KEY_TILE) * head_dim * KEY_TILE..];
                    let lane = key % KEY_TILE;
                    for (d, &x) in row.iter().enumerate() {
                        tile[d * KEY_TILE + lane] = x;
                    }
                    let v_row = &mut vr[key * padded_dim..key * padded_dim + head_dim];
                    T::to_f32_slice(&v[start..start + head_dim], v_row);
                }
            });
        Self {
            k_tiles,
            v_rows,
            tiles,
            padded_dim,
            head_dim,
        }
    }

    pub fn head(&self, sample: usize, head: usize, heads: usize) -> HeadKv<'_> {
        let block = sample * heads + head;
        let k_block = self.tiles * self.head_dim * KEY_TILE;
        let v_block = self.tiles * KEY_TILE * self.padded_dim;
        HeadKv {
            k_tiles: &self.k_tiles[block * k_block..(block + 1) * k_block],
            v_rows: &self.v_rows[block * v_block..(block + 1) * v_block],
        }
    }
}
