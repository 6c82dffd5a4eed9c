//! The attention kernel as a candle custom op: K and V packed once, then rayon over (sample,
//! tile of query rows), each task running every head of its rows so it writes one contiguous
//! block of the output.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape};
use rayon::prelude::*;

use crate::element::Element;
use crate::Simd;

use super::pack::{HeadKv, PackedKv};
use super::tile::{TileScratch, TileTask};
use super::{attention_dims, portable, AttentionDims};

/// Query rows per task: small enough to fill both cores on a 64-token level, large enough that
/// a task's packed K/V reads are shared by many rows.
const QUERY_TILE: usize = 64;

/// softmax(q k^T / sqrt(head_dim)) v as a candle custom op over (q, k, v).
///
/// CPU only; q, k, v contiguous, all f32, all f16 or all bf16, shaped as
/// [`super::scaled_dot_product_attention`] describes; the output has q's shape and dtype. No
/// backward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionOp {
    heads: usize,
    head_dim: usize,
    simd: Simd,
}

impl AttentionOp {
    /// `simd` picks the code path ([`Simd::detected`] for the best one); running a path the CPU
    /// lacks is an error.
    pub fn new(heads: usize, head_dim: usize, simd: Simd) -> Self {
        Self {
            heads,
            head_dim,
            simd,
        }
    }
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "imago-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        q_layout: &Layout,
        k: &CpuStorage,
        k_layout: &Layout,
        v: &CpuStorage,
        v_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = attention_dims(
            q_layout.dims(),
            k_layout.dims(),
            v_layout.dims(),
            self.heads,
            self.head_dim,
        )?;
        if dims.kv_len == 0 {
            bail!("attention kernel: softmax over zero keys is undefined");
        }
        if !self.simd.is_available() {
            bail!(
                "attention kernel: this CPU cannot run the {:?} path",
                self.simd
            );
        }
        let simd = self.simd;
        let out = match (q, k, v) {
            (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) => CpuStorage::F32(
                attend(operands(q, q_layout, k, k_layout, v, v_layout)?, dims, simd),
            ),
            (CpuStorage::F16(q), CpuStorage::F16(k), CpuStorage::F16(v)) => CpuStorage::F16(
                attend(operands(q, q_layout, k, k_layout, v, v_layout)?, dims, simd),
            ),
            (CpuStorage::BF16(q), CpuStorage::BF16(k), CpuStorage::BF16(v)) => CpuStorage::BF16(
                attend(operands(q, q_layout, k, k_layout, v, v_layout)?, dims, simd),
            ),
            _ => bail!(
                "attention kernel: q, k, v must all be f32, all f16 or all bf16, got {:?}, {:?}, {:?}",
                q.dtype(),
                k.dtype(),
                v.dtype()
            ),
        };
        Ok((out, q_layout.shape().clone()))
    }
}

type Operands<'a, T> = (&'a [T], &'a [T], &'a [T]);

fn operands<'a, T>(
    q: &'a [T],
    q_layout: &Layout,
    k: &'a [T],
    k_layout: &Layout,
    v: &'a [T],
    v_layout: &Layout,
) -> Result<Operands<'a, T>> {
    let slice = |data: &'a [T], layout: &Layout, name: &str| -> Result<&'a [T]> {
        match layout.contiguous_offsets() {
            Some((start, end)) => Ok(&data[start..end]),
            None => bail!(
                "attention kernel: {name} must be contiguous, got strides {:?}",
                layout.stride()
            ),
        }
    };
    Ok((
        slice(q, q_layout, "q")?,
        slice(k, k_layout, "k")?,
        slice(v, v_layout, "v")?,
    ))
}

fn attend<T: Element>((q, k, v): Operands<'_, T>, dims: AttentionDims, simd: Simd) -> Vec<T> {
    let width = dims.width();
    let mut out = vec![T::ZERO; dims.batch * dims.q_len * width];
    if out.is_empty() {
        return out;
    }
    let kv = PackedKv::new(k, v, dims);
    let scale = (1.0 / (dims.head_dim as f64).sqrt()) as f32;
    let sample_len = dims.q_len * width;
    let tile_len = QUERY_TILE * width;
    out.par_chunks_mut(sample_len)
        .zip(q.par_chunks(sample_len))
        .enumerate()
        .for_each(|(sample, (out_sample, q_sample))| {
            out_sample
                .par_chunks_mut(tile_len)
                .zip(q_sample.par_chunks(tile_len))
                .for_each(|(out_tile, q_tile)| {
                    let rows = q_tile.len() / width;
                    let mut scratch = TileScratch::new(rows, dims.head_dim, kv.padded_dim);
                    for head in 0..dims.heads {
                        let task = TileTask {
                            q: q_tile,
                            out: &mut *out_tile,
                            rows,
                            width,
                            head,
                            head_dim: dims.head_dim,
                            kv_len: dims.kv_len,
                            padded_dim: kv.padded_dim,
                            scale,
                        };
                        run(simd, task, kv.head(sample, head, dims.heads), &mut scratch);
                    }
                });
        });
    out
}

/// One head of one tile on the chosen path (checked available by the caller).
fn run<T: Element>(simd: Simd, task: TileTask<'_, T>, kv: HeadKv<'_>, scratch: &mut TileScratch) {
    match simd {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `cpu_fwd` checked that this CPU has AVX-512F.
        Simd::Avx512 => unsafe { super::avx512::attend(task, kv, scratch) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `cpu_fwd` checked that this CPU has AVX2 and FMA.
        Simd::Avx2Fma => unsafe { super::avx2::attend(task, kv, scratch) },
        _ => portable::attend(task, kv, scratch),
    }
}
