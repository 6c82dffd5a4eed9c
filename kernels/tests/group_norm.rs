//! The fused GroupNorm kernel against the reference ops, the reference against hand-computed
//! values, and the error messages.

mod common;

use candle_core::{DType, Device, Result, Tensor, Var};
use common::{first_mismatch, Rng};
use imago_kernels::{group_norm, group_norm_reference, Activation, GroupNormOp};

const EPS: f64 = 1e-5;
const ACTIVATIONS: [Activation; 2] = [Activation::None, Activation::Silu];

/// x in [-2, 3) (a non-zero mean), weight in [-1.5, 1.5), bias in [-0.5, 0.5).
fn operands(rng: &mut Rng, shape: &[usize]) -> Result<(Tensor, Tensor, Tensor)> {
    let channels = shape[1];
    Ok((
        rng.tensor(shape, -2.0, 3.0)?,
        rng.tensor(&[channels], -1.5, 1.5)?,
        rng.tensor(&[channels], -0.5, 0.5)?,
    ))
}

fn assert_close(
    actual: &Tensor,
    expected: &Tensor,
    atol: f64,
    rtol: f64,
    what: &str,
) -> Result<()> {
    if let Some((i, a, e)) = first_mismatch(actual, expected, atol, rtol)? {
        panic!("{what}: element {i} is {a}, expected {e} (atol {atol}, rtol {rtol})");
    }
    Ok(())
}

/// Every shape of the grid, both activations: the fast path against the reference in `dtype`.
fn fast_path_matches_reference_over_grid(dtype: DType, atol: f64, rtol: f64) -> Result<()> {
    let mut rng = Rng::new(0x5eed);
    let channel_groups = [(32, 32), (64, 32), (320, 32), (4, 2)];
    let spatials = [(1, 1), (7, 9), (64, 64)];
    for batch in [1, 2] {
        for (channels, groups) in channel_groups {
            for (h, w) in spatials {
                let (x, weight, bias) = operands(&mut rng, &[batch, channels, h, w])?;
                let (x, weight, bias) = (
                    x.to_dtype(dtype)?,
                    weight.to_dtype(dtype)?,
                    bias.to_dtype(dtype)?,
                );
                for activation in ACTIVATIONS {
                    let fast = group_norm(&x, groups, &weight, &bias, EPS, activation)?;
                    let reference =
                        group_norm_reference(&x, groups, &weight, &bias, EPS, activation)?;
                    let what = format!(
                        "{dtype:?} {batch}x{channels}x{h}x{w} groups {groups} {activation:?}"
                    );
                    assert_close(&fast, &reference, atol, rtol, &what)?;
                }
            }
        }
    }
    Ok(())
}

#[test]
fn fast_path_matches_reference_f32() -> Result<()> {
    fast_path_matches_reference_over_grid(DType::F32, 1e-5, 1e-5)
}

#[test]
fn fast_path_matches_reference_f16() -> Result<()> {
    // One f16 ulp is 2^-10 relative: both paths compute in f32 and round once.
    fast_path_matches_reference_over_grid(DType::F16, 1e-3, 1e-3)
}

#[test]
fn fast_path_matches_reference_bf16() -> Result<()> {
    // One bf16 ulp is 2^-7 relative.
    fast_path_matches_reference_over_grid(DType::BF16, 8e-3, 8e-3)
}

#[test]
fn fast_path_f32_is_within_1e6_of_an_f64_computation() -> Result<()> {
    let mut rng = Rng::new(7);
    for (shape, groups) in [
        (vec![2, 320, 64, 64], 32),
        (vec![1, 64, 7, 9], 32),
        (vec![2, 4, 1, 1], 2),
    ] {
        let (x, weight, bias) = operands(&mut rng, &shape)?;
        let to64 = |t: &Tensor| t.to_dtype(DType::F64);
        for activation in ACTIVATIONS {
            let fast = group_norm(&x, groups, &weight, &bias, EPS, activation)?;
            let exact = group_norm_reference(
                &to64(&x)?,
                groups,
                &to64(&weight)?,
                &to64(&bias)?,
                EPS,
                activation,
            )?
            .to_dtype(DType::F32)?;
            assert_close(
                &fast,
                &exact,
                1e-6,
                1e-6,
                &format!("{shape:?} {activation:?} vs f64"),
            )?;
        }
    }
    Ok(())
}

