//! The activation kernel against the GELU formulas in f64 and against candle's ops, GEGLU's
//! split of the last dimension, half precision, and bit-identical results across SIMD paths.

mod common;

use candle_core::{DType, Device, Result, Tensor};
use common::{first_mismatch, Rng};
use imago_kernels::activation::reference;
use imago_kernels::{activate, geglu, ActivationKind, ActivationOp, Simd};

const ELEMENTWISE: [ActivationKind; 3] = [
    ActivationKind::GeluErf,
    ActivationKind::GeluTanh,
    ActivationKind::QuickGelu,
];

/// Every f32 input worth checking: a dense sweep of [-16, 16] (the erf series/tail switch at
/// 0.8, the tail cut-off at 13) plus values where the formulas saturate.
fn sweep() -> Result<Tensor> {
    let steps = 200_001;
    let mut xs: Vec<f32> = (0..steps)
        .map(|i| -16.0 + 32.0 * i as f32 / (steps - 1) as f32)
        .collect();
    xs.extend([
        0.0, -0.0, 1e-30, -1e-30, 0.8, -0.8, 13.0, -13.0, 40.0, -40.0, 1e6, -1e6,
    ]);
    Tensor::from_vec(xs.clone(), xs.len(), &Device::Cpu)
}

/// The kind's formula in f64 (erf from candle's f64 path, exp and tanh from std).
fn formula_f64(x: f64, kind: ActivationKind) -> f64 {
    match kind {
        ActivationKind::GeluErf | ActivationKind::Geglu => {
            let t = Tensor::new(&[x], &Device::Cpu).and_then(|t| t.gelu_erf());
            t.and_then(|t| t.to_vec1::<f64>())
                .map(|v| v[0])
                .unwrap_or(f64::NAN)
        }
        ActivationKind::GeluTanh => {
            let y = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
            0.5 * x * (1.0 + y.tanh())
        }
        ActivationKind::QuickGelu => x / (1.0 + (-1.702 * x).exp()),
    }
}

