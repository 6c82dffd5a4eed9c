//! API keys: `Authorization: Bearer <key>`, compared in constant time; per-key model allow-lists,
//! image quotas and request rates (counted in memory: a restart resets them).
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};
use subtle::ConstantTimeEq;

use crate::config::ApiKey;
use crate::error::ApiError;

/// The window of `rate_per_minute`.
const RATE_WINDOW: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, Default)]
pub struct Auth {
    keys: Vec<ApiKey>,
    /// What each key (by its index in `keys`) has used.
    usage: Arc<Mutex<HashMap<usize, KeyUsage>>>,
}

#[derive(Debug, Default)]
struct KeyUsage {
    images: u64,
    /// Admission times of the requests of the last `RATE_WINDOW`, oldest first.
    recent: VecDeque<Instant>,
}

/// Who is calling: `None` when the server requires no key.
#[derive(Clone, Debug)]
pub struct Caller {
    pub key: Option<ApiKey>,
    /// The key's index in the server's key list (its usage counters).
    index: usize,
}

impl Caller {
    pub fn name(&self) -> &str {
        self.key.as_ref().map_or("anonymous", |k| k.name.as_str())
    }

    /// 403 when the key has an allow-list without this model.
    pub fn check_model(&self, model: &str) -> Result<(), ApiError> {
        match self.key.as_ref().and_then(|k| k.models.as_ref()) {
            Some(allowed) if !allowed.iter().any(|m| m == model) => {
                Err(ApiError::ModelNotAllowed(model.to_string()))
            }
            _ => Ok(()),
        }
    }
}

impl Auth {
    pub fn new(keys: Vec<ApiKey>) -> Self {
        Self {
            keys,
            usage: Arc::default(),
        }
    }

    /// Admits a generation of `images` images by `caller` at `now`: 402 past the key's
    /// `quota_images`, 429 with the seconds to wait past its `rate_per_minute`; otherwise counts it.
    pub fn admit(&self, caller: &Caller, images: u64, now: Instant) -> Result<(), ApiError> {
        let Some(key) = &caller.key else {
            return Ok(());
        };
        let limits = key.limits;
        if limits.quota_images.is_none() && limits.rate_per_minute.is_none() {
            return Ok(());
        }
        let mut usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        let used = usage.entry(caller.index).or_default();
        if let Some(quota) = limits.quota_images {
            if used.images.saturating_add(images) > quota {
                return Err(ApiError::QuotaExceeded {
                    key: key.name.clone(),
                    quota,
                    used: used.images,
                    requested: images,
                });
            }
        }
        if let Some(limit) = limits.rate_per_minute {
            while used
                .recent
                .front()
                .is_some_and(|&t| now.saturating_duration_since(t) >= RATE_WINDOW)
            {
                used.recent.pop_front();
            }
            if used.recent.len() >= limit as usize {
                let oldest = used.recent.front().copied().unwrap_or(now);
                let wait = RATE_WINDOW.saturating_sub(now.saturating_duration_since(oldest));
                return Err(ApiError::RateLimited {
                    key: key.name.clone(),
                    limit,
                    retry_after_s: wait.as_secs_f64().ceil().max(1.0) as u64,
                });
            }
            used.recent.push_back(now);
        }
        used.images = used.images.saturating_add(images);
        Ok(())
    }

    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        if self.is_open() {
            return Ok(Caller {
                key: None,
                index: 0,
            });
        }
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or(ApiError::Unauthorized)?;
        // Compare against every key without stopping early, so timing says nothing about which matched.
        let mut found = None;
        for (index, key) in self.keys.iter().enumerate() {
            if bool::from(key.secret.0.as_bytes().ct_eq(presented.as_bytes())) {
                found = Some((index, key.clone()));
            }
        }
        found
            .map(|(index, key)| Caller {
                key: Some(key),
                index,
            })
            .ok_or(ApiError::Unauthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{KeyLimits, Secret};

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn keys_are_checked_and_allow_lists_apply() {
        let auth = Auth::new(vec![
            ApiKey {
                name: "a".into(),
                secret: Secret("k1".into()),
                models: None,
                limits: KeyLimits::default(),
            },
            ApiKey {
                name: "b".into(),
                secret: Secret("k2".into()),
                models: Some(vec!["m1".into()]),
                limits: KeyLimits::default(),
            },
        ]);
        assert!(matches!(
            auth.authenticate(&HeaderMap::new()),
            Err(ApiError::Unauthorized)
        ));
        assert!(matches!(
            auth.authenticate(&headers("Bearer nope")),
            Err(ApiError::Unauthorized)
        ));
        assert!(matches!(
            auth.authenticate(&headers("k1")),
            Err(ApiError::Unauthorized)
        ));
        assert_eq!(
            auth.authenticate(&headers("Bearer k1")).unwrap().name(),
            "a"
        );
        let b = auth.authenticate(&headers("Bearer k2")).unwrap();
        assert!(b.check_model("m1").is_ok());
        assert!(matches!(
            b.check_model("m2"),
            Err(ApiError::ModelNotAllowed(_))
        ));
        assert!(Auth::new(vec![]).authenticate(&HeaderMap::new()).is_ok());
    }

    #[test]
    fn quotas_and_rates_are_counted_per_key() {
        let key = |name: &str, secret: &str, limits: KeyLimits| ApiKey {
            name: name.into(),
            secret: Secret(secret.into()),
            models: None,
            limits,
        };
        let auth = Auth::new(vec![
            key(
                "quota",
                "q",
                KeyLimits {
                    quota_images: Some(5),
                    rate_per_minute: None,
                },
            ),
            key(
                "rate",
                "r",
                KeyLimits {
                    quota_images: None,
                    rate_per_minute: Some(2),
                },
            ),
            key("free", "f", KeyLimits::default()),
        ]);
        let t0 = Instant::now();
        let q = auth.authenticate(&headers("Bearer q")).unwrap();
        auth.admit(&q, 3, t0).unwrap();
        auth.admit(&q, 2, t0).unwrap();
        match auth.admit(&q, 1, t0) {
            Err(ApiError::QuotaExceeded {
                quota: 5,
                used: 5,
                requested: 1,
                ..
            }) => {}
            other => panic!("expected a quota refusal, got {other:?}"),
        }
        let r = auth.authenticate(&headers("Bearer r")).unwrap();
        auth.admit(&r, 10, t0).unwrap();
        auth.admit(&r, 10, t0 + Duration::from_secs(20)).unwrap();
        match auth.admit(&r, 1, t0 + Duration::from_secs(30)) {
            Err(err @ ApiError::RateLimited { .. }) => {
                assert_eq!(err.retry_after_s(), Some(30), "{err}");
                assert!(err.to_string().contains("rate_per_minute"), "{err}");
            }
            other => panic!("expected a rate refusal, got {other:?}"),
        }
        // The first request leaves the window after 60 s.
        auth.admit(&r, 1, t0 + Duration::from_secs(60)).unwrap();
        let f = auth.authenticate(&headers("Bearer f")).unwrap();
        for _ in 0..100 {
            auth.admit(&f, 10, t0).unwrap();
        }
    }
}
