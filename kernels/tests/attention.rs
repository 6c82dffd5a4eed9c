//! The attention kernel on every SIMD path against the materialised-softmax reference computed
//! in f64, half-precision inputs, batch and thread-count invariance, and the shape checks.

mod common;

use candle_core::{DType, Result, Tensor};
use common::{first_mismatch, Rng};
use imago_kernels::{attention_reference, scaled_dot_product_attention, AttentionOp, Simd};

/// (batch, q_len, kv_len, heads, head_dim): odd lengths (row and key-tile tails), cross
/// attention over 77 text tokens, the models' head widths (SD 40..160, FLUX 128, the VAE's
/// single 512-wide head) and odd widths that leave a column tail.
const CASES: [(usize, usize, usize, usize, usize); 11] = [
    (1, 1, 1, 1, 1),
    (2, 67, 77, 3, 40),
    (1, 130, 130, 2, 64),
    (1, 65, 129, 1, 80),
    (1, 33, 77, 2, 128),
    (1, 5, 3, 1, 160),
    (2, 70, 45, 3, 7),
    (1, 64, 64, 5, 64),
    (1, 100, 50, 1, 512),
    (1, 3, 200, 2, 33),
    (2, 9, 77, 4, 96),
];

struct Qkv {
    q: Tensor,
    k: Tensor,
    v: Tensor,
}

/// q, k in [-2, 2) so scores spread over several units (a softmax far from uniform); v in [-1, 1).
fn operands(rng: &mut Rng, case: (usize, usize, usize, usize, usize)) -> Result<Qkv> {
    let (batch, q_len, kv_len, heads, head_dim) = case;
    let width = heads * head_dim;
    Ok(Qkv {
        q: rng.tensor(&[batch, q_len, width], -2.0, 2.0)?,
        k: rng.tensor(&[batch, kv_len, width], -2.0, 2.0)?,
        v: rng.tensor(&[batch, kv_len, width], -1.0, 1.0)?,
    })
}

fn kernel(x: &Qkv, heads: usize, head_dim: usize, simd: Simd) -> Result<Tensor> {
    let op = AttentionOp::new(heads, head_dim, simd);
    x.q.apply_op3_no_bwd(&x.k, &x.v, &op)
}

/// The reference in f64 on the same (f32-representable) values.
fn oracle(x: &Qkv, heads: usize, head_dim: usize) -> Result<Tensor> {
    let f64 = |t: &Tensor| t.to_dtype(DType::F64);
    attention_reference(&f64(&x.q)?, &f64(&x.k)?, &f64(&x.v)?, heads, head_dim)
}

fn assert_close(actual: &Tensor, expected: &Tensor, atol: f64, what: &str) -> Result<()> {
    let actual = actual.to_dtype(expected.dtype())?;
    if let Some((i, a, e)) = first_mismatch(&actual, expected, atol, 0.0)? {
        panic!("{what}: element {i} is {a}, expected {e} (atol {atol})");
    }
    Ok(())
}

/// f32 kernel error budget against the exact result: each score is a head_dim-term f32 dot
/// product scaled by 1/sqrt(head_dim) (|q|, |k| < 2: about sqrt(head_dim) * 4 * 6e-8 / sqrt(head_dim)
/// rounding, ~3e-7 per score unit), the ~2 ulp exp, and the output is a convex combination of v
/// (|v| < 1) accumulated in f32 over kv_len terms: a few 1e-7, times a small factor for the
/// running-max rescales. 1e-5 leaves a margin of ~10 over the errors seen, and is 100x below
/// the model parity tolerance.
const F32_ATOL: f64 = 1e-5;

#[test]
fn every_path_matches_the_f64_reference() -> Result<()> {
    let mut rng = Rng::new(0xa77e);
    for case in CASES {
        let (_, _, _, heads, head_dim) = case;
        let x = operands(&mut rng, case)?;
        let expected = oracle(&x, heads, head_dim)?;
        for simd in Simd::all_available() {
            let actual = kernel(&x, heads, head_dim, simd)?;
            assert_eq!(actual.dims(), x.q.dims());
            assert_close(&actual, &expected, F32_ATOL, &format!("{simd:?} {case:?}"))?;
        }
    }
    Ok(())
}

#[test]
fn peaked_softmax_stays_finite_and_accurate() -> Result<()> {
    // Scores up to ~800: exp would overflow without the running max.
    let mut rng = Rng::new(7);
    let case = (1, 37, 150, 2, 64);
    let x = operands(&mut rng, case)?;
    let x = Qkv {
        q: (&x.q * 25.0)?,
        ..x
    };
    let expected = oracle(&x, 2, 64)?;
    for simd in Simd::all_available() {
        let actual = kernel(&x, 2, 64, simd)?;
        // Scores ~25x larger carry ~25x the absolute rounding.
        assert_close(&actual, &expected, 25.0 * F32_ATOL, &format!("{simd:?}"))?;
    }
    Ok(())
}

