//! Errors of gmt-train.

use std::path::PathBuf;

use gmt_core::GmtError;
use gmt_data::DataError;
use gmt_models::ModelError;

/// Everything that can stop a training run built with gmt-train.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The model refused a batch or could not be built.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The GMT optimizer refused its settings or a step (e.g. a non-finite gradient).
    #[error(transparent)]
    Gmt(#[from] GmtError),
    /// The training or evaluation data could not be read.
    #[error(transparent)]
    Data(#[from] DataError),
    /// A file could not be read or written.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done ("cannot write", …).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The system's error.
        source: std::io::Error,
    },
    /// A checkpoint is missing a file or holds one that cannot be read back.
    #[error("checkpoint {}: {reason}", dir.display())]
    Checkpoint {
        /// The checkpoint directory.
        dir: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Every micro-batch of a step had no token to learn from (all labels masked).
    #[error(
        "optimizer step {step}: none of its {micro_batches} micro-batches has a token that carries loss (every label is masked; is max_seq_len cutting off the responses?)"
    )]
    NothingToLearn {
        /// The step (1-based) that would have run.
        step: u64,
        /// Micro-batches it was given.
        micro_batches: usize,
    },
    /// Training data from which no example comes (empty, or every record held out, dropped
    /// or skipped).
    #[error("the training data ({}) yields no examples", files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", "))]
    NoExamples {
        /// The data files.
        files: Vec<PathBuf>,
    },
    /// A precision the backend cannot train in (or that gmt does not implement yet).
    #[error("--precision {precision} cannot train on {backend}: {reason}")]
    UnsupportedPrecision {
        /// The precision asked for.
        precision: crate::memory::Precision,
        /// The backend's name.
        backend: String,
        /// Why, and what can.
        reason: String,
    },
    /// Evaluation data with no token that carries loss.
    #[error("the evaluation data has no tokens to score")]
    NothingToEvaluate,
    /// A setting of an objective is out of range.
    #[error("invalid setting `{key}`: {reason}")]
    InvalidConfig {
        /// The setting.
        key: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// A micro-batch that the objective cannot use (e.g. a preference batch with an odd
    /// number of rows, or a response cut to nothing).
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    /// A preference batch without the reference model's log-probabilities.
    #[error(
        "a DPO batch came without reference log-probabilities (fill them from a reference model or a precomputed table)"
    )]
    MissingReference,
    /// A precomputed reference table lacks one of a batch's pairs.
    #[error(
        "no precomputed reference log-probabilities for pair {pair} of the batch: the data or its settings changed since they were computed"
    )]
    ReferenceNotFound {
        /// The pair's index in its batch.
        pair: usize,
    },
    /// Another replica of a data-parallel run failed this step (or the run was stopped).
    #[error("{}: {reason}", match replica { Some(r) => format!("replica {r} failed"), None => "the data-parallel run broke".to_string() })]
    ReplicaFailed {
        /// The replica that failed, when known.
        replica: Option<usize>,
        /// Its error.
        reason: String,
    },
    /// burn-collective refused an operation.
    #[error("all-reduce across devices: {0}")]
    Collective(String),
    /// A process of a multi-process run was not started with the same job as rank 0.
    #[error(
        "rank {rank} is not running the same job as rank 0: {what} differ (start every rank with the same command line, files and checkpoint)"
    )]
    ReplicaMismatch {
        /// The first rank that differs.
        rank: usize,
        /// What differs.
        what: String,
    },
    /// A replica no longer holds the same run as replica 0.
    #[error(
        "replica {replica} diverged from replica 0 at step {step}: {what} differ (a device computed differently; the run cannot continue as one)"
    )]
    ReplicasDiverged {
        /// Steps completed when the difference was found.
        step: u64,
        /// The replica that differs.
        replica: usize,
        /// What differs.
        what: String,
    },
}

impl TrainError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
