//! Output sizes: resolution tiers, aspect ratios and explicit `WIDTHxHEIGHT`, resolved against a
//! model's limits (sides are multiples of `size_multiple` within `[min_side, max_side]`).
use crate::api::wire::openrouter::{AspectRatio, Resolution};
use crate::domain::caps::ModelCaps;
use crate::domain::request::FieldError;

/// Tier names and their side in pixels: tier T means an area of T x T.
const TIERS: [(&str, usize); 6] = [
    ("512", 512),
    ("768", 768),
    ("1K", 1024),
    ("1.5K", 1536),
    ("2K", 2048),
    ("4K", 4096),
];

/// The side of a tier name ("1K", "1k", "1.5K", "512", ...), case-insensitive.
pub fn tier_side(name: &str) -> Option<usize> {
    TIERS
        .iter()
        .find(|(tier, _)| tier.eq_ignore_ascii_case(name))
        .map(|&(_, side)| side)
}

pub fn resolution_side(resolution: Resolution) -> usize {
    // Every `Resolution` value is a tier name, so the lookup cannot miss.
    tier_side(resolution.as_str()).unwrap_or(1024)
}

/// `w / h` of a ratio "w:h" with positive finite parts ("16:9", "2.35:1", "9:19.5").
pub fn parse_ratio(text: &str) -> Option<f64> {
    let (w, h) = text.split_once(':')?;
    let w: f64 = w.trim().parse().ok()?;
    let h: f64 = h.trim().parse().ok()?;
    (w.is_finite() && h.is_finite() && w > 0.0 && h > 0.0).then(|| w / h)
}

/// `w / h` of an aspect ratio; `None` for `auto` (the model's native ratio).
pub fn aspect_ratio_value(aspect_ratio: AspectRatio) -> Option<f64> {
    parse_ratio(aspect_ratio.as_str())
}

/// Width and height of an explicit "WIDTHxHEIGHT" (`x` or `X`).
pub fn parse_pixels(text: &str) -> Option<(usize, usize)> {
    let (w, h) = text.split_once(['x', 'X'])?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(w) || !digits(h) {
        return None;
    }
    Some((w.parse().ok()?, h.parse().ok()?))
}

/// Smallest and largest side the model can produce that are multiples of its size step.
fn side_bounds(caps: &ModelCaps) -> (usize, usize) {
    let m = caps.size_multiple.max(1);
    let lo = caps.min_side.div_ceil(m).max(1) * m;
    let hi = (caps.max_side / m * m).max(lo);
    (lo, hi)
}

/// The size with area about `area` pixels and ratio `ratio` (= w / h): both sides multiples of
/// the model's step, within its limits. When a side would exceed the maximum both sides shrink
/// together (and grow together below the minimum), so the ratio is kept unless no size within
/// the limits has it; rounding picks, among the nearest multiples, the pair closest in ratio.
pub fn dims_for_area(area: f64, ratio: f64, caps: &ModelCaps) -> (usize, usize) {
    let m = caps.size_multiple.max(1) as f64;
    let (lo, hi) = side_bounds(caps);
    let (lo_f, hi_f) = (lo as f64, hi as f64);
    let mut h = (area / ratio).sqrt();
    let mut w = h * ratio;
    let down = (hi_f / w.max(h)).min(1.0);
    w *= down;
    h *= down;
    let up = (lo_f / w.min(h)).max(1.0);
    w *= up;
    h *= up;
    let candidates = |x: f64| {
        let below = ((x / m).floor() * m).clamp(lo_f, hi_f);
        let above = ((x / m).ceil() * m).clamp(lo_f, hi_f);
        [below, above]
    };
    let target = ratio.ln();
    let mut best = (lo_f, lo_f);
    let mut best_score = (f64::INFINITY, f64::INFINITY);
    for cw in candidates(w) {
        for ch in candidates(h) {
            let score = ((cw / ch).ln() - target).abs();
            let area_miss = (cw * ch - area).abs();
            // Ratio first; among equal ratios the closer area.
            if (score, area_miss) < best_score {
                best_score = (score, area_miss);
                best = (cw, ch);
            }
        }
    }
    (best.0 as usize, best.1 as usize)
}

/// Checks an explicit size against the model: multiples of the step, within the limits.
pub fn check_pixels(
    field: &str,
    text: &str,
    caps: &ModelCaps,
) -> Result<(usize, usize), FieldError> {
    let Some((w, h)) = parse_pixels(text) else {
        return Err(FieldError::new(
            field,
            format!("must be WIDTHxHEIGHT (e.g. \"1024x768\"), got \"{text}\""),
        ));
    };
    let m = caps.size_multiple.max(1);
    for (side, value) in [("width", w), ("height", h)] {
        if value % m != 0 || value == 0 {
            return Err(FieldError::new(
                field,
                format!(
                    "{side} must be a positive multiple of {m} for model {}, got {value} (in \"{text}\")",
                    caps.id
                ),
            ));
        }
        if value < caps.min_side || value > caps.max_side {
            return Err(FieldError::new(
                field,
                format!(
                    "{side} must be between {} and {} for model {}, got {value} (in \"{text}\")",
                    caps.min_side, caps.max_side, caps.id
                ),
            ));
        }
    }
    Ok((w, h))
}

