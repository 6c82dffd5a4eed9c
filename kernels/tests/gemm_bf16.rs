//! The bf16 GEMM and convolution kernels against their f64 references, on random operands with
//! odd sizes (tail rows, tail columns, odd K), for each microkernel this CPU runs; plus the
//! determinism the engine relies on (a row's result does not depend on the batch or threads).

mod common;

use candle_core::Result;
use common::Rng;
use half::bf16;
use imago_kernels::gemm_bf16::{
    bf16_bits_to_f32, conv2d_bf16_reference, conv2d_bf16_with, f32_to_bf16_bits,
    matmul_bf16_reference, matmul_bf16_with, Bias, Conv2dGeometry, Microkernel, Out, PackedB,
    PackedConvWeights,
};

/// Every microkernel this machine runs (the portable one always).
fn kernels() -> Vec<Microkernel> {
    [Microkernel::Avx512Bf16, Microkernel::Portable]
        .into_iter()
        .filter(|k| k.is_supported())
        .collect()
}

fn random(rng: &mut Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.uniform(-2.0, 2.0)).collect()
}

fn to_bf16(v: &[f32]) -> Vec<bf16> {
    v.iter()
        .map(|&x| bf16::from_bits(f32_to_bf16_bits(x)))
        .collect()
}

fn abs(v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| x.abs()).collect()
}

/// Checks `got` against the f64 reference `want`. The kernels sum in f32 one product at a time
/// (two roundings per pair of K, plus the bias), so |error| <= (K + 2) u Σ|a b| with
/// u = 2^-24 (Higham's bound for recursive summation, products exact since bf16 x bf16 fits
/// in f32); `magnitude` holds Σ|a b| (+ |bias|) per output. A bf16 output adds one rounding,
/// at most 2^-9 relative; 2^-8 leaves room for the f32 error underneath.
fn assert_within(
    what: &str,
    got: &[f32],
    want: &[f32],
    magnitude: &[f32],
    k: usize,
    bf16_out: bool,
) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let u = f32::EPSILON as f64 / 2.0;
    for (i, ((&g, &w), &mag)) in got.iter().zip(want).zip(magnitude).enumerate() {
        let mut tol = (k as f64 + 2.0) * u * mag as f64 + f64::from(f32::MIN_POSITIVE);
        if bf16_out {
            tol += w.abs() as f64 / 256.0;
        }
        let err = (g as f64 - w as f64).abs();
        assert!(
            err <= tol,
            "{what}: output {i}: got {g}, want {w} (error {err:e} > {tol:e})"
        );
    }
}

fn run_matmul(
    kernel: Microkernel,
    a: &[bf16],
    m: usize,
    lda: usize,
    b: &PackedB,
    bias: Bias<'_>,
    bf16_out: bool,
) -> Result<Vec<f32>> {
    let n = b.columns();
    if bf16_out {
        let mut out = vec![bf16::ZERO; m * n];
        matmul_bf16_with(kernel, a, m, lda, b, bias, Out::Bf16(&mut out))?;
        Ok(out.iter().map(|v| v.to_f32()).collect())
    } else {
        let mut out = vec![0f32; m * n];
        matmul_bf16_with(kernel, a, m, lda, b, bias, Out::F32(&mut out))?;
        Ok(out)
    }
}

#[test]
fn rounding_to_bf16_matches_half() {
    let mut rng = Rng::new(1);
    let specials = [
        0.0f32,
        -0.0,
        1.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
        f32::MIN_POSITIVE,
        1e-40,
    ];
    // Ties: 1 + 2^-8 (rounds down to even) and 1 + 3 * 2^-8 (rounds up to even).
    let ties = [1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, -(1.0 + 3.0 / 256.0)];
    let values = specials
        .into_iter()
        .chain(ties)
        .chain((0..10_000).map(|_| rng.uniform(-1e6, 1e6)));
    for x in values {
        assert_eq!(f32_to_bf16_bits(x), bf16::from_f32(x).to_bits(), "{x}");
        assert_eq!(
            bf16_bits_to_f32(f32_to_bf16_bits(x)),
            bf16::from_f32(x).to_f32()
        );
    }
    assert!(bf16_bits_to_f32(f32_to_bf16_bits(f32::NAN)).is_nan());
}