#[test]
fn fast_path_stays_accurate_when_the_mean_dwarfs_the_spread() -> Result<()> {
    // Values 1000 +- 0.05: folding the mean into the bias in f32 would be off by ~1e-3 here.
    let mut rng = Rng::new(23);
    let (noise, weight, bias) = operands(&mut rng, &[2, 64, 9, 7])?;
    let x = (noise * 0.02)?.affine(1.0, 1000.0)?;
    let to64 = |t: &Tensor| t.to_dtype(DType::F64);
    for activation in ACTIVATIONS {
        let fast = group_norm(&x, 32, &weight, &bias, EPS, activation)?;
        let exact = group_norm_reference(
            &to64(&x)?,
            32,
            &to64(&weight)?,
            &to64(&bias)?,
            EPS,
            activation,
        )?
        .to_dtype(DType::F32)?;
        assert_close(
            &fast,
            &exact,
            1e-6,
            1e-6,
            &format!("offset 1000 {activation:?} vs f64"),
        )?;
    }
    Ok(())
}

#[test]
fn group_norm_dispatches_contiguous_cpu_input_to_the_kernel() -> Result<()> {
    let mut rng = Rng::new(11);
    let (x, weight, bias) = operands(&mut rng, &[2, 64, 7, 9])?;
    let op = GroupNormOp::new(32, EPS, Activation::Silu);
    let direct = x.apply_op3_no_bwd(&weight, &bias, &op)?;
    let dispatched = group_norm(&x, 32, &weight, &bias, EPS, Activation::Silu)?;
    let direct = direct.flatten_all()?.to_vec1::<f32>()?;
    let dispatched = dispatched.flatten_all()?.to_vec1::<f32>()?;
    assert_eq!(
        direct, dispatched,
        "group_norm should run the fused kernel bit for bit"
    );
    Ok(())
}

/// x = 1x2x2x1 with channel 0 = [1, 2] and channel 1 = [3, 4]; weight [2, -1], bias [0.5, 1].
fn tiny_case() -> Result<(Tensor, Tensor, Tensor)> {
    let dev = Device::Cpu;
    Ok((
        Tensor::new(&[1f32, 2., 3., 4.], &dev)?.reshape((1, 2, 2, 1))?,
        Tensor::new(&[2f32, -1.], &dev)?,
        Tensor::new(&[0.5f32, 1.], &dev)?,
    ))
}

fn silu(v: f64) -> f64 {
    v / (1.0 + (-v).exp())
}

fn tiny_expected(groups: usize, activation: Activation) -> Vec<f64> {
    // One group: mean 2.5, biased variance (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25.
    // Two groups: means 1.5 and 3.5, variance 0.25 each.
    let normalized: [f64; 4] = match groups {
        1 => [-1.5, -0.5, 0.5, 1.5].map(|d| d / (1.25 + EPS).sqrt()),
        _ => [-0.5, 0.5, -0.5, 0.5].map(|d| d / (0.25 + EPS).sqrt()),
    };
    let (weight, bias) = ([2.0, 2.0, -1.0, -1.0], [0.5, 0.5, 1.0, 1.0]);
    (0..4)
        .map(|i| normalized[i] * weight[i] + bias[i])
        .map(|v| {
            if activation == Activation::Silu {
                silu(v)
            } else {
                v
            }
        })
        .collect()
}

#[test]
fn reference_matches_hand_computed_tiny_case() -> Result<()> {
    let (x, weight, bias) = tiny_case()?;
    for groups in [1, 2] {
        for activation in ACTIVATIONS {
            let expected = Tensor::new(tiny_expected(groups, activation), &Device::Cpu)?
                .to_dtype(DType::F32)?
                .reshape((1, 2, 2, 1))?;
            let reference = group_norm_reference(&x, groups, &weight, &bias, EPS, activation)?;
            let fast = group_norm(&x, groups, &weight, &bias, EPS, activation)?;
            let what = format!("groups {groups} {activation:?}");
            assert_close(
                &reference,
                &expected,
                1e-6,
                1e-6,
                &format!("reference {what}"),
            )?;
            assert_close(&fast, &expected, 1e-6, 1e-6, &format!("kernel {what}"))?;
        }
    }
    // Spot-check the hand formula itself: (1 - 2.5) / sqrt(1.25) * 2 + 0.5 = -2.1833.
    assert!((tiny_expected(1, Activation::None)[0] - (-2.183_27)).abs() < 1e-4);
    Ok(())
}

