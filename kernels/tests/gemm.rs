//! The packed GEMM against the f64 triple loop, every microkernel against the others (bit for
//! bit), and the determinism promise: a row's bits do not depend on M, N or the thread count.

mod common;

use common::Rng;
use imago_kernels::{
    gemm, gemm_reference, Bias, GemmOutput, Isa, KMajor, LaneMajor, PackedMatrix, PanelSource,
};

fn isas() -> Vec<Isa> {
    [Isa::Portable, Isa::Avx2, Isa::Avx512]
        .into_iter()
        .filter(|i| i.is_available())
        .collect()
}

fn random(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect()
}

/// Which way each operand reaches the driver.
#[derive(Clone, Copy, Debug)]
enum Feed {
    /// A row-major and B row-major, packed on the fly.
    OnTheFly,
    /// Both packed beforehand.
    Prepacked,
    /// A packed beforehand, B given as its transpose (how a linear layer's weight comes).
    BTransposedPrepacked,
}

struct Case {
    m: usize,
    k: usize,
    n: usize,
    a: Vec<f32>,
    b: Vec<f32>,
}

impl Case {
    fn new(rng: &mut Rng, m: usize, k: usize, n: usize) -> Self {
        Self {
            m,
            k,
            n,
            a: random(rng, m * k),
            b: random(rng, k * n),
        }
    }

    fn b_transposed(&self) -> Vec<f32> {
        let mut t = vec![0f32; self.k * self.n];
        for p in 0..self.k {
            for j in 0..self.n {
                t[j * self.k + p] = self.b[p * self.n + j];
            }
        }
        t
    }

    fn run(&self, isa: Isa, feed: Feed, bias: Bias<'_>, c_old: Option<&[f32]>) -> Vec<f32> {
        let (m, k, n) = (self.m, self.k, self.n);
        let mut c = c_old.map_or_else(|| vec![f32::NAN; m * n], <[f32]>::to_vec);
        let out = GemmOutput::new(&mut c, m, n, n).unwrap();
        let a_rows = LaneMajor::new(&self.a, k, m, k).unwrap();
        let b_rows = KMajor::new(&self.b, k, n, n).unwrap();
        let bt = self.b_transposed();
        let (a_packed, b_packed);
        let (a, b): (&dyn PanelSource, &dyn PanelSource) = match feed {
            Feed::OnTheFly => (&a_rows, &b_rows),
            Feed::Prepacked => {
                a_packed = PackedMatrix::pack_a(isa, &self.a, m, k).unwrap();
                b_packed = PackedMatrix::pack_b(isa, &self.b, k, n).unwrap();
                (&a_packed, &b_packed)
            }
            Feed::BTransposedPrepacked => {
                a_packed = PackedMatrix::pack_a(isa, &self.a, m, k).unwrap();
                b_packed = PackedMatrix::pack_b_transposed(isa, &bt, n, k).unwrap();
                (&a_packed, &b_packed)
            }
        };
        gemm(isa, a, b, out, bias, c_old.is_some()).unwrap();
        c
    }

    /// Checks `c` against the f64 reference within the classic bound for a sum of K + 2 terms
    /// in f32: |error| <= gamma(K + 2) * sum |terms|, gamma(n) = n u / (1 - n u), u = 2^-24.
    fn check(&self, c: &[f32], bias: Bias<'_>, c_old: Option<&[f32]>, what: &str) {
        let (m, k, n) = (self.m, self.k, self.n);
        let expected = gemm_reference(&self.a, &self.b, (m, k, n), bias, c_old).unwrap();
        let abs = |v: &[f32]| v.iter().map(|x| x.abs()).collect::<Vec<_>>();
        let bias_abs = match bias {
            Bias::None => Vec::new(),
            Bias::PerRow(v) | Bias::PerColumn(v) => abs(v),
        };
        let abs_bias = match bias {
            Bias::None => Bias::None,
            Bias::PerRow(_) => Bias::PerRow(&bias_abs),
            Bias::PerColumn(_) => Bias::PerColumn(&bias_abs),
        };
        let old_abs = c_old.map(abs);
        let magnitude = gemm_reference(
            &abs(&self.a),
            &abs(&self.b),
            (m, k, n),
            abs_bias,
            old_abs.as_deref(),
        )
        .unwrap();
        let u = f64::from(f32::EPSILON) / 2.0;
        let terms = (k + 2) as f64;
        let gamma = terms * u / (1.0 - terms * u);
        for i in 0..m * n {
            let err = (f64::from(c[i]) - f64::from(expected[i])).abs();
            // + half an ulp of the reference's own final rounding to f32.
            let bound = gamma * f64::from(magnitude[i]) + u * f64::from(expected[i]).abs();
            assert!(
                err <= bound,
                "{what}: element ({}, {}) is {}, expected {} (error {err:e} > bound {bound:e})",
                i / n,
                i % n,
                c[i],
                expected[i]
            );
        }
    }
}

const SHAPES: [(usize, usize, usize); 9] = [
    (1, 1, 1),
    (1, 7, 33),
    (5, 3, 2),
    (13, 17, 31),
    (12, 256, 32),
    (25, 300, 65),
    (37, 513, 100),
    (130, 64, 300),
    (6, 1030, 17),
];

