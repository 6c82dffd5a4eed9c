//! The packed linear layer against candle's matmul, on every microkernel; and row invariance.

mod common;

use candle_core::{Result, Tensor};
use common::Rng;
use imago_kernels::{linear_reference, Isa, LinearKernel};

fn isas() -> Vec<Isa> {
    [Isa::Portable, Isa::Avx2, Isa::Avx512]
        .into_iter()
        .filter(|i| i.is_available())
        .collect()
}

#[test]
fn matches_candle_over_sizes() -> Result<()> {
    let mut rng = Rng::new(0x11ea);
    for shape in [vec![1, 3], vec![7, 320], vec![2, 77, 65], vec![130, 700]] {
        let features = shape[shape.len() - 1];
        for out in [5, 64, 300] {
            let x = rng.tensor(&shape, -1.0, 1.0)?;
            let w = rng.tensor(&[out, features], -0.5, 0.5)?;
            let b = rng.tensor(&[out], -1.0, 1.0)?;
            for bias in [None, Some(&b)] {
                let expected = linear_reference(&x, &w, bias)?;
                let magnitude = linear_reference(
                    &x.abs()?,
                    &w.abs()?,
                    bias.map(Tensor::abs).transpose()?.as_ref(),
                )?;
                for isa in isas() {
                    let got = LinearKernel::with_isa(isa, &w, bias)?.forward(&x)?;
                    assert_eq!(got.dims(), expected.dims());
                    // Both sides are f32 sums of `features` products plus a bias, each within
                    // gamma(features + 1) · magnitude of the exact value; u = 2^-24.
                    let u = f64::from(f32::EPSILON) / 2.0;
                    let n = (features + 1) as f64;
                    let gamma = n * u / (1.0 - n * u);
                    let (g, e, m) = (
                        got.flatten_all()?.to_vec1::<f32>()?,
                        expected.flatten_all()?.to_vec1::<f32>()?,
                        magnitude.flatten_all()?.to_vec1::<f32>()?,
                    );
                    for i in 0..g.len() {
                        let err = f64::from((g[i] - e[i]).abs());
                        let bound = 2.0 * gamma * f64::from(m[i]);
                        assert!(
                            err <= bound,
                            "{isa:?} {shape:?} -> {out} bias {}: element {i} {} vs {}",
                            bias.is_some(),
                            g[i],
                            e[i]
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

#[test]
fn a_row_has_the_same_bits_whatever_the_batch() -> Result<()> {
    let mut rng = Rng::new(0x5a3e);
    let x = rng.tensor(&[300, 320], -1.0, 1.0)?;
    let w = rng.tensor(&[640, 320], -0.5, 0.5)?;
    let b = rng.tensor(&[640], -1.0, 1.0)?;
    for isa in isas() {
        let layer = LinearKernel::with_isa(isa, &w, Some(&b))?;
        let all = layer.forward(&x)?;
        for (row, rows) in [(0, 1), (5, 7), (150, 77)] {
            let start = row.min(300 - rows);
            let part = layer.forward(&x.narrow(0, start, rows)?)?;
            let alone = part.get(row - start)?.to_vec1::<f32>()?;
            let in_all = all.get(row)?.to_vec1::<f32>()?;
            assert!(
                alone
                    .iter()
                    .zip(&in_all)
                    .all(|(p, q)| p.to_bits() == q.to_bits()),
                "{isa:?}: row {row} differs between {rows} rows and 300"
            );
        }
    }
    Ok(())
}
