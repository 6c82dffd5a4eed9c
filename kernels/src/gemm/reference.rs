//! The plain triple loop the GEMM kernels are tested against, accumulating in f64.

use candle_core::{bail, Result};

use super::Bias;

/// C = A·B (+ bias) (+ `c_old`), A (M x K) and B (K x N) row-major, each dot product summed in
/// f64 and rounded to f32 once.
pub fn gemm_reference(
    a: &[f32],
    b: &[f32],
    (m, k, n): (usize, usize, usize),
    bias: Bias<'_>,
    c_old: Option<&[f32]>,
) -> Result<Vec<f32>> {
    if a.len() != m * k || b.len() != k * n || c_old.is_some_and(|c| c.len() != m * n) {
        bail!("gemm_reference: operand sizes do not match {m} x {k} x {n}");
    }
    let mut c = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut sum: f64 = (0..k)
                .map(|p| f64::from(a[i * k + p]) * f64::from(b[p * n + j]))
                .sum();
            sum += match bias {
                Bias::None => 0.0,
                Bias::PerRow(v) => f64::from(v[i]),
                Bias::PerColumn(v) => f64::from(v[j]),
            };
            if let Some(old) = c_old {
                sum += f64::from(old[i * n + j]);
            }
            c[i * n + j] = sum as f32;
        }
    }
    Ok(c)
}