#[test]
fn matmul_matches_reference_on_odd_sizes() -> Result<()> {
    let mut rng = Rng::new(7);
    // (m, k, n, lda): tails in every dimension, K odd and even, padded rows (lda > k), one row.
    let shapes = [
        (1, 1, 1, 1),
        (8, 2, 48, 2),
        (13, 37, 50, 37),
        (37, 64, 97, 70),
        (64, 320, 48, 320),
        (3, 1024, 5, 1024),
        (41, 130, 200, 130),
    ];
    for kernel in kernels() {
        for &(m, k, n, lda) in &shapes {
            let a = random(&mut rng, (m - 1) * lda + k);
            let w = random(&mut rng, n * k); // W (n x k): B = Wᵀ
            let bias = random(&mut rng, n);
            let packed = PackedB::pack_transposed(n, k, |r| &w[r * k..(r + 1) * k]);
            let bt: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect(); // B (k x n)
            let want = matmul_bf16_reference(&a, (m, k, lda), &bt, (n, n), Some(&bias));
            let mag =
                matmul_bf16_reference(&abs(&a), (m, k, lda), &abs(&bt), (n, n), Some(&abs(&bias)));
            for bf16_out in [false, true] {
                let what = format!("{kernel:?} m={m} k={k} n={n} lda={lda} bf16_out={bf16_out}");
                // f32 input (rounded by the kernel) and bf16 input (read in place when possible).
                let mut got = vec![0f32; m * n];
                matmul_bf16_with(
                    kernel,
                    &a,
                    m,
                    lda,
                    &packed,
                    Bias::PerColumn(&bias),
                    Out::F32(&mut got),
                )?;
                assert_within(&format!("{what} f32 in"), &got, &want, &mag, k, false);
                let got = run_matmul(
                    kernel,
                    &to_bf16(&a),
                    m,
                    lda,
                    &packed,
                    Bias::PerColumn(&bias),
                    bf16_out,
                )?;
                assert_within(&what, &got, &want, &mag, k, bf16_out);
            }
            // B packed from its rows gives the same panels as from Wᵀ.
            let from_rows = PackedB::pack(k, n, |r| &bt[r * n..(r + 1) * n]);
            let got = run_matmul(kernel, &to_bf16(&a), m, lda, &from_rows, Bias::None, false)?;
            let want = matmul_bf16_reference(&a, (m, k, lda), &bt, (n, n), None);
            assert_within(
                &format!("{kernel:?} PackedB::pack m={m} k={k} n={n}"),
                &got,
                &want,
                &mag,
                k,
                false,
            );
        }
    }
    Ok(())
}

#[test]
fn matmul_row_bias_and_errors() -> Result<()> {
    let mut rng = Rng::new(3);
    let (m, k, n) = (11, 9, 7);
    let a = random(&mut rng, m * k);
    let bt = random(&mut rng, k * n);
    let bias = random(&mut rng, m);
    let packed = PackedB::pack(k, n, |r| &bt[r * n..(r + 1) * n]);
    let mut got = vec![0f32; m * n];
    matmul_bf16_with(
        Microkernel::Portable,
        &a,
        m,
        k,
        &packed,
        Bias::PerRow(&bias),
        Out::F32(&mut got),
    )?;
    let plain = matmul_bf16_reference(&a, (m, k, k), &bt, (n, n), None);
    let mag = matmul_bf16_reference(&abs(&a), (m, k, k), &abs(&bt), (n, n), None);
    let want: Vec<f32> = plain
        .iter()
        .enumerate()
        .map(|(i, v)| v + bias[i / n])
        .collect();
    let mag: Vec<f32> = mag
        .iter()
        .enumerate()
        .map(|(i, v)| v + bias[i / n].abs())
        .collect();
    assert_within("row bias", &got, &want, &mag, k, false);

    let mut short = vec![0f32; m * n - 1];
    assert!(matmul_bf16_with(
        Microkernel::Portable,
        &a,
        m,
        k,
        &packed,
        Bias::None,
        Out::F32(&mut short)
    )
    .is_err());
    assert!(matmul_bf16_with(
        Microkernel::Portable,
        &a[1..],
        m,
        k,
        &packed,
        Bias::None,
        Out::F32(&mut got)
    )
    .is_err());
    assert!(matmul_bf16_with(
        Microkernel::Portable,
        &a,
        m,
        k,
        &packed,
        Bias::PerRow(&bias[1..]),
        Out::F32(&mut got)
    )
    .is_err());
    Ok(())
}

