//! Providers: who generates the images for a model. `local` is the built-in engine; upstream
//! HTTP providers join this enum later.
mod local;
mod registry;

pub use local::LocalProvider;
pub use registry::{Registry, ServedModel};

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
