//! The implicit-GEMM convolution against candle's conv2d over odd sizes, kernels, paddings,
//! strides and dilations, on every microkernel; the in-place stride-1 path against the im2col
//! path bit for bit; and batch and thread-count invariance.

mod common;

use candle_core::{Device, Result, Tensor};
use common::Rng;
use imago_kernels::{conv2d_reference, Conv2dGeometry, Conv2dKernel, Isa};

fn isas() -> Vec<Isa> {
    [Isa::Portable, Isa::Avx2, Isa::Avx512]
        .into_iter()
        .filter(|i| i.is_available())
        .collect()
}

/// Fails unless |actual - expected| <= 2 gamma(K + 1) · (|x| * |w| + |b|) element-wise: both
/// sides are f32 sums of K products plus a bias in some order, each within gamma(K + 1) of the
/// exact value (gamma(n) = n u / (1 - n u), u = 2^-24).
fn assert_within_rounding(
    actual: &Tensor,
    expected: &Tensor,
    magnitude: &Tensor,
    depth: usize,
    what: &str,
) -> Result<()> {
    assert_eq!(actual.dims(), expected.dims(), "{what}: shape");
    let u = f64::from(f32::EPSILON) / 2.0;
    let n = (depth + 1) as f64;
    let gamma = n * u / (1.0 - n * u);
    let a = actual.flatten_all()?.to_vec1::<f32>()?;
    let e = expected.flatten_all()?.to_vec1::<f32>()?;
    let m = magnitude.flatten_all()?.to_vec1::<f32>()?;
    for i in 0..a.len() {
        let err = f64::from((a[i] - e[i]).abs());
        let bound = 2.0 * gamma * f64::from(m[i]) + 1e-30;
        assert!(
            err <= bound,
            "{what}: element {i} is {}, expected {} (error {err:e} > {bound:e})",
            a[i],
            e[i]
        );
    }
    Ok(())
}

struct ConvCase {
    x: Tensor,
    w: Tensor,
    b: Option<Tensor>,
    geometry: Conv2dGeometry,
}

impl ConvCase {
    fn check(&self, isa: Isa) -> Result<()> {
        let kernel = Conv2dKernel::with_isa(isa, &self.w, self.b.as_ref(), self.geometry)?;
        let got = kernel.forward(&self.x)?;
        let expected = conv2d_reference(&self.x, &self.w, self.b.as_ref(), self.geometry)?;
        let b_abs = self.b.as_ref().map(Tensor::abs).transpose()?;
        let magnitude = conv2d_reference(
            &self.x.abs()?,
            &self.w.abs()?,
            b_abs.as_ref(),
            self.geometry,
        )?;
        let (_, cin, kh, kw) = self.w.dims4()?;
        let what = format!(
            "{isa:?} x {:?} w {:?} bias {} {:?}",
            self.x.dims(),
            self.w.dims(),
            self.b.is_some(),
            self.geometry
        );
        assert_within_rounding(&got, &expected, &magnitude, cin * kh * kw, &what)
    }
}

#[test]
fn matches_candle_over_kernels_paddings_strides_and_dilations() -> Result<()> {
    let mut rng = Rng::new(0xc0de);
    let inputs = [(1, 3, 7, 9), (2, 5, 12, 5), (1, 16, 1, 1), (1, 33, 17, 18)];
    let kernels = [(1, 1), (3, 3), (2, 3), (5, 4)];
    for (batch, cin, h, w) in inputs {
        for (kh, kw) in kernels {
            for (padding, stride, dilation) in
                [(0, 1, 1), (1, 1, 1), (2, 2, 1), (1, 3, 2), (0, 2, 1)]
            {
                let geometry = Conv2dGeometry {
                    padding,
                    stride,
                    dilation,
                };
                let fits = |size: usize, k: usize| size + 2 * padding > dilation * (k - 1);
                if !fits(h, kh) || !fits(w, kw) {
                    continue;
                }
                for cout in [1, 13, 40] {
                    let case = ConvCase {
                        x: rng.tensor(&[batch, cin, h, w], -1.0, 1.0)?,
                        w: rng.tensor(&[cout, cin, kh, kw], -0.5, 0.5)?,
                        b: (cout != 13)
                            .then(|| rng.tensor(&[cout], -1.0, 1.0))
                            .transpose()?,
                        geometry,
                    };
                    for isa in isas() {
                        case.check(isa)?;
                    }
                }
            }
        }
    }
    Ok(())
}

