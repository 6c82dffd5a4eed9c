//! Errors of the engine layer. Every variant names the file, tensor, field or value at fault.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A tensor operation failed; candle's message names the tensor for load-time shape errors.
    #[error(transparent)]
    Candle(candle_core::Error),

    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file the model needs is not there.
    #[error("missing {what}: {path} does not exist")]
    MissingFile { what: String, path: PathBuf },

    /// A JSON or TOML file that does not parse, or lacks a field the engine needs.
    #[error("invalid {path}: {message}")]
    InvalidFile { path: PathBuf, message: String },

    /// A safetensors file that is truncated, corrupt, or holds a tensor of the wrong dtype.
    #[error("corrupt safetensors file {path}: {message}")]
    Safetensors { path: PathBuf, message: String },

    /// A model whose configuration asks for something this engine does not implement.
    #[error("unsupported model: {0}")]
    Unsupported(String),

    /// A generation parameter outside its bounds; the message names the parameter, bound and value.
    #[error("invalid {field}: {message}")]
    InvalidInput {
        field: &'static str,
        message: String,
    },

    /// The caller asked the denoising loop to stop.
    #[error("generation cancelled")]
    Cancelled,
}

impl From<candle_core::Error> for ModelError {
    /// Keeps candle's message and drops the backtrace it attaches when `RUST_BACKTRACE` is set,
    /// so errors stay one line for users (the backtrace is noise outside a debugger).
    fn from(err: candle_core::Error) -> Self {
        let mut err = err;
        while let candle_core::Error::WithBacktrace { inner, .. } = err {
            err = *inner;
        }
        Self::Candle(err)
    }
}

impl ModelError {
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidInput {
            field,
            message: message.into(),
        }
    }

    pub fn invalid_file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::InvalidFile {
            path: path.into(),
            message: message.into(),
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