/// Each row of a batched product is bit-for-bit the row computed alone, with 1 or 2 threads.
#[test]
fn matmul_rows_do_not_depend_on_batch_or_threads() -> Result<()> {
    let mut rng = Rng::new(11);
    let (m, k, n) = (45, 96, 100);
    let a = to_bf16(&random(&mut rng, m * k));
    let w = random(&mut rng, n * k);
    let packed = PackedB::pack_transposed(n, k, |r| &w[r * k..(r + 1) * k]);
    for kernel in kernels() {
        let all = run_matmul(kernel, &a, m, k, &packed, Bias::None, true)?;
        for row in [0, 7, 8, 44] {
            let alone = run_matmul(
                kernel,
                &a[row * k..(row + 1) * k],
                1,
                k,
                &packed,
                Bias::None,
                true,
            )?;
            assert_eq!(alone, all[row * n..(row + 1) * n], "{kernel:?} row {row}");
        }
        let one_thread = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .map_err(candle_core::Error::wrap)?
            .install(|| run_matmul(kernel, &a, m, k, &packed, Bias::None, true))?;
        assert_eq!(one_thread, all, "{kernel:?}: 1 thread vs the pool");
    }
    Ok(())
}

struct ConvCase {
    batch: usize,
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    kernel: usize,
    geometry: Conv2dGeometry,
}

fn geometry(stride: usize, padding: usize, dilation: usize) -> Conv2dGeometry {
    Conv2dGeometry {
        stride,
        padding,
        dilation,
    }
}

fn run_conv(
    kernel: Microkernel,
    x: &[bf16],
    c: &ConvCase,
    weights: &PackedConvWeights,
    bf16_out: bool,
) -> Result<Vec<f32>> {
    let (oh, ow) =
        imago_kernels::gemm_bf16::conv2d_output_size((c.h, c.w), (c.kernel, c.kernel), c.geometry)?;
    let len = c.batch * c.cout * oh * ow;
    let shape = (c.batch, c.cin, c.h, c.w);
    if bf16_out {
        let mut out = vec![bf16::ZERO; len];
        conv2d_bf16_with(kernel, x, shape, weights, c.geometry, Out::Bf16(&mut out))?;
        Ok(out.iter().map(|v| v.to_f32()).collect())
    } else {
        let mut out = vec![0f32; len];
        conv2d_bf16_with(kernel, x, shape, weights, c.geometry, Out::F32(&mut out))?;
        Ok(out)
    }
}

