//! Reading the JSON configuration files of a model folder, with errors that name the file.
use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::{ModelError, Result};

/// The text of a configuration file that must exist; `what` names it when it is missing.
pub fn read_config_text(path: &Path, what: &str) -> Result<String> {
    if !path.is_file() {
        return Err(ModelError::MissingFile {
            what: what.to_owned(),
            path: path.to_path_buf(),
        });
    }
    std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))
}

/// A JSON configuration file parsed into `T` (absent keys take the defaults `T` declares).
pub fn read_json<T: DeserializeOwned>(path: &Path, what: &str) -> Result<T> {
    let text = read_config_text(path, what)?;
    serde_json::from_str(&text).map_err(|e| ModelError::invalid_file(path, e.to_string()))
}
