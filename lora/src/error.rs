//! What can go wrong reading, applying, training and saving adapters.

use std::path::{Path, PathBuf};

/// An adapter error: every variant a user can cause names the file, key or value.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `adapter_config.json` holds a value this crate does not support or cannot read.
    #[error("{}: {}{message}", file.display(), if key.is_empty() { String::new() } else { format!("key {key:?}: ") })]
    Config {
        /// The config file.
        file: PathBuf,
        /// The key (empty for the file as a whole).
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A tensor of `adapter_model.safetensors` is missing, misshapen, or not used.
    #[error("{}: {key}: {message}", file.display())]
    Tensor {
        /// The weights file.
        file: PathBuf,
        /// The tensor's key (PEFT's name).
        key: String,
        /// What is wrong.
        message: String,
    },
    /// An adapter name that is not loaded.
    #[error("no adapter named {name:?} (loaded: {known:?})")]
    UnknownAdapter {
        /// The name asked for.
        name: String,
        /// The names loaded.
        known: Vec<String>,
    },
    /// An operation that does not apply in the adapters' state (merging into a quantized
    /// base, gradients of frozen adapters, building a second model from one set).
    #[error("{0}")]
    Invalid(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// Loading the base model failed.
    #[error(transparent)]
    Model(#[from] patchwork_models::Error),
    /// Registering the adapters' patch failed.
    #[error(transparent)]
    Patch(#[from] patch_core::Error),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn config(file: &Path, key: &str, message: impl Into<String>) -> Self {
        Self::Config {
            file: file.to_path_buf(),
            key: key.to_string(),
            message: message.into(),
        }
    }

    pub(crate) fn tensor(file: &Path, key: &str, message: impl Into<String>) -> Self {
        Self::Tensor {
            file: file.to_path_buf(),
            key: key.to_string(),
            message: message.into(),
        }
    }
}
