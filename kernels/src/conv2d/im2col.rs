//! The im2col matrix of one sample as a GEMM panel source: col[k, p] for k = (ci, ky, kx) and
//! p = (oy, ox) is input[ci, oy·s + ky·d - pad, ox·s + kx·d - pad], zero outside the input.
//! Only the block the driver asks for is ever written.

use crate::gemm::PanelSource;

use super::ConvDims;

pub(crate) struct Im2col<'a> {
    /// One sample, (Cin, H, W) contiguous.
    input: &'a [f32],
    dims: ConvDims,
}

impl<'a> Im2col<'a> {
    pub fn new(input: &'a [f32], dims: ConvDims) -> Self {
        debug_assert_eq!(input.len(), dims.in_channels * dims.height * dims.width);
        Self { input, dims }
    }

    /// Writes positions [first, first + out.len()) of im2col row k to `out`.
    fn row(&self, k: usize, first: usize, out: &mut [f32]) {
        let d = &self.dims;
        let g = d.geometry;
        let taps = d.kernel_h * d.kernel_w;
        let (ci, ky, kx) = (k / taps, (k % taps) / d.kernel_w, k % d.kernel_w);
        let plane = &self.input[ci * d.height * d.width..(ci + 1) * d.height * d.width];
        // Input coordinate = output coordinate · stride + offset (offsets may be negative).
        let y_offset = (ky * g.dilation) as isize - g.padding as isize;
        let x_offset = (kx * g.dilation) as isize - g.padding as isize;
        let mut done = 0;
        while done < out.len() {
            let position = first + done;
            let (oy, ox) = (position / d.out_w, position % d.out_w);
            let run = (d.out_w - ox).min(out.len() - done);
            let dst = &mut out[done..done + run];
            let iy = (oy * g.stride) as isize + y_offset;
            if iy < 0 || iy >= d.height as isize {
                dst.fill(0.0);
            } else {
                let src = &plane[iy as usize * d.width..(iy as usize + 1) * d.width];
                copy_row_segment(src, ox, x_offset, g.stride, dst);
            }
            done += run;
        }
    }
}

/// dst[t] = src[(ox + t) · stride + offset], zero where that index falls outside src.
fn copy_row_segment(src: &[f32], ox: usize, offset: isize, stride: usize, dst: &mut [f32]) {
    let s = stride as isize;
    let first_index = ox as isize * s + offset;
    // Count of leading t with a negative index, and of t whose index stays below src.len().
    let lead = if first_index >= 0 {
        0
    } else {
        ((-first_index + s - 1) / s) as usize
    };
    let last_valid = src.len() as isize - 1 - first_index;
    let valid_end = if last_valid < 0 {
        0
    } else {
        (last_valid / s + 1) as usize
    };
    let lead = lead.min(dst.len());
    let valid_end = valid_end.clamp(lead, dst.len());
    dst[..lead].fill(0.0);
    let start = (first_index + lead as isize * s) as usize;
    let body = &mut dst[lead..valid_end];
    if stride == 1 {
        body.copy_from_slice(&src[start..start + body.len()]);
    } else {
        for (t, v) in body.iter_mut().enumerate() {
            *v = src[start + t * stride];
        }
    }
    dst[valid_end..].fill(0.0);
}

impl PanelSource for Im2col<'_> {
    fn depth(&self) -> usize {
        self.dims.depth()
    }

    fn len(&self) -> usize {
        self.dims.positions()
    }

    fn pack(
        &self,
        k0: usize,
        kc: usize,
        first_lane: usize,
        lanes: usize,
        width: usize,
        dst: &mut [f32],
    ) {
        let panels = lanes.div_ceil(width);
        for (p, panel) in dst[..panels * width * kc]
            .chunks_exact_mut(width * kc)
            .enumerate()
        {
            let lane0 = first_lane + p * width;
            let valid = width.min(lanes - p * width);
            for (k, row) in panel.chunks_exact_mut(width).enumerate() {
                self.row(k0 + k, lane0, &mut row[..valid]);
                row[valid..].fill(0.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, one index at a time.
    fn naive(src: &[f32], ox: usize, offset: isize, stride: usize, n: usize) -> Vec<f32> {
        (0..n)
            .map(|t| {
                let i = ((ox + t) * stride) as isize + offset;
                if i >= 0 && (i as usize) < src.len() {
                    src[i as usize]
                } else {
                    0.0
                }
            })
            .collect()
    }

    #[test]
    fn row_segments_match_the_definition() {
        let src: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        for stride in 1..=3 {
            for offset in -4..=4 {
                for ox in 0..6 {
                    for n in 0..8 {
                        let mut dst = vec![f32::NAN; n];
                        copy_row_segment(&src, ox, offset, stride, &mut dst);
                        assert_eq!(
                            dst,
                            naive(&src, ox, offset, stride, n),
                            "s{stride} off{offset} ox{ox} n{n}"
                        );
                    }
                }
            }
        }
    }
}
