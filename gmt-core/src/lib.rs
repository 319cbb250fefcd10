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
//! - [`GmtOptimizer`] (its `try_step` returns the module and the step's [`StepReport`]), its
//!   record [`GmtRecord`] — `optimizer.rs`
//! - [`GradientMean`]: Γ from micro-batches, plain or token-weighted — `accumulate.rs`
//! - [`FusedAdamW`]: burn's AdamW, bit for bit, in one pass per parameter on CPU backends —
//!   `fused_adamw.rs`
//! - [`StepReport`], [`MaskStats`]: what a step kept — `stats.rs`
//! - [`GmtError`] — `error.rs`
//! - [`masking`]: the building blocks (mask function, threshold selection, parameter
//!   listing), for benchmarks and for masking without the optimizer
//!
//! ## Example
//! ```
//! use burn::backend::{Autodiff, NdArray};
//! use burn::nn::{Linear, LinearConfig};
//! use burn::optim::{AdamWConfig, GradientsParams};
//! use burn::tensor::{Distribution, Tensor};
//! use gmt_core::GmtConfig;
//!
//! type B = Autodiff<NdArray>;
//! let device = Default::default();
//! let model: Linear<B> = LinearConfig::new(8, 4).init(&device);
//! let mut optim = GmtConfig::new(0.3).init(AdamWConfig::new().init(), &model)?;
//!
//! let x = Tensor::<B, 2>::random([16, 8], Distribution::Default, &device);
//! let grads = GradientsParams::from_grads(model.forward(x).powi_scalar(2).mean().backward(), &model);
//! let (model, report) = optim.try_step(1e-3, model, grads)?;
//! println!("kept {:.0}% of the gradient's entries", 100.0 * report.kept_fraction());
//! # let _ = model;
//! # Ok::<(), gmt_core::GmtError>(())
//! ```

#![warn(missing_docs)]

mod accumulate;
mod config;
mod error;
mod filter;
mod fixed_order;
mod fused_adamw;
mod host_mask;
mod mask;
pub mod masking;
mod optimizer;
mod params;
mod selection;
mod stats;
mod update_target;

pub use accumulate::GradientMean;
pub use config::{
    GmtConfig, MaskScope, MaskStrategy, MaskTarget, NonFinitePolicy, Selection, SelectionEngine,
};
pub use error::GmtError;
pub use fused_adamw::{FusedAdamW, FusedAdamWState};
pub use optimizer::{GmtOptimizer, GmtRecord, GmtRecordItem, GmtState, StepFailure};
pub use params::ParamInfo;
pub use stats::{MaskStats, ParamMaskStats, StepReport};