#[test]
fn conv2d_matches_reference() -> Result<()> {
    let mut rng = Rng::new(5);
    let case = |batch, cin, h, w, cout, kernel, geometry| ConvCase {
        batch,
        cin,
        h,
        w,
        cout,
        kernel,
        geometry,
    };
    let cases = [
        // 3x3 same padding: pixel blocks spanning several short rows, and rows longer than a block.
        case(2, 5, 7, 9, 11, 3, geometry(1, 1, 1)),
        case(1, 4, 3, 250, 9, 3, geometry(1, 1, 1)),
        // Downsampling (stride 2), 1x1 with odd K, dilation, no padding, a kernel of one pixel.
        case(1, 6, 9, 8, 17, 3, geometry(2, 1, 1)),
        case(2, 7, 10, 13, 130, 1, geometry(1, 0, 1)),
        case(1, 3, 11, 12, 8, 3, geometry(1, 2, 2)),
        case(1, 2, 6, 5, 3, 3, geometry(1, 0, 1)),
        case(1, 16, 1, 1, 5, 1, geometry(1, 0, 1)),
    ];
    for kernel in kernels() {
        for c in &cases {
            let x = random(&mut rng, c.batch * c.cin * c.h * c.w);
            let wt = random(&mut rng, c.cout * c.cin * c.kernel * c.kernel);
            let bias = random(&mut rng, c.cout);
            let weights = PackedConvWeights::pack(
                &wt,
                (c.cout, c.cin, c.kernel, c.kernel),
                Some(bias.clone()),
            )?;
            let shapes = ((c.batch, c.cin, c.h, c.w), (c.cout, c.kernel, c.kernel));
            let want = conv2d_bf16_reference(&x, shapes.0, &wt, shapes.1, Some(&bias), c.geometry);
            let mag = conv2d_bf16_reference(
                &abs(&x),
                shapes.0,
                &abs(&wt),
                shapes.1,
                Some(&abs(&bias)),
                c.geometry,
            );
            let k = c.cin * c.kernel * c.kernel;
            for bf16_out in [false, true] {
                let what = format!(
                    "{kernel:?} conv {:?} {:?} bf16_out={bf16_out}",
                    shapes, c.geometry
                );
                let got = run_conv(kernel, &to_bf16(&x), c, &weights, bf16_out)?;
                assert_within(&what, &got, &want, &mag, k, bf16_out);
            }
        }
    }
    Ok(())
}

/// Each image of a batch gets the bits it gets alone, with 1 or 2 threads.
#[test]
fn conv2d_images_do_not_depend_on_batch_or_threads() -> Result<()> {
    let mut rng = Rng::new(9);
    let c = ConvCase {
        batch: 3,
        cin: 8,
        h: 20,
        w: 21,
        cout: 140,
        kernel: 3,
        geometry: geometry(1, 1, 1),
    };
    let x = to_bf16(&random(&mut rng, c.batch * c.cin * c.h * c.w));
    let wt = random(&mut rng, c.cout * c.cin * 9);
    let weights =
        PackedConvWeights::pack(&wt, (c.cout, c.cin, 3, 3), Some(random(&mut rng, c.cout)))?;
    let image = c.cin * c.h * c.w;
    let out_image = c.cout * c.h * c.w;
    for kernel in kernels() {
        let all = run_conv(kernel, &x, &c, &weights, true)?;
        let single = ConvCase { batch: 1, ..c };
        for i in 0..c.batch {
            let alone = run_conv(
                kernel,
                &x[i * image..(i + 1) * image],
                &single,
                &weights,
                true,
            )?;
            assert_eq!(
                alone,
                all[i * out_image..(i + 1) * out_image],
                "{kernel:?} image {i}"
            );
        }
        let one_thread = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .map_err(candle_core::Error::wrap)?
            .install(|| run_conv(kernel, &x, &c, &weights, true))?;
        assert_eq!(one_thread, all, "{kernel:?}: 1 thread vs the pool");
    }
    Ok(())
}

#[test]
fn conv2d_rejects_bad_shapes() -> Result<()> {
    let weights = PackedConvWeights::pack(&[0f32; 2 * 3 * 9], (2, 3, 3, 3), None)?;
    let x = vec![0f32; 3 * 4 * 4];
    let mut out = vec![0f32; 2 * 4 * 4];
    let k = Microkernel::Portable;
    assert!(conv2d_bf16_with(
        k,
        &x,
        (1, 3, 4, 4),
        &weights,
        geometry(1, 1, 1),
        Out::F32(&mut out)
    )
    .is_ok());
    assert!(conv2d_bf16_with(
        k,
        &x,
        (1, 2, 4, 6),
        &weights,
        geometry(1, 1, 1),
        Out::F32(&mut out)
    )
    .is_err());
    assert!(conv2d_bf16_with(
        k,
        &x,
        (1, 3, 4, 4),
        &weights,
        geometry(1, 0, 1),
        Out::F32(&mut out)
    )
    .is_err());
    assert!(conv2d_bf16_with(
        k,
        &x[..4],
        (1, 3, 4, 4),
        &weights,
        geometry(1, 1, 1),
        Out::F32(&mut out)
    )
    .is_err());
    assert!(PackedConvWeights::pack(&[0f32; 5], (2, 3, 3, 3), None).is_err());
    Ok(())
}

