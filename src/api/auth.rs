//! API keys: `Authorization: Bearer <key>`, compared in constant time; per-key model allow-lists.
use axum::http::{header, HeaderMap};
use subtle::ConstantTimeEq;

use crate::config::ApiKey;
use crate::error::ApiError;

#[derive(Clone, Debug, Default)]
pub struct Auth {
    keys: Vec<ApiKey>,
}

/// Who is calling: `None` when the server requires no key.
#[derive(Clone, Debug)]
pub struct Caller {
    pub key: Option<ApiKey>,
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
        Self { keys }
    }

    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        if self.is_open() {
            return Ok(Caller { key: None });
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
        for key in &self.keys {
            if bool::from(key.secret.0.as_bytes().ct_eq(presented.as_bytes())) {
                found = Some(key.clone());
            }
        }
        found
            .map(|key| Caller { key: Some(key) })
            .ok_or(ApiError::Unauthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

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
            },
            ApiKey {
                name: "b".into(),
                secret: Secret("k2".into()),
                models: Some(vec!["m1".into()]),
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
}
