//! Which provider serves which model id, with the model's capabilities.
use super::Provider;
use crate::domain::caps::ModelCaps;

#[derive(Clone)]
pub struct ServedModel {
    pub caps: ModelCaps,
    pub provider: Provider,
}

#[derive(Clone, Default)]
pub struct Registry {
    models: Vec<ServedModel>,
}

impl Registry {
    pub fn new(models: Vec<ServedModel>) -> Self {
        Self { models }
    }

    pub fn get(&self, id: &str) -> Option<&ServedModel> {
        self.models.iter().find(|m| m.caps.id == id)
    }

    pub fn models(&self) -> &[ServedModel] {
        &self.models
    }

    /// The ids, for "unknown model" messages.
    pub fn ids(&self) -> String {
        self.models
            .iter()
            .map(|m| m.caps.id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}
