//! Deterministic test data and comparison helpers shared by the group_norm tests.

#![allow(dead_code)]

use candle_core::{DType, Device, Result, Tensor};

/// SplitMix64: reproducible data without a rand dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let unit = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * unit
    }

    /// An f32 tensor of uniform values in [lo, hi).
    pub fn tensor(&mut self, shape: &[usize], lo: f32, hi: f32) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| self.uniform(lo, hi)).collect();
        Tensor::from_vec(data, shape, &Device::Cpu)
    }
}

/// Largest violation of |a - b| <= atol + rtol * |b|, as (index, a, b); None if all within.
pub fn first_mismatch(
    actual: &Tensor,
    expected: &Tensor,
    atol: f64,
    rtol: f64,
) -> Result<Option<(usize, f64, f64)>> {
    assert_eq!(actual.dims(), expected.dims(), "shape mismatch");
    assert_eq!(actual.dtype(), expected.dtype(), "dtype mismatch");
    let a = actual
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    let e = expected
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    let mut worst: Option<(usize, f64, f64, f64)> = None;
    for (i, (&x, &y)) in a.iter().zip(&e).enumerate() {
        let excess = (x - y).abs() - (atol + rtol * y.abs());
        if (excess.is_nan() || excess > 0.0) && worst.is_none_or(|w| excess > w.3) {
            worst = Some((i, x, y, excess));
        }
    }
    Ok(worst.map(|(i, x, y, _)| (i, x, y)))
}
