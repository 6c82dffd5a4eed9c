//! Which providers a request may go to, and in what order, from OpenRouter's `provider`
//! preferences. The default order is `local` first (no network hop), then the providers file's
//! order. `only` keeps, `ignore` drops; `order` puts its slugs first. With `allow_fallbacks: false`
//! the request goes only to the slugs `order` names (tried in that order), or, without `order`, to
//! the first provider alone; otherwise the rest follow. Slugs match case-insensitively; slugs that
//! serve nothing here are ignored, as OpenRouter does.
use crate::api::wire::openrouter::ImageGenerationProviderPreferences as Preferences;
use crate::domain::request::FieldError;

/// Orders `serving` (the slugs serving `model`, in the default order) by the preferences; an empty
/// result is a 400 naming the preference that left no provider.
pub fn choose(
    model: &str,
    serving: &[&str],
    preferences: Option<&Preferences>,
) -> Result<Vec<usize>, FieldError> {
    let all: Vec<usize> = (0..serving.len()).collect();
    let Some(prefs) = preferences else {
        return Ok(all);
    };
    let named = |list: &[String], i: usize| list.iter().any(|s| s.eq_ignore_ascii_case(serving[i]));
    let served_by = || format!("{model} is served by {}", serving.join(", "));

    let mut candidates = all;
    if let Some(only) = prefs.only.as_deref().filter(|only| !only.is_empty()) {
        candidates.retain(|&i| named(only, i));
        if candidates.is_empty() {
            return Err(FieldError::new(
                "provider.only",
                format!(
                    "{only:?} excludes every provider of this model: {}",
                    served_by()
                ),
            ));
        }
    }
    if let Some(ignore) = prefs.ignore.as_deref() {
        candidates.retain(|&i| !named(ignore, i));
        if candidates.is_empty() {
            return Err(FieldError::new(
                "provider.ignore",
                format!(
                    "{ignore:?} ignores every provider of this model: {}",
                    served_by()
                ),
            ));
        }
    }
    let fallbacks = prefs.allow_fallbacks != Some(false);
    match prefs.order.as_deref().filter(|order| !order.is_empty()) {
        Some(order) => {
            let mut ordered: Vec<usize> = Vec::new();
            for slug in order {
                if let Some(&i) = candidates
                    .iter()
                    .find(|&&i| slug.eq_ignore_ascii_case(serving[i]))
                {
                    if !ordered.contains(&i) {
                        ordered.push(i);
                    }
                }
            }
            if fallbacks {
                ordered.extend(
                    candidates
                        .iter()
                        .filter(|i| !ordered.contains(i))
                        .copied()
                        .collect::<Vec<_>>(),
                );
            } else if ordered.is_empty() {
                return Err(FieldError::new(
                    "provider.order",
                    format!(
                        "with allow_fallbacks false, {order:?} leaves no provider: {}",
                        served_by()
                    ),
                ));
            }
            Ok(ordered)
        }
        None if !fallbacks => Ok(candidates.into_iter().take(1).collect()),
        None => Ok(candidates),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefs(json: serde_json::Value) -> Preferences {
        serde_json::from_value(json).expect("preferences")
    }

    fn slugs<'a>(serving: &[&'a str], json: serde_json::Value) -> Result<Vec<&'a str>, String> {
        choose("m", serving, Some(&prefs(json)))
            .map(|order| order.into_iter().map(|i| serving[i]).collect())
            .map_err(|e| e.message)
    }

    const SERVING: [&str; 3] = ["local", "dead", "good"];

    #[test]
    fn default_order_and_filters() {
        assert_eq!(choose("m", &SERVING, None).unwrap(), vec![0, 1, 2]);
        assert_eq!(
            slugs(&SERVING, serde_json::json!({"only": ["GOOD", "dead"]})).unwrap(),
            ["dead", "good"]
        );
        assert_eq!(
            slugs(&SERVING, serde_json::json!({"ignore": ["local"]})).unwrap(),
            ["dead", "good"]
        );
        assert_eq!(
            slugs(&SERVING, serde_json::json!({"allow_fallbacks": false})).unwrap(),
            ["local"]
        );
    }

    #[test]
    fn order_puts_its_slugs_first_and_fallbacks_follow() {
        assert_eq!(
            slugs(&SERVING, serde_json::json!({"order": ["dead", "good"]})).unwrap(),
            ["dead", "good", "local"]
        );
        assert_eq!(
            slugs(
                &SERVING,
                serde_json::json!({"order": ["good", "nowhere", "dead"], "allow_fallbacks": false})
            )
            .unwrap(),
            ["good", "dead"]
        );
        assert_eq!(
            slugs(
                &SERVING,
                serde_json::json!({"order": ["dead"], "allow_fallbacks": false})
            )
            .unwrap(),
            ["dead"]
        );
    }

    #[test]
    fn preferences_that_leave_nothing_name_their_field() {
        for (json, field) in [
            (serde_json::json!({"only": ["openai"]}), "provider.only"),
            (
                serde_json::json!({"ignore": ["local", "dead", "good"]}),
                "provider.ignore",
            ),
            (
                serde_json::json!({"order": ["openai"], "allow_fallbacks": false}),
                "provider.order",
            ),
        ] {
            let err = choose("m", &SERVING, Some(&prefs(json))).unwrap_err();
            assert_eq!(err.field, field);
            assert!(err.message.contains("local, dead, good"), "{}", err.message);
        }
    }
}
