//! Helpers for the layer tests: deterministic inputs and exact comparisons.
use candle_core::{Device, Result, Tensor};

/// A CPU f32 tensor of `shape` holding a repeating ramp of values in [-50, 50] x `scale`: both
/// signs, no two neighbours equal, the same every run.
pub fn ramp(shape: &[usize], scale: f32) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) * scale)
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu)
}

/// The bit patterns of an f32 tensor's values, for comparisons that must be exact.
pub fn bits(t: &Tensor) -> Result<Vec<u32>> {
    Ok(t.flatten_all()?
        .to_vec1::<f32>()?
        .iter()
        .map(|v| v.to_bits())
        .collect())
}
