//! Which provider serves which model id, with the model's capabilities.
use super::Provider;
use crate::domain::caps::ModelCaps;
use crate::error::ApiError;

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

    /// The model serving `id`, or a 404 that lists what is served.
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

    /// The ids, for "unknown model" messages.
    pub fn ids(&self) -> String {
        self.models
            .iter()
            .map(|m| m.caps.id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}
