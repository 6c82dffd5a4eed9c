//! The upstreams' models for `/api/v1/images/models` and `/v1/models`: fetched on demand and
//! cached for a minute (a failed fetch for ten seconds). Only the ids a providers file lists for an
//! upstream are shown; the upstream's own listing adds their descriptions and capabilities, and a
//! dead or slow upstream (5 s) costs its models those details, never the listing.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::registry::Registry;
use super::upstream::Upstream;
use crate::api::wire::openai::Model;
use crate::api::wire::openrouter::{ImageEndpoint, ImageModelArchitecture, ImageModelListItem};
use crate::config::UpstreamKind;

const FRESH_FOR: Duration = Duration::from_secs(60);
const FAILED_FOR: Duration = Duration::from_secs(10);

/// An upstream's listing items as fetched at an instant (`None`: the fetch failed).
type Fetched = (Instant, Option<Vec<Value>>);

/// Each upstream's last listing, by slug.
#[derive(Default)]
pub struct ListingCache {
    entries: Mutex<HashMap<String, Fetched>>,
}

impl ListingCache {
    fn fresh(&self, slug: &str) -> Option<Option<Vec<Value>>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (at, items) = entries.get(slug)?;
        let ttl = if items.is_some() {
            FRESH_FOR
        } else {
            FAILED_FOR
        };
        (at.elapsed() < ttl).then(|| items.clone())
    }

    fn store(&self, slug: &str, items: Option<Vec<Value>>) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.insert(slug.to_string(), (Instant::now(), items));
    }
}

/// Each upstream's listing, fetched concurrently where the cache has none.
async fn listings(registry: &Registry) -> Vec<Option<Vec<Value>>> {
    let cache = registry.listing();
    let fetches = registry.upstreams().iter().map(|upstream| async move {
        if let Some(items) = cache.fresh(upstream.slug()) {
            return items;
        }
        let items = match upstream.list_models().await {
            Ok(items) => Some(items),
            Err(err) => {
                tracing::warn!(error = %err, "upstream model listing failed; its models are listed without details");
                None
            }
        };
        cache.store(upstream.slug(), items.clone());
        items
    });
    futures_util::future::join_all(fetches).await
}

/// The upstream-only models (ids that no local model has), each once, in the providers file's order.
fn upstream_ids(registry: &Registry) -> Vec<(&str, usize)> {
    let mut ids: Vec<(&str, usize)> = Vec::new();
    for (i, upstream) in registry.upstreams().iter().enumerate() {
        for id in &upstream.config().models {
            if registry.get(id).is_none() && !ids.iter().any(|(seen, _)| seen == id) {
                ids.push((id, i));
            }
        }
    }
    ids
}

/// The item an upstream listing has for `id`, from the first upstream serving it that lists it.
fn listed<'a>(
    registry: &Registry,
    listings: &'a [Option<Vec<Value>>],
    id: &str,
    kind: UpstreamKind,
) -> Option<&'a Value> {
    registry
        .upstreams()
        .iter()
        .zip(listings)
        .filter(|(upstream, _)| upstream.serves(id) && upstream.kind() == kind)
        .find_map(|(_, items)| {
            items
                .as_deref()?
                .iter()
                .find(|item| item.get("id").and_then(Value::as_str) == Some(id))
        })
}

/// OpenRouter listing items for the upstream-only models.
pub async fn openrouter_items(registry: &Registry) -> Vec<ImageModelListItem> {
    if registry.upstreams().is_empty() {
        return Vec::new();
    }
    let listings = listings(registry).await;
    upstream_ids(registry)
        .into_iter()
        .map(|(id, first)| {
            let endpoints = format!("/api/v1/images/models/{id}/endpoints");
            match listed(registry, &listings, id, UpstreamKind::OpenRouter)
                .and_then(|item| serde_json::from_value::<ImageModelListItem>(item.clone()).ok())
            {
                Some(item) => ImageModelListItem { endpoints, ..item },
                None => minimal_item(id, &registry.upstreams()[first], endpoints),
            }
        })
        .collect()
}

/// What can be said of a model whose upstream gave no details: it makes images from text.
fn minimal_item(id: &str, upstream: &Upstream, endpoints: String) -> ImageModelListItem {
    ImageModelListItem {
        id: id.to_string(),
        name: id.to_string(),
        description: format!("served by the upstream provider {}", upstream.slug()),
        created: 0,
        architecture: ImageModelArchitecture::text_to_image(false),
        supported_parameters: Default::default(),
        supports_streaming: true,
        endpoints,
    }
}

/// OpenAI listing entries for the upstream-only models.
pub async fn openai_models(registry: &Registry) -> Vec<Model> {
    if registry.upstreams().is_empty() {
        return Vec::new();
    }
    let listings = listings(registry).await;
    upstream_ids(registry)
        .into_iter()
        .map(|(id, first)| {
            let created = [UpstreamKind::OpenAi, UpstreamKind::OpenRouter]
                .into_iter()
                .find_map(|kind| listed(registry, &listings, id, kind))
                .and_then(|item| item.get("created").and_then(Value::as_u64))
                .unwrap_or(0);
            Model::new(id, created, registry.upstreams()[first].slug())
        })
        .collect()
}

/// The endpoints of the upstreams serving `id` (empty when none does), with the capabilities
/// their listings give (none for a dead upstream or an openai-kind one). Pricing is the upstream's
/// business: none is claimed.
pub async fn openrouter_endpoints(registry: &Registry, id: &str) -> Vec<ImageEndpoint> {
    if !registry.upstreams().iter().any(|u| u.serves(id)) {
        return Vec::new();
    }
    let listings = listings(registry).await;
    registry
        .upstreams()
        .iter()
        .zip(&listings)
        .filter(|(upstream, _)| upstream.serves(id))
        .map(|(upstream, items)| {
            let supported_parameters = items
                .as_deref()
                .filter(|_| upstream.kind() == UpstreamKind::OpenRouter)
                .and_then(|items| {
                    items
                        .iter()
                        .find(|item| item.get("id").and_then(Value::as_str) == Some(id))
                })
                .and_then(|item| item.get("supported_parameters").cloned())
                .and_then(|p| serde_json::from_value(p).ok())
                .unwrap_or_default();
            ImageEndpoint {
                allowed_passthrough_parameters: Vec::new(),
                pricing: Vec::new(),
                provider_name: format!("upstream provider {}", upstream.slug()),
                provider_slug: upstream.slug().to_string(),
                provider_tag: None,
                supported_parameters,
                supports_streaming: true,
            }
        })
        .collect()
}
