//! The blocked loops around the microkernel, and the rayon split over output blocks.
//!
//! Each task owns a rectangle of C: a block of columns (at most `NC`, so its packed B block of
//! depth KC stays in L2) and a range of rows. For each K-block in order it packs (or borrows)
//! its B block once, then for every MR-row panel of A it packs (or borrows) that panel and runs
//! the microkernel over the block's NR-column panels. C is initialised (bias, kept old values)
//! before the first K-block and accumulated in place after.

use candle_core::{bail, Result};
use rayon::prelude::*;

use super::microkernel::Microkernel;
use super::pack::AlignedBuf;
use super::source::{padded, PanelSource};
use super::KC;

/// Columns of C per task (rounded up to the microkernel's NR): 256 x KC f32 of packed B is 256 KiB.
const NC: usize = 256;
/// Tasks per rayon thread to aim for when the columns alone do not give enough.
const TASKS_PER_THREAD: usize = 4;

/// A bias added to every element of C, indexed by row or by column.
#[derive(Clone, Copy, Debug)]
pub enum Bias<'a> {
    None,
    /// One value per row of C (per output channel of a convolution).
    PerRow(&'a [f32]),
    /// One value per column of C (per output feature of a linear layer).
    PerColumn(&'a [f32]),
}

/// The M x N output, row-major with row stride `ld`.
#[derive(Debug)]
pub struct GemmOutput<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
    ld: usize,
}

impl<'a> GemmOutput<'a> {
    pub fn new(data: &'a mut [f32], rows: usize, cols: usize, ld: usize) -> Result<Self> {
        if cols > ld && rows > 1 {
            bail!("gemm: output row length {cols} exceeds its stride {ld}");
        }
        let needed = if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * ld + cols
        };
        if data.len() < needed {
            bail!(
                "gemm: output {rows} x {cols} at stride {ld} needs {needed} values, got {}",
                data.len()
            );
        }
        Ok(Self {
            data,
            rows,
            cols,
            ld,
        })
    }
}

/// C's storage shared by tasks that write disjoint rectangles of it.
#[derive(Clone, Copy)]
struct SharedOutput {
    ptr: *mut f32,
    ld: usize,
}

// SAFETY: tasks only touch their own rectangle of C (disjoint by construction in `run`), and
// the borrow of C outlives the parallel loop.
unsafe impl Send for SharedOutput {}
// SAFETY: as above.
unsafe impl Sync for SharedOutput {}

impl SharedOutput {
    /// Columns [n0, n1) of row r.
    ///
    /// # Safety
    /// The range must be inside C and belong to the calling task only.
    // Handing out &mut from a shared pointer is the point: disjointness is the caller's contract.
    #[allow(clippy::mut_from_ref)]
    unsafe fn row_mut(&self, r: usize, n0: usize, n1: usize) -> &mut [f32] {
        // SAFETY: per the function contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(r * self.ld + n0), n1 - n0) }
    }
}

/// One task's rectangle of C.
#[derive(Clone, Copy, Debug)]
struct Rect {
    m0: usize,
    m1: usize,
    n0: usize,
    n1: usize,
}

