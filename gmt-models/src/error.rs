//! Errors of gmt-models.

use std::path::PathBuf;

/// Everything that can go wrong loading, building or saving a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file is not valid JSON.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's error, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// A required config key is absent.
    #[error("{source_name}: missing required key `{key}`")]
    MissingKey {
        /// Where the config came from.
        source_name: String,
        /// The key.
        key: String,
    },
    /// A config key has a value of the wrong type or range.
    #[error("{source_name}: key `{key}` has invalid value {value}: {reason}")]
    InvalidValue {
        /// Where the config came from.
        source_name: String,
        /// The key.
        key: String,
        /// The value, as JSON.
        value: String,
        /// What was expected.
        reason: String,
    },
    /// A config asks for something gmt does not implement.
    #[error("{source_name}: unsupported `{key}` = {value}; supported: {supported}")]
    Unsupported {
        /// Where the config came from.
        source_name: String,
        /// The key.
        key: String,
        /// The value found.
        value: String,
        /// What is supported instead.
        supported: String,
    },
    /// A weights file is malformed.
    #[error("{path}: {reason}")]
    BadWeights {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The weights do not fit the model: tensors are missing, unexpected or of the wrong shape.
    #[error("{source_name}: weights do not match the model:{details}")]
    WeightMismatch {
        /// Where the weights came from.
        source_name: String,
        /// One line per problem, Hugging Face names.
        details: String,
    },
    /// Building or using the tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Invalid input to a forward pass or generation.
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn bad_weights(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::BadWeights {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
