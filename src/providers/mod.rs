//! Providers: who generates the images for a model. `local` is the built-in engine; upstream
//! HTTP providers (OpenRouter, OpenAI, other imago boxes) come from `--providers-file`.
mod listing;
mod local;
mod registry;
mod relay;
mod routing;
mod sse_parse;
mod translate;
mod upstream;

pub use listing::{openai_models, openrouter_endpoints, openrouter_items};
pub use local::LocalProvider;
pub use registry::{Hop, Registry, ServedModel};
pub use relay::{dispatch, PROVIDER_HEADER};
pub use upstream::{Upstream, UpstreamError};

/// A provider, by the slug clients use in `provider.only/order/ignore/options`.
#[derive(Clone)]
pub enum Provider {
    Local(LocalProvider),
}

impl Provider {
    pub fn slug(&self) -> &'static str {
        match self {
            Self::Local(_) => LocalProvider::SLUG,
        }
    }
}