#[test]
fn large_layers_match_candle() -> Result<()> {
    // Several K-blocks (K = 320 · 9), several column blocks and a row tail (Cout 70).
    let mut rng = Rng::new(0x1a46e);
    let case = ConvCase {
        x: rng.tensor(&[1, 320, 24, 21], -1.0, 1.0)?,
        w: rng.tensor(&[70, 320, 3, 3], -0.1, 0.1)?,
        b: Some(rng.tensor(&[70], -1.0, 1.0)?),
        geometry: Conv2dGeometry {
            padding: 1,
            stride: 1,
            dilation: 1,
        },
    };
    case.check(Isa::detected())?;
    let pointwise = ConvCase {
        x: rng.tensor(&[2, 300, 19, 23], -1.0, 1.0)?,
        w: rng.tensor(&[45, 300, 1, 1], -0.1, 0.1)?,
        b: Some(rng.tensor(&[45], -1.0, 1.0)?),
        geometry: Conv2dGeometry::default(),
    };
    pointwise.check(Isa::detected())
}

#[test]
fn each_sample_has_the_same_bits_whatever_the_batch() -> Result<()> {
    let mut rng = Rng::new(0xba7c);
    let x = rng.tensor(&[3, 24, 15, 11], -1.0, 1.0)?;
    let w = rng.tensor(&[37, 24, 3, 3], -0.5, 0.5)?;
    let b = rng.tensor(&[37], -1.0, 1.0)?;
    for geometry in [
        Conv2dGeometry {
            padding: 1,
            stride: 1,
            dilation: 1,
        },
        Conv2dGeometry {
            padding: 1,
            stride: 2,
            dilation: 1,
        },
        Conv2dGeometry {
            padding: 2,
            stride: 1,
            dilation: 2,
        },
    ] {
        for isa in isas() {
            let kernel = Conv2dKernel::with_isa(isa, &w, Some(&b), geometry)?;
            let batched = kernel.forward(&x)?;
            for i in 0..3 {
                let alone = kernel
                    .forward(&x.narrow(0, i, 1)?)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                let in_batch = batched.narrow(0, i, 1)?.flatten_all()?.to_vec1::<f32>()?;
                assert!(
                    alone
                        .iter()
                        .zip(&in_batch)
                        .all(|(p, q)| p.to_bits() == q.to_bits()),
                    "{isa:?} {geometry:?}: sample {i} differs between batch 1 and batch 3"
                );
            }
        }
    }
    Ok(())
}

/// Fails unless the two tensors have the same shape and the same bits everywhere.
fn assert_same_bits(actual: &Tensor, expected: &Tensor, what: &str) -> Result<()> {
    assert_eq!(actual.dims(), expected.dims(), "{what}: shape");
    let a = actual.flatten_all()?.to_vec1::<f32>()?;
    let e = expected.flatten_all()?.to_vec1::<f32>()?;
    if let Some(i) = (0..a.len()).find(|&i| a[i].to_bits() != e[i].to_bits()) {
        panic!(
            "{what}: element {i} is {}, expected the bits of {}",
            a[i], e[i]
        );
    }
    Ok(())
}

impl ConvCase {
    /// The default path against the im2col path, bit for bit, and against candle.
    fn check_same_bits_as_im2col(&self, isa: Isa) -> Result<()> {
        let kernel = Conv2dKernel::with_isa(isa, &self.w, self.b.as_ref(), self.geometry)?;
        let what = format!(
            "{isa:?} x {:?} w {:?} bias {} {:?}",
            self.x.dims(),
            self.w.dims(),
            self.b.is_some(),
            self.geometry
        );
        let got = kernel.forward(&self.x)?;
        assert_same_bits(&got, &kernel.forward_im2col(&self.x)?, &what)?;
        self.check(isa)
    }
}