#[test]
fn elementwise_kinds_match_the_f64_formulas_on_every_path() -> Result<()> {
    let x = sweep()?;
    let xs = x.to_vec1::<f32>()?;
    for kind in ELEMENTWISE {
        for simd in Simd::all_available() {
            let y = x
                .apply_op1_no_bwd(&ActivationOp::new(kind, simd))?
                .to_vec1::<f32>()?;
            for (&x, &y) in xs.iter().zip(&y) {
                let exact = formula_f64(f64::from(x), kind);
                // 4 ulp of the result, plus an absolute term times |x|: the exact GELU uses
                // torch's erf (Abramowitz & Stegun in f32, |error| <= 5e-7, halved by the x / 2
                // factor); for the others 2^-24 |x|, since the f64 oracle's own 1 + tanh
                // cancels in the negative tail and exp(-2y) amplifies y's rounding by |2y| only
                // where the result is below 2^-24 |x|.
                let per_x = if kind == ActivationKind::GeluErf {
                    2.6e-7
                } else {
                    6e-8
                };
                let tolerance = 4.8e-7 * exact.abs() + per_x * f64::from(x).abs();
                let error = (f64::from(y) - exact).abs();
                assert!(
                    error <= tolerance || (exact.is_nan() && y.is_nan()),
                    "{kind:?} {simd:?} at {x}: {y} vs {exact}"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn every_path_gives_the_same_bits() -> Result<()> {
    // The paths run the same IEEE operations (no fused multiply-adds) at different widths.
    let mut rng = Rng::new(3);
    let x = rng.tensor(&[3, 1001], -9.0, 9.0)?;
    for kind in [
        ActivationKind::GeluErf,
        ActivationKind::GeluTanh,
        ActivationKind::QuickGelu,
        ActivationKind::Geglu,
    ] {
        let outs = Simd::all_available()
            .into_iter()
            .map(|simd| {
                x.narrow(1, 0, 1000)?
                    .contiguous()?
                    .apply_op1_no_bwd(&ActivationOp::new(kind, simd))
            })
            .collect::<Result<Vec<_>>>()?;
        let bits = |t: &Tensor| -> Result<Vec<u32>> {
            Ok(t.flatten_all()?
                .to_vec1::<f32>()?
                .into_iter()
                .map(f32::to_bits)
                .collect())
        };
        for out in &outs[1..] {
            assert!(bits(out)? == bits(&outs[0])?, "{kind:?}");
        }
    }
    Ok(())
}

#[test]
fn dispatch_matches_candle_ops() -> Result<()> {
    // candle's f32 ops round through libm erf/tanh: a few ulp of the result or of |x|.
    let mut rng = Rng::new(5);
    for shape in [
        vec![1usize, 2],
        vec![2, 77, 38],
        vec![4096, 34],
        vec![3, 2561 * 2],
    ] {
        let x = rng.tensor(&shape, -6.0, 6.0)?;
        for kind in [
            ActivationKind::GeluErf,
            ActivationKind::GeluTanh,
            ActivationKind::QuickGelu,
            ActivationKind::Geglu,
        ] {
            let fast = activate(&x, kind)?;
            let slow = reference::activate(&x, kind)?;
            assert_eq!(fast.dims(), slow.dims(), "{kind:?} {shape:?}");
            if let Some((i, a, e)) = first_mismatch(&fast, &slow, 4e-6, 1e-6)? {
                panic!("{kind:?} {shape:?}: element {i} is {a}, expected {e}");
            }
        }
    }
    Ok(())
}

#[test]
fn geglu_multiplies_the_first_half_by_the_gelu_of_the_second() -> Result<()> {
    let x = Tensor::new(&[[2.0f32, -3.0, 1.0, -1.0]], &Device::Cpu)?;
    let y = geglu(&x)?.to_vec2::<f32>()?;
    let gelu = |g: f64| formula_f64(g, ActivationKind::GeluErf);
    let expected = [2.0 * gelu(1.0), -3.0 * gelu(-1.0)];
    for (a, e) in y[0].iter().zip(expected) {
        assert!((f64::from(*a) - e).abs() < 1e-6, "{a} vs {e}");
    }
    let odd = Tensor::zeros((2, 5), DType::F32, &Device::Cpu)?;
    let message = geglu(&odd).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("must be even"), "{message}");
    Ok(())
}

#[test]
fn half_precision_matches_candle_ops() -> Result<()> {
    // candle rounds its f64 result once, the kernel its f32 result once: at most one ulp apart
    // (2^-10 relative for f16, 2^-7 for bf16), plus the absolute rounding near zero.
    let mut rng = Rng::new(9);
    let x = rng.tensor(&[5, 130], -6.0, 6.0)?;
    for (dtype, tol) in [(DType::F16, 1.5e-3), (DType::BF16, 1e-2)] {
        let x = x.to_dtype(dtype)?;
        for kind in [
            ActivationKind::GeluErf,
            ActivationKind::GeluTanh,
            ActivationKind::Geglu,
        ] {
            let fast = activate(&x, kind)?;
            assert_eq!(fast.dtype(), dtype);
            let slow = reference::activate(&x, kind)?;
            if let Some((i, a, e)) = first_mismatch(&fast, &slow, tol, tol)? {
                panic!("{dtype:?} {kind:?}: element {i} is {a}, expected {e}");
            }
        }
    }
    Ok(())
}

#[test]
fn f64_falls_back_to_candle_ops() -> Result<()> {
    let x = Tensor::new(&[-2.5f64, 0.3, 4.0], &Device::Cpu)?;
    let y = activate(&x, ActivationKind::GeluErf)?;
    assert_eq!(y.dtype(), DType::F64);
    assert_eq!(y.to_vec1::<f64>()?, x.gelu_erf()?.to_vec1::<f64>()?);
    Ok(())
}
