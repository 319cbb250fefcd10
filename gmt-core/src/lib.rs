//! # gmt-core: Gradient-Mask Tuning for burn
//!
//! Gradient-Mask Tuning (GMT; Li et al., arXiv 2406.15330, AAAI 2025) is full-parameter
//! fine-tuning in which every optimizer step masks the accumulated gradient: entries with small
//! |gradient| are set to zero and only the salient ones reach the optimizer. This crate is the
//! optimizer, generic over burn's `Backend`, usable from any burn project.
//!
//! Definitions (the paper leaves them open; these are ours):
//! - Γ is the mean of one optimizer step's micro-batch gradients ([`GradientMean`]).
//! - For a group of n entries at `mask_ratio` r, m = floor(r·n) entries are masked; the
//!   threshold T is the (n − m)-th largest |Γ|; entries with |Γ| ≥ T are kept (ties at T are
//!   all kept). A group is one tensor ([`MaskScope::Tensor`]) or all masked parameters at once
//!   ([`MaskScope::Global`]).
//! - [`MaskTarget::Gradient`]: the inner optimizer sees Γ·mask. [`MaskTarget::Update`]: it
//!   sees Γ·mask, and masked entries also keep their previous value exactly.
//! - `mask_ratio = 0` is plain fine-tuning, bit for bit; [`MaskStrategy::Random`] keeps the
//!   same number of entries at random, the paper's control.
//!
//! ## Map
//! - [`GmtConfig`] and its vocabulary ([`MaskScope`], [`MaskTarget`], [`MaskStrategy`],
//!   [`Selection`], [`SelectionEngine`], [`NonFinitePolicy`]) — `config.rs`
//! - [`GmtOptimizer`], its record [`GmtRecord`] — `optimizer.rs`
//! - [`mask_gradients`]: one step's Γ·mask and statistics — `mask.rs`
//! - [`selection`]: exact and sampled threshold selection, host and device — `selection/`
//! - [`GradientMean`]: Γ from micro-batches, plain or token-weighted — `accumulate.rs`
//! - [`MaskStats`], [`StepReport`]: what a step kept — `stats.rs`
//! - [`ParamFilter`]: parameters never masked — `filter.rs`
//! - [`GmtError`] — `error.rs`

mod accumulate;
mod config;
mod error;
mod filter;
mod mask;
mod optimizer;
mod params;
pub mod selection;
mod stats;

pub use accumulate::GradientMean;
pub use config::{
    GmtConfig, MaskScope, MaskStrategy, MaskTarget, NonFinitePolicy, Selection, SelectionEngine,
};
pub use error::GmtError;
pub use filter::ParamFilter;
pub use mask::{MaskInput, MaskedGradients, mask_gradients};
pub use optimizer::{GmtOptimizer, GmtRecord, GmtRecordItem, GmtState, StepFailure};
pub use params::{ParamInfo, list_params};
pub use stats::{MaskStats, ParamMaskStats, StepReport};
