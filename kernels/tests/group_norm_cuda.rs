//! The fused GroupNorm CUDA kernel (feature `cuda`) against the reference ops on the CPU. Each test
//! runs only where a CUDA device is present; elsewhere (no GPU, or a build without the `cuda`
//! feature) it prints why it skipped and passes.

mod common;

use candle_core::{DType, Device, Result, Tensor};
use common::{first_mismatch, Rng};
use imago_kernels::{group_norm, group_norm_reference, Activation};

const EPS: f64 = 1e-5;

fn cuda_device() -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(device) => Some(device),
        Err(e) => {
            eprintln!("skipped: no CUDA device ({e})");
            None
        }
    }
}

/// GroupNorm of host data on `device`, returned on the CPU.
fn on_device(
    device: &Device,
    x: &Tensor,
    groups: usize,
    weight: &Tensor,
    bias: &Tensor,
    activation: Activation,
) -> Result<Tensor> {
    let out = group_norm(
        &x.to_device(device)?,
        groups,
        &weight.to_device(device)?,
        &bias.to_device(device)?,
        EPS,
        activation,
    )?;
    out.to_device(&Device::Cpu)
}

/// Shapes with odd sizes (a group of one channel, a spatial size that is not a multiple of the
/// block's 512 threads, rank 2 and rank 3 inputs) and both activations, in `dtype`.
fn kernel_matches_reference(dtype: DType, atol: f64, rtol: f64) -> Result<()> {
    let Some(device) = cuda_device() else {
        return Ok(());
    };
    let mut rng = Rng::new(0xc0da);
    let shapes: [(&[usize], usize); 6] = [
        (&[2, 320, 64, 64], 32),
        (&[1, 64, 7, 9], 32),
        (&[3, 4, 33, 17], 2),
        (&[2, 32, 1, 1], 32),
        (&[5, 12], 3),
        (&[2, 96, 1031], 3),
    ];
    for (shape, groups) in shapes {
        let channels = shape[1];
        // x in [-2, 3): a non-zero mean, as real activations have.
        let x = rng.tensor(shape, -2.0, 3.0)?.to_dtype(dtype)?;
        let weight = rng.tensor(&[channels], -1.5, 1.5)?.to_dtype(dtype)?;
        let bias = rng.tensor(&[channels], -0.5, 0.5)?.to_dtype(dtype)?;
        for activation in [Activation::None, Activation::Silu] {
            let kernel = on_device(&device, &x, groups, &weight, &bias, activation)?;
            let reference = group_norm_reference(&x, groups, &weight, &bias, EPS, activation)?;
            if let Some((i, a, e)) = first_mismatch(&kernel, &reference, atol, rtol)? {
                panic!(
                    "{dtype:?} {shape:?} groups {groups} {activation:?}: element {i} is {a}, \
                     expected {e} (atol {atol}, rtol {rtol})"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn cuda_kernel_matches_reference_f32() -> Result<()> {
    // f32 statistics reduced in a different order than the CPU's: a few f32 ulps of the
    // normalized value (|y| < ~5 here).
    kernel_matches_reference(DType::F32, 2e-5, 2e-5)
}

#[test]
fn cuda_kernel_matches_reference_f16() -> Result<()> {
    // One f16 ulp is 2^-10 relative: both compute in f32 and round once.
    kernel_matches_reference(DType::F16, 1e-3, 1e-3)
}

#[test]
fn cuda_kernel_matches_reference_bf16() -> Result<()> {
    // One bf16 ulp is 2^-7 relative.
    kernel_matches_reference(DType::BF16, 8e-3, 8e-3)
}

/// A sample's output does not depend on what else is in the batch (the engine's determinism).
#[test]
fn cuda_kernel_is_batch_invariant() -> Result<()> {
    let Some(device) = cuda_device() else {
        return Ok(());
    };
    let mut rng = Rng::new(7);
    let batch = rng.tensor(&[3, 64, 31, 29], -2.0, 3.0)?;
    let weight = rng.tensor(&[64], -1.5, 1.5)?;
    let bias = rng.tensor(&[64], -0.5, 0.5)?;
    let all = on_device(&device, &batch, 32, &weight, &bias, Activation::Silu)?;
    for n in 0..3 {
        let alone = batch.narrow(0, n, 1)?.contiguous()?;
        let one = on_device(&device, &alone, 32, &weight, &bias, Activation::Silu)?;
        let from_batch = all.narrow(0, n, 1)?;
        let diff = (one - from_batch)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0, "sample {n} differs when computed alone");
    }
    Ok(())
}
