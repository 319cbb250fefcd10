//! Errors of gmt-data. Every error about input data names the file, the line (1-based) and,
//! where one is to blame, the field.

use std::path::PathBuf;

/// Where a record came from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecordLocation {
    /// The file.
    pub file: PathBuf,
    /// 1-based line (JSONL, text), element (JSON array) or row (Parquet).
    pub line: u64,
}

impl std::fmt::Display for RecordLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.file.extension().is_some_and(|e| e == "parquet") {
            write!(f, "{} row {}", self.file.display(), self.line)
        } else {
            write!(f, "{}:{}", self.file.display(), self.line)
        }
    }
}

/// Everything that can go wrong turning files into batches.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or directory could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A record is malformed; `field` names the culprit when there is one.
    #[error("{location}: {}{reason}", field.as_ref().map(|f| format!("field `{f}`: ")).unwrap_or_default())]
    BadRecord {
        /// File and line.
        location: RecordLocation,
        /// The offending field, if any.
        field: Option<String>,
        /// What is wrong.
        reason: String,
    },
    /// A Parquet file is not readable (not Parquet, damaged, or an unsupported encoding).
    #[error("{path}: not a readable Parquet file: {reason}")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The reader's explanation.
        reason: String,
    },
    /// A record (a line, or a whole `.json` file) longer than gmt reads: a sign of a file
    /// that is not data (`/dev/zero`, a binary), which would otherwise exhaust memory.
    #[error(
        "{location}: {what} is longer than {limit} bytes, the most gmt reads; is this a data file?"
    )]
    TooLarge {
        /// File and line (line 1 for a whole `.json` file).
        location: RecordLocation,
        /// "a line", "the JSON array".
        what: &'static str,
        /// The limit, in bytes.
        limit: u64,
    },
    /// A chat template failed to compile or render.
    #[error("chat template: {0}")]
    Template(String),
    /// The tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Settings that cannot work.
    #[error("invalid data config `{key}`: {reason}")]
    InvalidConfig {
        /// The setting.
        key: &'static str,
        /// Why.
        reason: String,
    },
    /// A saved stream position does not fit the files it is restored on.
    #[error("cannot resume: {0}")]
    Resume(String),
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