#[test]
fn dispatcher_matches_reference_in_f32() -> Result<()> {
    let mut rng = Rng::new(11);
    for case in CASES {
        let (_, _, _, heads, head_dim) = case;
        let x = operands(&mut rng, case)?;
        let fast = scaled_dot_product_attention(&x.q, &x.k, &x.v, heads, head_dim)?;
        let reference = attention_reference(&x.q, &x.k, &x.v, heads, head_dim)?;
        assert_close(&fast, &reference, F32_ATOL, &format!("{case:?}"))?;
    }
    Ok(())
}

#[test]
fn half_precision_inputs_match_reference() -> Result<()> {
    // Both compute in f32 from the same rounded inputs and round the output once: one ulp of
    // the output (|out| < 1: 2^-11 for f16, 2^-8 for bf16) plus the f32 budget.
    let mut rng = Rng::new(13);
    for (dtype, atol) in [(DType::F16, 1e-3), (DType::BF16, 8e-3)] {
        for case in CASES {
            let (_, _, _, heads, head_dim) = case;
            let x = operands(&mut rng, case)?;
            let half = |t: &Tensor| t.to_dtype(dtype);
            let (q, k, v) = (half(&x.q)?, half(&x.k)?, half(&x.v)?);
            let reference = attention_reference(&q, &k, &v, heads, head_dim)?;
            for simd in Simd::all_available() {
                let op = AttentionOp::new(heads, head_dim, simd);
                let actual = q.apply_op3_no_bwd(&k, &v, &op)?;
                assert_eq!(actual.dtype(), dtype);
                let what = format!("{dtype:?} {simd:?} {case:?}");
                assert_close(&actual, &reference, atol, &what)?;
            }
        }
    }
    Ok(())
}

fn bits(t: &Tensor) -> Result<Vec<u32>> {
    Ok(t.flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(f32::to_bits)
        .collect())
}

#[test]
fn a_sample_is_bit_identical_whatever_the_batch_and_threads() -> Result<()> {
    let mut rng = Rng::new(17);
    let (heads, head_dim) = (3, 40);
    for simd in Simd::all_available() {
        let x = operands(&mut rng, (3, 131, 77, heads, head_dim))?;
        let batched = kernel(&x, heads, head_dim, simd)?;
        for sample in 0..3 {
            let one = |t: &Tensor| t.narrow(0, sample, 1)?.contiguous();
            let single = Qkv {
                q: one(&x.q)?,
                k: one(&x.k)?,
                v: one(&x.v)?,
            };
            let expected = bits(&batched.narrow(0, sample, 1)?)?;
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .map_err(candle_core::Error::wrap)?;
                let alone = pool.install(|| kernel(&single, heads, head_dim, simd))?;
                assert!(
                    bits(&alone)? == expected,
                    "{simd:?}: sample {sample} alone on {threads} threads differs from the batch"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn non_cpu_dtypes_fall_back_to_the_reference() -> Result<()> {
    let mut rng = Rng::new(19);
    let x = operands(&mut rng, (1, 9, 10, 2, 8))?;
    let f64 = |t: &Tensor| t.to_dtype(DType::F64);
    let out = scaled_dot_product_attention(&f64(&x.q)?, &f64(&x.k)?, &f64(&x.v)?, 2, 8)?;
    assert_eq!(out.dtype(), DType::F64);
    assert_close(&out, &oracle(&x, 2, 8)?, 1e-12, "f64")
}

#[test]
fn shape_errors_name_the_problem() -> Result<()> {
    let mut rng = Rng::new(23);
    let x = operands(&mut rng, (1, 4, 5, 2, 8))?;
    let err = |r: Result<Tensor>| r.err().map(|e| e.to_string()).unwrap_or_default();
    let wrong_width = err(scaled_dot_product_attention(&x.q, &x.k, &x.v, 3, 8));
    assert!(wrong_width.contains("3 * 8"), "{wrong_width}");
    let v_short = x.v.narrow(1, 0, 4)?;
    let wrong_v = err(scaled_dot_product_attention(&x.q, &x.k, &v_short, 2, 8));
    assert!(wrong_v.contains("v must have k's shape"), "{wrong_v}");
    let zero = err(scaled_dot_product_attention(&x.q, &x.k, &x.v, 0, 8));
    assert!(zero.contains("at least 1"), "{zero}");
    Ok(())
}