#[test]
fn non_contiguous_input_falls_back_and_agrees() -> Result<()> {
    let mut rng = Rng::new(3);
    let (x, weight, bias) = operands(&mut rng, &[2, 8, 5, 6])?;
    let transposed = x.transpose(2, 3)?;
    assert!(!transposed.is_contiguous());
    for activation in ACTIVATIONS {
        let strided = group_norm(&transposed, 4, &weight, &bias, EPS, activation)?;
        let packed = group_norm(
            &transposed.contiguous()?,
            4,
            &weight,
            &bias,
            EPS,
            activation,
        )?;
        assert_close(
            &strided,
            &packed,
            1e-5,
            1e-5,
            &format!("transposed {activation:?}"),
        )?;
    }
    Ok(())
}

#[test]
fn other_ranks_match_reference() -> Result<()> {
    let mut rng = Rng::new(5);
    for shape in [vec![3, 8], vec![2, 8, 11], vec![1, 8, 3, 4, 5]] {
        let (x, weight, bias) = operands(&mut rng, &shape)?;
        for activation in ACTIVATIONS {
            let fast = group_norm(&x, 4, &weight, &bias, EPS, activation)?;
            let reference = group_norm_reference(&x, 4, &weight, &bias, EPS, activation)?;
            assert_close(
                &fast,
                &reference,
                1e-5,
                1e-5,
                &format!("{shape:?} {activation:?}"),
            )?;
        }
    }
    Ok(())
}

#[test]
fn empty_batch_gives_empty_output() -> Result<()> {
    let mut rng = Rng::new(9);
    let (_, weight, bias) = operands(&mut rng, &[1, 4])?;
    let x = Tensor::zeros((0, 4, 3, 3), DType::F32, &Device::Cpu)?;
    let y = group_norm(&x, 2, &weight, &bias, EPS, Activation::Silu)?;
    assert_eq!(y.dims(), &[0, 4, 3, 3]);
    Ok(())
}

#[test]
fn tracked_input_keeps_autograd_working() -> Result<()> {
    let mut rng = Rng::new(13);
    let (x, weight, bias) = operands(&mut rng, &[1, 4, 3, 3])?;
    let var = Var::from_tensor(&x)?;
    let y = group_norm(var.as_tensor(), 2, &weight, &bias, EPS, Activation::Silu)?;
    let grads = y.sum_all()?.backward()?;
    let grad = grads.get(var.as_tensor()).expect("gradient for x");
    assert_eq!(grad.dims(), x.dims());
    Ok(())
}

fn error_message(result: Result<Tensor>) -> String {
    match result {
        Ok(t) => panic!("expected an error, got a tensor of shape {:?}", t.dims()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn errors_name_the_problem() -> Result<()> {
    let mut rng = Rng::new(17);
    let (x, weight, bias) = operands(&mut rng, &[1, 6, 2, 2])?;
    for f in [group_norm, group_norm_reference] {
        let msg = error_message(f(&x, 4, &weight, &bias, EPS, Activation::None));
        assert!(
            msg.contains("6 channels") && msg.contains("4 groups"),
            "{msg}"
        );

        let short = weight.narrow(0, 0, 5)?;
        let msg = error_message(f(&x, 3, &short, &bias, EPS, Activation::None));
        assert!(
            msg.contains("weight") && msg.contains("[6]") && msg.contains("[5]"),
            "{msg}"
        );

        let wide = bias.reshape((1, 6))?;
        let msg = error_message(f(&x, 3, &weight, &wide, EPS, Activation::None));
        assert!(
            msg.contains("bias") && msg.contains("[6]") && msg.contains("[1, 6]"),
            "{msg}"
        );

        let flat = x.flatten_all()?;
        let msg = error_message(f(&flat, 3, &weight, &bias, EPS, Activation::None));
        assert!(msg.contains("rank >= 2") && msg.contains("[24]"), "{msg}");

        let msg = error_message(f(&x, 0, &weight, &bias, EPS, Activation::None));
        assert!(msg.contains("num_groups"), "{msg}");
    }
    Ok(())
}
