//! # gmt-train: the Gradient-Mask Tuning fine-tuning run as a library
//!
//! A [`Trainer`] holds one run — a Llama-family model, GMT around AdamW, the learning-rate
//! schedule and the counters — and takes it forward one optimizer step at a time; the caller
//! owns the loop, the data and everything printed. Each step: the [`Objective`]'s loss and
//! backward pass per micro-batch, Γ = their weighted mean (combined over replicas by a
//! [`GradientAllReduce`] in data-parallel runs), then GMT masks Γ, clips it and AdamW
//! applies it. Checkpoints are written atomically and resume exactly: on the CPU a resumed
//! run is bit-identical to an uninterrupted one.
//!
//! ```no_run
//! # fn run(model: gmt_models::LlamaForCausalLm<burn::backend::Autodiff<burn::backend::NdArray>>,
//! #        batches: Vec<gmt_models::TokenBatch>) -> Result<(), gmt_train::TrainError> {
//! use gmt_core::GmtConfig;
//! use gmt_train::{CausalLm, OptimConfig, Trainer, TrainerConfig};
//!
//! let config = TrainerConfig {
//!     gmt: GmtConfig::new(0.2).with_max_grad_norm(Some(1.0)),
//!     optim: OptimConfig { lr: 1e-4, ..OptimConfig::default() },
//!     ..TrainerConfig::default()  // cosine decay, no warmup
//! };
//! let mut trainer = Trainer::new(model, CausalLm, &config, batches.len() as u64)?;
//! for batch in batches {
//!     let step = trainer.step([batch])?;   // one micro-batch per step here
//!     println!("step {}: loss {:.4}, kept {:.1}%", step.step, step.loss(),
//!              100.0 * step.mask.kept_fraction());
//! }
//! trainer.save_checkpoint("run/checkpoints".as_ref(), &(), &[], 2)?;
//! # Ok(()) }
//! ```
//!
//! ## Map
//! - [`Trainer`], [`TrainerConfig`], [`StepSummary`], [`TrainProgress`], [`GmtAdamW`] —
//!   `trainer.rs`
//! - [`Objective`], [`MicroBatchLoss`], [`MetricSums`], [`CausalLm`] (supervised
//!   fine-tuning) — `objective.rs`
//! - [`Dpo`], [`DpoConfig`], [`PreferenceBatch`], [`ReferenceLogProbs`],
//!   [`reference_log_probs`] (preference tuning) — `dpo.rs`
//! - [`GradientAllReduce`], [`SingleReplica`], [`ReplicaStep`], [`StepTotals`]: where the
//!   replicas' gradients meet before Γ is formed — `all_reduce.rs`
//! - [`DataParallel`], [`WeightChecksum`], [`AllReduceStats`]: one run over several devices
//!   of one process (burn-collective) or, with the feature `mpi`, over the processes of an
//!   MPI job (`MpiGroup`) — `data_parallel/`
//! - [`memory`]: what a run needs in memory — [`memory::Precision`],
//!   [`memory::Checkpointing`], [`memory::MemoryPlan`] → [`memory::MemoryEstimate`] —
//!   `memory/`
//! - `bf16-mixed` steps: a bf16 working copy of the fp32 master weights per step
//!   ([`Trainer::with_precision`]) — `mixed_precision.rs`
//! - [`evaluate`], [`LossReport`] — `evaluate.rs`
//! - [`Checkpoint`], [`write_checkpoint`]: atomic checkpoint directories — `checkpoint.rs`;
//!   their burn records, written and read without a whole-record buffer — `record_file.rs`
//! - [`TrainingBatches`], [`DataPosition`]: gmt-data batches over epochs, resumable —
//!   `data.rs`
//! - [`OptimConfig`]: the learning rate and AdamW's hyper-parameters — `optim.rs`
//! - [`ScheduleConfig`], [`LrSchedule`], [`ScheduleKind`] — `schedule.rs`
//! - [`TrainError`] — `error.rs`

#![warn(missing_docs)]

mod all_reduce;
pub mod checkpoint;
mod data;
mod data_parallel;
mod dpo;
mod error;
mod evaluate;
pub mod memory;
mod mixed_precision;
mod objective;
mod optim;
mod record_file;
mod schedule;
mod trainer;

pub use all_reduce::{GradientAllReduce, ReplicaStep, SingleReplica, StepTotals};
pub use checkpoint::{Checkpoint, write_checkpoint};
pub use data::{DataPosition, TrainingBatches};
#[cfg(feature = "mpi")]
pub use data_parallel::MpiGroup;
pub use data_parallel::{AllReduceStats, DEFAULT_SYNC_CHECK_EVERY, DataParallel, WeightChecksum};
pub use dpo::{
    Dpo, DpoConfig, DpoLossType, PairLogProbs, PreferenceBatch, ReferenceLogProbs,
    reference_log_probs,
};
pub use error::TrainError;
pub use evaluate::{LossReport, evaluate};
pub use objective::{CausalLm, MetricSums, MicroBatchLoss, Objective};
pub use optim::OptimConfig;
pub use schedule::{LrSchedule, ScheduleConfig, ScheduleKind};
pub use trainer::{GmtAdamW, StepSummary, TrainProgress, Trainer, TrainerConfig};

/// The README's Rust examples, compiled (and, where not marked `no_run`, run) as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeExamples;
