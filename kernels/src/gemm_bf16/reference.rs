//! Plain reference implementations, the kernels' test oracles: the inputs rounded to bf16
//! exactly as the kernels round them, products and sums in f64, the bias added, rounded once
//! to f32. A kernel differs from these only by its f32 accumulation (see the tests' tolerances).

use super::{bf16_bits_to_f32, conv::conv2d_output_size, Conv2dGeometry, ToBf16};

fn widen<T: ToBf16>(v: T) -> f64 {
    bf16_bits_to_f32(v.bf16_bits()) as f64
}

/// out[M x N] = A (M x K, row stride lda) x B (K x N, row stride ldb) + bias[n] (per column).
pub fn matmul_bf16_reference<T: ToBf16, U: ToBf16>(
    a: &[T],
    (m, k, lda): (usize, usize, usize),
    b: &[U],
    (n, ldb): (usize, usize),
    column_bias: Option<&[f32]>,
) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut sum = column_bias.map_or(0.0, |bias| bias[j] as f64);
            for p in 0..k {
                sum += widen(a[i * lda + p]) * widen(b[p * ldb + j]);
            }
            out[i * n + j] = sum as f32;
        }
    }
    out
}

/// conv2d of x (batch, cin, h, w) with weight (cout, cin, kh, kw) + bias[cout], NCHW out.
pub fn conv2d_bf16_reference<T: ToBf16, U: ToBf16>(
    x: &[T],
    (batch, cin, h, w): (usize, usize, usize, usize),
    weight: &[U],
    (cout, kh, kw): (usize, usize, usize),
    bias: Option<&[f32]>,
    g: Conv2dGeometry,
) -> Vec<f32> {
    let Ok((oh, ow)) = conv2d_output_size((h, w), (kh, kw), g) else {
        return Vec::new();
    };
    let mut out = vec![0f32; batch * cout * oh * ow];
    for b in 0..batch {
        for co in 0..cout {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut sum = bias.map_or(0.0, |bias| bias[co] as f64);
                    for ci in 0..cin {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy =
                                    (oy * g.stride + ky * g.dilation) as isize - g.padding as isize;
                                let ix =
                                    (ox * g.stride + kx * g.dilation) as isize - g.padding as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let xv = x[((b * cin + ci) * h + iy as usize) * w + ix as usize];
                                let wv = weight[((co * cin + ci) * kh + ky) * kw + kx];
                                sum += widen(xv) * widen(wv);
                            }
                        }
                    }
                    out[((b * cout + co) * oh + oy) * ow + ox] = sum as f32;
                }
            }
        }
    }
    out
}
