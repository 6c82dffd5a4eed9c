//! Element-wise math written so that loops over slices auto-vectorise (no libm calls, no
//! branches the compiler cannot turn into selects).

/// e^x for f32 within about 2 ulp, branch-free so a loop calling it vectorises.
///
/// x = n ln2 + r with |r| <= ln2 / 2 (ln2 split in two for an exact reduction), e^r by its
/// degree-7 Taylor polynomial (truncation 5e-9 relative), scaled by 2^n built from the exponent
/// bits. Inputs are clamped to [-87.3, 88.3] so 2^n stays a normal float: below, e^x rounds to
/// ~1e-38 instead of 0 or a subnormal; above, it saturates near 2^127.4 (used as 1 + e^x in a
/// denominator, both are harmless). NaN passes through.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln2 = LN2_HI + LN2_LO with LN2_HI = 355/512 exact in 9 bits, so n * LN2_HI is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits.
    const ROUNDER: f32 = 12_582_912.0;
    // Written as comparisons (not f32::clamp) so NaN falls through unchanged.
    let x = if x < -87.3 { -87.3 } else { x };
    let x = if x > 88.3 { 88.3 } else { x };

    let shifted = x * LOG2_E + ROUNDER;
    let n = shifted - ROUNDER;
    let n_int = shifted.to_bits().wrapping_sub(ROUNDER.to_bits()) as i32;
    let r = (x - n * LN2_HI) - n * LN2_LO;

    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;

    let two_pow_n = f32::from_bits(((n_int + 127) as u32) << 23);
    p * two_pow_n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_a_few_ulp_over_the_normal_range() {
        let mut worst = 0f64;
        let steps = 2_000_000;
        for i in 0..=steps {
            let x = -87.0 + 175.0 * i as f32 / steps as f32;
            let exact = f64::from(x).exp();
            let rel = ((f64::from(exp_f32(x)) - exact) / exact).abs();
            worst = worst.max(rel);
        }
        println!("exp_f32 worst relative error {worst:e}");
        // f32 epsilon is 1.19e-7: stay within 2.5 ulp.
        assert!(worst < 3.0e-7, "worst relative error {worst:e}");
    }

    #[test]
    fn exp_edge_values() {
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(f32::NAN).is_nan());
        assert!(exp_f32(-1000.0) < 1.0e-37 && exp_f32(-1000.0) >= 0.0);
        assert!(exp_f32(1000.0) > 1.0e38 && exp_f32(1000.0).is_finite());
        assert!(exp_f32(f32::NEG_INFINITY) < 1.0e-37);
    }
}