#[test]
fn every_microkernel_and_feed_matches_the_reference() {
    let mut rng = Rng::new(0x6e77);
    for (m, k, n) in SHAPES {
        let case = Case::new(&mut rng, m, k, n);
        let row_bias = random(&mut rng, m);
        let col_bias = random(&mut rng, n);
        let old = random(&mut rng, m * n);
        for isa in isas() {
            for feed in [Feed::OnTheFly, Feed::Prepacked, Feed::BTransposedPrepacked] {
                let cases = [
                    (Bias::None, None),
                    (Bias::PerRow(&row_bias), None),
                    (Bias::PerColumn(&col_bias), Some(old.as_slice())),
                    (Bias::None, Some(old.as_slice())),
                ];
                for (bias, c_old) in cases {
                    let c = case.run(isa, feed, bias, c_old);
                    let what = format!(
                        "{m}x{k}x{n} {isa:?} {feed:?} {bias:?} accumulate {}",
                        c_old.is_some()
                    );
                    case.check(&c, bias, c_old, &what);
                }
            }
        }
    }
}

#[test]
fn all_microkernels_give_the_same_bits() {
    let mut rng = Rng::new(0xb175);
    for (m, k, n) in SHAPES {
        let case = Case::new(&mut rng, m, k, n);
        let bias = random(&mut rng, n);
        let portable = case.run(Isa::Portable, Feed::OnTheFly, Bias::PerColumn(&bias), None);
        for isa in isas() {
            let c = case.run(isa, Feed::Prepacked, Bias::PerColumn(&bias), None);
            assert!(
                c.iter()
                    .zip(&portable)
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "{m}x{k}x{n}: {isa:?} differs from the portable kernel"
            );
        }
    }
}

/// Runs `f` on a rayon pool of `threads` threads.
fn with_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

#[test]
fn a_row_has_the_same_bits_whatever_m_n_and_threads() {
    let mut rng = Rng::new(0xde7e);
    let (k, n) = (700, 300);
    let rows = random(&mut rng, 130 * k);
    let b = random(&mut rng, k * n);
    let bias = random(&mut rng, n);
    // The row of interest is row 0 of the M = 1 call and row 5 of the M = 7 and M = 130 calls.
    let probe = &rows[5 * k..6 * k];
    for isa in isas() {
        let b_packed = PackedMatrix::pack_b(isa, &b, k, n).unwrap();
        let row_in = |a: &[f32], m: usize, at: usize, threads: usize| -> Vec<f32> {
            with_threads(threads, || {
                let mut c = vec![0f32; m * n];
                let a = LaneMajor::new(a, k, m, k).unwrap();
                let out = GemmOutput::new(&mut c, m, n, n).unwrap();
                gemm(isa, &a, &b_packed, out, Bias::PerColumn(&bias), false).unwrap();
                c[at * n..(at + 1) * n].to_vec()
            })
        };
        let alone = row_in(probe, 1, 0, 1);
        for threads in [1, 2] {
            for m in [1, 7, 130] {
                let got = if m == 1 {
                    row_in(probe, 1, 0, threads)
                } else {
                    row_in(&rows[..m * k], m, 5, threads)
                };
                assert!(
                    got.iter()
                        .zip(&alone)
                        .all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{isa:?}: row differs inside M = {m} on {threads} threads"
                );
            }
            // Fewer columns: the first 40 columns of the same product.
            let b_narrow: Vec<f32> = (0..k).flat_map(|p| b[p * n..p * n + 40].to_vec()).collect();
            let mut c = vec![0f32; 40];
            let out = GemmOutput::new(&mut c, 1, 40, 40).unwrap();
            let a = LaneMajor::new(probe, k, 1, k).unwrap();
            let b_src = KMajor::new(&b_narrow, k, 40, 40).unwrap();
            with_threads(threads, || {
                gemm(isa, &a, &b_src, out, Bias::PerColumn(&bias[..40]), false)
            })
            .unwrap();
            assert!(
                c.iter()
                    .zip(&alone)
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "{isa:?}: row differs with N = 40 on {threads} threads"
            );
        }
    }
}

#[test]
fn mismatched_operands_are_errors() {
    let a = vec![0f32; 6];
    assert!(
        LaneMajor::new(&a, 4, 2, 4).is_err(),
        "2 x 4 does not fit in 6 values"
    );
    let a = LaneMajor::new(&a, 3, 2, 3).unwrap();
    let b_data = vec![0f32; 8];
    let b = KMajor::new(&b_data, 4, 2, 2).unwrap();
    let mut c = vec![0f32; 4];
    let out = GemmOutput::new(&mut c, 2, 2, 2).unwrap();
    assert!(
        gemm(Isa::Portable, &a, &b, out, Bias::None, false).is_err(),
        "depth 3 vs 4"
    );
    let b = KMajor::new(&b_data, 3, 2, 2).unwrap();
    let out = GemmOutput::new(&mut c, 2, 2, 2).unwrap();
    assert!(
        gemm(Isa::Portable, &a, &b, out, Bias::PerRow(&[1.0]), false).is_err(),
        "1 bias for 2 rows"
    );
}