/// What the OpenRouter `size` field holds.
enum SizeField {
    Tier(usize),
    Pixels(usize, usize),
}

/// Resolves OpenRouter's `size`, `resolution` and `aspect_ratio` to pixels for `caps`.
///
/// Explicit pixels are authoritative (a `resolution` or `aspect_ratio` that disagrees beyond one
/// size step per side is a 400); a tier in `size` is a `resolution` (two different tiers are a
/// 400). A tier T with ratio r gives area T² at ratio r; a ratio alone keeps the model's native
/// area; a tier alone (or `auto`) keeps the native ratio; nothing gives the native size.
pub fn resolve_openrouter_size(
    size: Option<&str>,
    resolution: Option<Resolution>,
    aspect_ratio: Option<AspectRatio>,
    caps: &ModelCaps,
) -> Result<(usize, usize), FieldError> {
    let size_field = match size {
        None => None,
        Some(text) => Some(if let Some(side) = tier_side(text) {
            SizeField::Tier(side)
        } else if parse_pixels(text).is_some() {
            let (w, h) = check_pixels("size", text, caps)?;
            SizeField::Pixels(w, h)
        } else {
            return Err(FieldError::new(
                "size",
                format!(
                    "must be a tier (512, 768, 1K, 1.5K, 2K, 4K) or WIDTHxHEIGHT, got \"{text}\""
                ),
            ));
        }),
    };
    let ratio = aspect_ratio.and_then(aspect_ratio_value);
    let m = caps.size_multiple.max(1) as f64;

    if let Some(SizeField::Pixels(w, h)) = size_field {
        let (wf, hf) = (w as f64, h as f64);
        let text = size.unwrap_or_default();
        if let Some(resolution) = resolution {
            let side = resolution_side(resolution) as f64;
            let tolerance = m * (wf + hf) + m * m;
            if (wf * hf - side * side).abs() > tolerance {
                return Err(FieldError::new(
                    "resolution",
                    format!(
                        "\"{resolution}\" means about {0}x{0} = {1} pixels but size \"{text}\" has {2}; \
                         send one of them, or a matching pair",
                        side as usize,
                        (side * side) as usize,
                        w * h
                    ),
                ));
            }
        }
        if let (Some(ratio), Some(aspect_ratio)) = (ratio, aspect_ratio) {
            let tolerance = m / wf + m / hf;
            if ((wf / hf) / ratio - 1.0).abs() > tolerance {
                return Err(FieldError::new(
                    "aspect_ratio",
                    format!(
                        "\"{aspect_ratio}\" disagrees with size \"{text}\" (ratio {:.3} vs {:.3}); \
                         send one of them, or a matching pair",
                        ratio,
                        wf / hf
                    ),
                ));
            }
        }
        return Ok((w, h));
    }

    let tier = match (size_field, resolution) {
        (Some(SizeField::Tier(from_size)), Some(resolution)) => {
            let side = resolution_side(resolution);
            if side != from_size {
                return Err(FieldError::new(
                    "resolution",
                    format!(
                        "\"{resolution}\" disagrees with size \"{}\"; send one of them",
                        size.unwrap_or_default()
                    ),
                ));
            }
            Some(side)
        }
        (Some(SizeField::Tier(side)), None) => Some(side),
        (_, Some(resolution)) => Some(resolution_side(resolution)),
        _ => None,
    };
    if tier.is_none() && ratio.is_none() {
        return Ok((caps.default_width, caps.default_height));
    }
    let native_area = (caps.default_width * caps.default_height) as f64;
    let native_ratio = caps.default_width as f64 / caps.default_height as f64;
    let area = tier.map_or(native_area, |t| (t * t) as f64);
    Ok(dims_for_area(area, ratio.unwrap_or(native_ratio), caps))
}