#[test]
fn stride_one_reads_in_place_with_the_bits_of_im2col() -> Result<()> {
    // Widths below, at and across the 32-, 16- and 8-wide tiles; tall inputs cut into several
    // bands; K across a K-block (29 · 9 = 261); Cout with row tails for every MR.
    let mut rng = Rng::new(0x5afe);
    let inputs = [
        (1, 1, 1, 1),
        (2, 3, 7, 9),
        (1, 5, 12, 31),
        (1, 29, 9, 33),
        (1, 2, 50, 7),
        (2, 4, 6, 70),
    ];
    let kernels = [(3, 3), (1, 1), (2, 3), (5, 4), (3, 1)];
    for (batch, cin, h, w) in inputs {
        for (kh, kw) in kernels {
            for (padding, dilation) in [(0, 1), (1, 1), (2, 1), (1, 2), (2, 2)] {
                let geometry = Conv2dGeometry {
                    padding,
                    stride: 1,
                    dilation,
                };
                let fits = |size: usize, k: usize| size + 2 * padding > dilation * (k - 1);
                if !fits(h, kh) || !fits(w, kw) {
                    continue;
                }
                for cout in [1, 13, 40] {
                    let case = ConvCase {
                        x: rng.tensor(&[batch, cin, h, w], -1.0, 1.0)?,
                        w: rng.tensor(&[cout, cin, kh, kw], -0.5, 0.5)?,
                        b: (cout != 13)
                            .then(|| rng.tensor(&[cout], -1.0, 1.0))
                            .transpose()?,
                        geometry,
                    };
                    for isa in isas() {
                        case.check_same_bits_as_im2col(isa)?;
                    }
                }
            }
        }
    }
    Ok(())
}

#[test]
fn wide_layers_read_in_place_with_the_bits_of_im2col() -> Result<()> {
    // Rows of several 32-wide tiles plus a tail, several bands and K-blocks (K = 40 · 9).
    let mut rng = Rng::new(0x01de);
    let case = ConvCase {
        x: rng.tensor(&[1, 40, 21, 300], -1.0, 1.0)?,
        w: rng.tensor(&[26, 40, 3, 3], -0.2, 0.2)?,
        b: Some(rng.tensor(&[26], -1.0, 1.0)?),
        geometry: Conv2dGeometry {
            padding: 1,
            stride: 1,
            dilation: 1,
        },
    };
    for isa in isas() {
        case.check_same_bits_as_im2col(isa)?;
    }
    Ok(())
}

#[test]
fn the_bits_do_not_depend_on_the_number_of_threads() -> Result<()> {
    // The thread count changes the band height of the in-place path and the GEMM's split.
    let mut rng = Rng::new(0x7ead);
    let x = rng.tensor(&[2, 19, 37, 45], -1.0, 1.0)?;
    let w = rng.tensor(&[29, 19, 3, 3], -0.5, 0.5)?;
    let b = rng.tensor(&[29], -1.0, 1.0)?;
    for geometry in [
        Conv2dGeometry {
            padding: 1,
            stride: 1,
            dilation: 1,
        },
        Conv2dGeometry {
            padding: 2,
            stride: 1,
            dilation: 2,
        },
        Conv2dGeometry {
            padding: 1,
            stride: 2,
            dilation: 1,
        },
    ] {
        for isa in isas() {
            let kernel = Conv2dKernel::with_isa(isa, &w, Some(&b), geometry)?;
            let in_pool = |threads: usize| -> Result<Tensor> {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .map_err(candle_core::Error::wrap)?;
                pool.install(|| kernel.forward(&x))
            };
            let one = in_pool(1)?;
            for threads in [2, 3, 7] {
                let what = format!("{isa:?} {geometry:?}: {threads} threads against 1");
                assert_same_bits(&in_pool(threads)?, &one, &what)?;
            }
            assert_same_bits(&one, &kernel.forward_im2col(&x)?, "1 thread against im2col")?;
        }
    }
    Ok(())
}

#[test]
fn bad_inputs_are_errors() -> Result<()> {
    let w = Tensor::zeros((4, 3, 3, 3), candle_core::DType::F32, &Device::Cpu)?;
    let kernel = Conv2dKernel::new(&w, None, Conv2dGeometry::default())?;
    let wrong_channels = Tensor::zeros((1, 2, 5, 5), candle_core::DType::F32, &Device::Cpu)?;
    assert!(kernel.forward(&wrong_channels).is_err());
    let too_small = Tensor::zeros((1, 3, 2, 5), candle_core::DType::F32, &Device::Cpu)?;
    assert!(kernel.forward(&too_small).is_err());
    let f16 = Tensor::zeros((1, 3, 5, 5), candle_core::DType::F16, &Device::Cpu)?;
    assert!(kernel.forward(&f16).is_err());
    let zero_stride = Conv2dGeometry {
        padding: 0,
        stride: 0,
        dilation: 1,
    };
    assert!(Conv2dKernel::new(&w, None, zero_stride).is_err());
    Ok(())
}
