//! Which provider serves which model id, with the model's capabilities: the local engine's models
//! and the upstream providers' (from `--providers-file`).
use std::sync::Arc;

use super::listing::ListingCache;
use super::routing;
use super::upstream::Upstream;
use super::Provider;
use crate::api::wire::openrouter::ImageGenerationProviderPreferences;
use crate::domain::caps::ModelCaps;
use crate::domain::request::LOCAL_PROVIDER;
use crate::error::ApiError;

#[derive(Clone)]
pub struct ServedModel {
    pub caps: ModelCaps,
    pub provider: Provider,
}

/// One provider a request may be sent to.
#[derive(Clone)]
pub enum Hop {
    Local,
    Upstream(Arc<Upstream>),
}

impl Hop {
    pub fn slug(&self) -> &str {
        match self {
            Self::Local => LOCAL_PROVIDER,
            Self::Upstream(upstream) => upstream.slug(),
        }
    }
}

#[derive(Clone, Default)]
pub struct Registry {
    models: Vec<ServedModel>,
    upstreams: Vec<Arc<Upstream>>,
    listing: Arc<ListingCache>,
}

impl Registry {
    pub fn new(models: Vec<ServedModel>) -> Self {
        Self {
            models,
            ..Self::default()
        }
    }

    /// Adds the upstream providers, in the providers file's order.
    pub fn with_upstreams(mut self, upstreams: Vec<Upstream>) -> Self {
        self.upstreams = upstreams.into_iter().map(Arc::new).collect();
        self
    }

    pub fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.upstreams
    }

    pub(crate) fn listing(&self) -> &ListingCache {
        &self.listing
    }

    /// A local model.
    pub fn get(&self, id: &str) -> Option<&ServedModel> {
        self.models.iter().find(|m| m.caps.id == id)
    }

    /// The local models.
    pub fn models(&self) -> &[ServedModel] {
        &self.models
    }

    /// Whether any provider, local or upstream, serves `id`.
    pub fn serves(&self, id: &str) -> bool {
        self.get(id).is_some() || self.upstreams.iter().any(|u| u.serves(id))
    }

    /// The local model serving `id`, or a 404 that lists what is served.
    pub fn lookup(&self, id: &str) -> Result<&ServedModel, ApiError> {
        self.get(id).ok_or_else(|| ApiError::UnknownModel {
            model: id.to_string(),
            available: self.ids(),
        })
    }

    /// `id`'s model, or the first served one when the request names none (OpenAI's `model` is optional).
    pub fn lookup_or_first(&self, id: Option<&str>) -> Result<&ServedModel, ApiError> {
        match id {
            Some(id) => self.lookup(id),
            None => self
                .models
                .first()
                .ok_or_else(|| ApiError::NotReady("no model is loaded".into())),
        }
    }

    /// The providers to try for `model`, in order (see `routing`): a 404 when nobody serves it, a
    /// 400 naming the preference that leaves no provider.
    pub fn plan(
        &self,
        model: &str,
        preferences: Option<&ImageGenerationProviderPreferences>,
    ) -> Result<Vec<Hop>, ApiError> {
        let mut hops = Vec::new();
        if self.get(model).is_some() {
            hops.push(Hop::Local);
        }
        hops.extend(
            self.upstreams
                .iter()
                .filter(|u| u.serves(model))
                .map(|u| Hop::Upstream(u.clone())),
        );
        if hops.is_empty() {
            return Err(ApiError::UnknownModel {
                model: model.to_string(),
                available: self.ids(),
            });
        }
        let slugs: Vec<&str> = hops.iter().map(Hop::slug).collect();
        let order = routing::choose(model, &slugs, preferences).map_err(ApiError::from)?;
        Ok(order.into_iter().map(|i| hops[i].clone()).collect())
    }

    /// Every served id (local, then upstream), for "unknown model" messages.
    pub fn ids(&self) -> String {
        let mut ids: Vec<&str> = self.models.iter().map(|m| m.caps.id.as_str()).collect();
        for upstream in &self.upstreams {
            for id in &upstream.config().models {
                if !ids.contains(&id.as_str()) {
                    ids.push(id);
                }
            }
        }
        ids.join(", ")
    }
}