/// The candle ops: shapes, dtypes, a non-contiguous input, bias; values as the kernels'.
#[test]
fn ops_on_tensors_match_the_references() -> Result<()> {
    use candle_core::{DType, Device, Tensor};
    use imago_kernels::gemm_bf16::{Conv2dBf16, LinearBf16};
    let mut rng = Rng::new(21);
    let dev = Device::Cpu;

    let (batch, cin, h, w, cout) = (2, 5, 6, 7, 9);
    let x = random(&mut rng, batch * cin * h * w);
    let wt = random(&mut rng, cout * cin * 9);
    let bias = random(&mut rng, cout);
    let g = geometry(1, 1, 1);
    let conv = Conv2dBf16::new(
        &Tensor::from_vec(wt.clone(), (cout, cin, 3, 3), &dev)?.to_dtype(DType::BF16)?,
        Some(&Tensor::from_vec(bias.clone(), cout, &dev)?),
        g,
    )?;
    // Built transposed then transposed back: the op must make it contiguous.
    let xt = Tensor::from_vec(x.clone(), (batch, cin, w, h), &dev)?;
    let x_bf16 = Tensor::from_vec(x.clone(), (batch, cin, h, w), &dev)?.to_dtype(DType::BF16)?;
    let x_strided = xt.transpose(2, 3)?;
    let y = conv.forward(&x_bf16)?;
    assert_eq!(
        (y.dims(), y.dtype()),
        (&[batch, cout, h, w][..], DType::BF16)
    );
    let y_f32 = conv.forward(&x_strided)?;
    assert_eq!(y_f32.dtype(), DType::F32);
    // The transposed input holds other values at each position; compare each with its own reference.
    let x_strided_values = x_strided.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let shapes = ((batch, cin, h, w), (cout, 3, 3));
    for (input, got, bf16_out) in [(&x, &y, true), (&x_strided_values, &y_f32, false)] {
        let want = conv2d_bf16_reference(input, shapes.0, &wt, shapes.1, Some(&bias), g);
        let mag = conv2d_bf16_reference(
            &abs(input),
            shapes.0,
            &abs(&wt),
            shapes.1,
            Some(&abs(&bias)),
            g,
        );
        let got = got.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        assert_within("Conv2dBf16", &got, &want, &mag, cin * 9, bf16_out);
    }

    let (rows, k, n) = (6, 10, 13);
    let x = random(&mut rng, rows * k);
    let wt = random(&mut rng, n * k);
    let bias = random(&mut rng, n);
    let linear = LinearBf16::new(
        &Tensor::from_vec(wt.clone(), (n, k), &dev)?,
        Some(&Tensor::from_vec(bias.clone(), n, &dev)?),
    )?;
    let y =
        linear.forward(&Tensor::from_vec(x.clone(), (2, 3, k), &dev)?.to_dtype(DType::BF16)?)?;
    assert_eq!((y.dims(), y.dtype()), (&[2, 3, n][..], DType::BF16));
    let bt: Vec<f32> = (0..k * n).map(|i| wt[(i % n) * k + i / n]).collect();
    let want = matmul_bf16_reference(&x, (rows, k, k), &bt, (n, n), Some(&bias));
    let mag = matmul_bf16_reference(&abs(&x), (rows, k, k), &abs(&bt), (n, n), Some(&abs(&bias)));
    let got = y.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    assert_within("LinearBf16", &got, &want, &mag, k, true);
    assert!(linear
        .forward(&Tensor::zeros((2, k + 1), DType::BF16, &dev)?)
        .is_err());
    assert!(linear
        .forward(&Tensor::zeros((2, k), DType::F16, &dev)?)
        .is_err());
    Ok(())
}