pub(crate) fn run<T: Copy + Default + Send + Sync>(
    kernel: &Microkernel<T>,
    a: &dyn PanelSource<T>,
    b: &dyn PanelSource<T>,
    c: GemmOutput<'_>,
    bias: Bias<'_>,
    accumulate: bool,
) -> Result<()> {
    let (m, n) = (c.rows, c.cols);
    if a.len() != m || b.len() != n {
        bail!(
            "gemm: A gives {} rows and B {} columns, output is {m} x {n}",
            a.len(),
            b.len()
        );
    }
    match bias {
        Bias::PerRow(v) if v.len() != m => bail!("gemm: {} row biases for {m} rows", v.len()),
        Bias::PerColumn(v) if v.len() != n => {
            bail!("gemm: {} column biases for {n} columns", v.len())
        }
        _ => {}
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    let out = SharedOutput {
        ptr: c.data.as_mut_ptr(),
        ld: c.ld,
    };
    let rects = split(m, n, kernel.mr, kernel.nr);
    let task = |rect: &Rect| {
        // SAFETY: `split` returns disjoint rectangles inside C, one per task.
        unsafe { run_rect(kernel, a, b, out, *rect, bias, accumulate) }
    };
    if rects.len() == 1 {
        task(&rects[0]);
    } else {
        rects.par_iter().for_each(task);
    }
    Ok(())
}

/// Cuts C into task rectangles: column blocks of NC, and row ranges (whole MR panels) when
/// there are too few column blocks to keep every thread busy.
fn split(m: usize, n: usize, mr: usize, nr: usize) -> Vec<Rect> {
    let nc = padded(NC, nr);
    let col_blocks = n.div_ceil(nc);
    let wanted = TASKS_PER_THREAD * rayon::current_num_threads();
    let row_ranges = if col_blocks * 2 >= wanted {
        1
    } else {
        wanted.div_ceil(col_blocks)
    };
    let rows_per_range = padded(m.div_ceil(row_ranges.min(m.div_ceil(mr))), mr);
    let mut rects = Vec::new();
    for m0 in (0..m).step_by(rows_per_range) {
        for n0 in (0..n).step_by(nc) {
            rects.push(Rect {
                m0,
                m1: (m0 + rows_per_range).min(m),
                n0,
                n1: (n0 + nc).min(n),
            });
        }
    }
    rects
}

/// Computes one rectangle of C.
///
/// # Safety
/// `rect` must lie inside C and no other thread may touch it meanwhile.
unsafe fn run_rect<T: Copy + Default>(
    kernel: &Microkernel<T>,
    a: &dyn PanelSource<T>,
    b: &dyn PanelSource<T>,
    out: SharedOutput,
    rect: Rect,
    bias: Bias<'_>,
    accumulate: bool,
) {
    let (mr, nr) = (kernel.mr, kernel.nr);
    for r in rect.m0..rect.m1 {
        // SAFETY: row r, columns n0..n1 are this task's.
        let row = unsafe { out.row_mut(r, rect.n0, rect.n1) };
        init_row(row, r, rect.n0, bias, accumulate);
    }
    let cols = rect.n1 - rect.n0;
    let mut b_buf = AlignedBuf::<T>::default();
    let mut a_buf = AlignedBuf::<T>::default();
    let mut edge = vec![0f32; mr * nr];
    let depth = a.depth();
    for k0 in (0..depth).step_by(KC) {
        let kc = KC.min(depth - k0);
        let b_block = match b.packed(k0, kc, rect.n0, cols, nr) {
            Some(block) => block,
            None => {
                b_buf.resize(padded(cols, nr) * kc);
                b.pack(k0, kc, rect.n0, cols, nr, b_buf.as_mut_slice());
                b_buf.as_slice()
            }
        };
        for mp in (rect.m0..rect.m1).step_by(mr) {
            let rows = mr.min(rect.m1 - mp);
            let a_panel = match a.packed(k0, kc, mp, rows, mr) {
                Some(panel) => panel,
                None => {
                    a_buf.resize(mr * kc);
                    a.pack(k0, kc, mp, rows, mr, a_buf.as_mut_slice());
                    a_buf.as_slice()
                }
            };
            for (p, b_panel) in b_block.chunks_exact(nr * kc).enumerate() {
                let np = rect.n0 + p * nr;
                let tile_cols = nr.min(rect.n1 - np);
                let c_tile = out.ptr.wrapping_add(mp * out.ld + np);
                if rows == mr && tile_cols == nr {
                    // SAFETY: panels hold kc * mr and kc * nr values; the full tile is inside
                    // this task's rectangle; the kernel's ISA was checked when it was handed out.
                    unsafe { (kernel.run)(kc, a_panel.as_ptr(), b_panel.as_ptr(), c_tile, out.ld) };
                } else {
                    // A tail: the same kernel on a zero-padded copy, so tails round like full tiles.
                    for r in 0..rows {
                        // SAFETY: rows and columns within this task's rectangle.
                        let src = unsafe { out.row_mut(mp + r, np, np + tile_cols) };
                        edge[r * nr..r * nr + tile_cols].copy_from_slice(src);
                    }
                    // SAFETY: `edge` is a full mr x nr tile at stride nr.
                    unsafe {
                        (kernel.run)(
                            kc,
                            a_panel.as_ptr(),
                            b_panel.as_ptr(),
                            edge.as_mut_ptr(),
                            nr,
                        )
                    };
                    for r in 0..rows {
                        // SAFETY: as above.
                        let dst = unsafe { out.row_mut(mp + r, np, np + tile_cols) };
                        dst.copy_from_slice(&edge[r * nr..r * nr + tile_cols]);
                    }
                }
            }
        }
    }
}

/// The value each element of C starts its chain of multiply-adds from: bias (+ old C).
fn init_row(row: &mut [f32], r: usize, n0: usize, bias: Bias<'_>, accumulate: bool) {
    match (bias, accumulate) {
        (Bias::None, true) => {}
        (Bias::None, false) => row.fill(0.0),
        (Bias::PerRow(v), true) => row.iter_mut().for_each(|c| *c += v[r]),
        (Bias::PerRow(v), false) => row.fill(v[r]),
        (Bias::PerColumn(v), true) => row.iter_mut().zip(&v[n0..]).for_each(|(c, b)| *c += b),
        (Bias::PerColumn(v), false) => row.copy_from_slice(&v[n0..n0 + row.len()]),
    }
}