/// Resolves OpenAI's `size`: "auto" (or absent) is the model's native size, else WIDTHxHEIGHT.
pub fn resolve_openai_size(
    size: Option<&str>,
    caps: &ModelCaps,
) -> Result<(usize, usize), FieldError> {
    match size {
        None | Some("auto") => Ok((caps.default_width, caps.default_height)),
        Some(text) if parse_pixels(text).is_some() => check_pixels("size", text, caps),
        Some(text) => Err(FieldError::new(
            "size",
            format!("must be \"auto\" or WIDTHxHEIGHT (e.g. \"1024x1024\"), got \"{text}\""),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::request::test_caps;

    /// min_side 256, max_side 1024, multiple 8, native 512x512.
    fn caps() -> ModelCaps {
        test_caps()
    }

    fn assert_valid(caps: &ModelCaps, (w, h): (usize, usize)) {
        for side in [w, h] {
            assert_eq!(side % caps.size_multiple, 0, "{w}x{h}");
            assert!(
                (caps.min_side..=caps.max_side).contains(&side),
                "{w}x{h} outside [{}, {}]",
                caps.min_side,
                caps.max_side
            );
        }
    }

    #[test]
    fn acceptance_512_at_16_9() {
        let caps = caps();
        let (w, h) = resolve_openrouter_size(
            None,
            Some(Resolution::R512),
            Some(AspectRatio::R16x9),
            &caps,
        )
        .expect("valid");
        assert_valid(&caps, (w, h));
        let ratio = w as f64 / h as f64;
        assert!((ratio / (16.0 / 9.0) - 1.0).abs() < 0.03, "{w}x{h}");
        let area = (w * h) as f64;
        assert!((area / (512.0 * 512.0) - 1.0).abs() < 0.15, "{w}x{h}");
        assert_eq!((w, h), (680, 384));
    }

    #[test]
    fn every_ratio_and_tier_gives_a_valid_size_near_the_ratio() {
        let caps = caps();
        let (lo, hi) = (caps.min_side as f64, caps.max_side as f64);
        for &tier in Resolution::ALL {
            for &ar in AspectRatio::ALL {
                let (w, h) = resolve_openrouter_size(None, Some(tier), Some(ar), &caps)
                    .unwrap_or_else(|e| panic!("{tier} {ar}: {e}"));
                assert_valid(&caps, (w, h));
                let Some(r) = aspect_ratio_value(ar) else {
                    assert_eq!(w, h, "auto keeps the native 1:1 ratio");
                    continue;
                };
                let got = w as f64 / h as f64;
                // The closest ratio the limits allow: clamp the ratio to [lo/hi, hi/lo].
                let reachable = r.clamp(lo / hi, hi / lo);
                let step = caps.size_multiple as f64;
                let tolerance = step / w as f64 + step / h as f64;
                assert!(
                    (got / reachable - 1.0).abs() <= tolerance,
                    "{tier} {ar}: {w}x{h} ratio {got} vs {reachable}"
                );
                // The area is the tier's unless a limit forced the size down or up.
                let side = resolution_side(tier) as f64;
                let ideal_h = (side * side / r).sqrt();
                let ideal_w = ideal_h * r;
                if [ideal_w, ideal_h].iter().all(|s| (lo..=hi).contains(s)) {
                    let area = (w * h) as f64;
                    assert!(
                        (area / (side * side) - 1.0).abs() < 0.1,
                        "{tier} {ar}: {w}x{h}"
                    );
                }
            }
        }
    }

    #[test]
    fn unusual_ratios_parse() {
        assert_eq!(parse_ratio("2.35:1"), Some(2.35));
        assert!((parse_ratio("9:19.5").expect("ratio") - 9.0 / 19.5).abs() < 1e-12);
        assert_eq!(parse_ratio("19.5:9"), Some(19.5 / 9.0));
        assert_eq!(parse_ratio("auto"), None);
        assert_eq!(parse_ratio("0:1"), None);
        for &ar in AspectRatio::ALL {
            assert_eq!(
                aspect_ratio_value(ar).is_none(),
                ar == AspectRatio::Auto,
                "{ar}"
            );
        }
    }

    #[test]
    fn clamping_keeps_the_ratio() {
        let caps = caps();
        // 4K at 16:9 is far above max_side 1024: both sides shrink together.
        let (w, h) = dims_for_area(4096.0 * 4096.0, 16.0 / 9.0, &caps);
        assert_eq!((w, h), (1024, 576));
        // 2.35:1 at 2K: width hits 1024, height follows.
        let (w, h) = dims_for_area(2048.0 * 2048.0, 2.35, &caps);
        assert_eq!(w, 1024);
        assert!(((w as f64 / h as f64) / 2.35 - 1.0).abs() < 0.02, "{w}x{h}");
        // 8:1 cannot fit in [256, 1024]: the closest reachable is 4:1.
        assert_eq!(dims_for_area(512.0 * 512.0, 8.0, &caps), (1024, 256));
        assert_eq!(dims_for_area(512.0 * 512.0, 1.0 / 8.0, &caps), (256, 1024));
    }

    #[test]
    fn defaults_and_auto() {
        let caps = caps();
        assert_eq!(
            resolve_openrouter_size(None, None, None, &caps),
            Ok((512, 512))
        );
        assert_eq!(
            resolve_openrouter_size(None, None, Some(AspectRatio::Auto), &caps),
            Ok((512, 512))
        );
        // A ratio alone keeps the native area.
        let (w, h) =
            resolve_openrouter_size(None, None, Some(AspectRatio::R2x1), &caps).expect("valid");
        assert_eq!((w, h), (720, 360));
        assert_eq!(
            resolve_openrouter_size(None, Some(Resolution::R768), None, &caps),
            Ok((768, 768))
        );
        // A tier in `size` is a resolution, case-insensitive.
        assert_eq!(
            resolve_openrouter_size(Some("1k"), None, Some(AspectRatio::R1x1), &caps),
            Ok((1024, 1024))
        );
        assert_eq!(
            resolve_openrouter_size(Some("1K"), Some(Resolution::R1K), None, &caps),
            Ok((1024, 1024))
        );
        assert_eq!(resolve_openai_size(Some("auto"), &caps), Ok((512, 512)));
        assert_eq!(resolve_openai_size(None, &caps), Ok((512, 512)));
        assert_eq!(
            resolve_openai_size(Some("1024x512"), &caps),
            Ok((1024, 512))
        );
    }

    #[test]
    fn explicit_pixels_are_authoritative() {
        let caps = caps();
        assert_eq!(
            resolve_openrouter_size(Some("1024x576"), None, Some(AspectRatio::R16x9), &caps),
            Ok((1024, 576))
        );
        assert_eq!(
            resolve_openrouter_size(Some("1024x1024"), Some(Resolution::R1K), None, &caps),
            Ok((1024, 1024))
        );
        assert_eq!(
            resolve_openrouter_size(
                Some("680x384"),
                Some(Resolution::R512),
                Some(AspectRatio::R16x9),
                &caps
            ),
            Ok((680, 384))
        );
        assert_eq!(
            resolve_openrouter_size(Some("512x512"), None, Some(AspectRatio::Auto), &caps),
            Ok((512, 512))
        );
    }

    /// (size, resolution, aspect_ratio, field named, words the message must contain)
    #[test]
    fn rejections_name_the_field_the_bound_and_the_value() {
        let caps = caps();
        type Case = (
            Option<&'static str>,
            Option<Resolution>,
            Option<AspectRatio>,
            &'static str,
            &'static [&'static str],
        );
        let cases: &[Case] = &[
            (
                Some("1001x1000"),
                None,
                None,
                "size",
                &["width", "multiple of 8", "1001"],
            ),
            (
                Some("1000x1001"),
                None,
                None,
                "size",
                &["height", "multiple of 8", "1001"],
            ),
            (
                Some("2048x1024"),
                None,
                None,
                "size",
                &["width", "1024", "2048"],
            ),
            (
                Some("128x512"),
                None,
                None,
                "size",
                &["width", "256", "128"],
            ),
            (
                Some("0x512"),
                None,
                None,
                "size",
                &["width", "multiple of 8", "0"],
            ),
            (
                Some("big"),
                None,
                None,
                "size",
                &["WIDTHxHEIGHT", "\"big\""],
            ),
            (
                Some("1024*1024"),
                None,
                None,
                "size",
                &["WIDTHxHEIGHT", "1024*1024"],
            ),
            (Some("3K"), None, None, "size", &["1K", "\"3K\""]),
            (
                Some("1024x1024"),
                Some(Resolution::R512),
                None,
                "resolution",
                &["\"512\"", "262144", "1048576", "1024x1024"],
            ),
            (
                Some("1024x1024"),
                None,
                Some(AspectRatio::R16x9),
                "aspect_ratio",
                &["16:9", "1024x1024"],
            ),
            (
                Some("1K"),
                Some(Resolution::R2K),
                None,
                "resolution",
                &["\"2K\"", "\"1K\""],
            ),
        ];
        for (size, resolution, aspect_ratio, field, words) in cases {
            let err = resolve_openrouter_size(*size, *resolution, *aspect_ratio, &caps)
                .expect_err(&format!("{size:?} {resolution:?} {aspect_ratio:?}"));
            assert_eq!(err.field, *field, "{err}");
            assert!(err.message.contains(field), "{err}");
            for word in *words {
                assert!(err.message.contains(word), "{err} lacks {word}");
            }
        }
        let err = resolve_openai_size(Some("1K"), &caps).expect_err("tier on /v1");
        assert!(err.field == "size" && err.message.contains("auto"), "{err}");
        let err = resolve_openai_size(Some("1020x1024"), &caps).expect_err("not a multiple");
        assert!(
            err.message.contains("multiple of 8") && err.message.contains("1020"),
            "{err}"
        );
    }
}
