//! What a fine-tuning run holds in memory, estimated before it starts: the numbers behind
//! `gmt plan` and `gmt train`'s check that a run fits its device.
//!
//! - [`Precision`]: the number formats of weights, gradients, Γ and AdamW's state, with their
//!   bytes per parameter — `precision.rs`
//! - [`Checkpointing`]: whether backward recomputes cheap element-wise results instead of
//!   keeping them (burn's checkpointing strategies) — `precision.rs`
//! - [`MemoryPlan`] → [`MemoryEstimate`]: the budget of one run, part by part —
//!   `estimate.rs`
//! - [`peak_rss`], [`reset_peak_rss`]: the process's measured peak, which the estimates are
//!   checked against — `peak.rs`
//! - [`retain_freed_host_memory`], [`release_freed_host_memory`]: the allocator keeps what
//!   a CPU training step frees for the next step, instead of the kernel zeroing it afresh —
//!   `host_allocator.rs`

mod estimate;
// The workspace's one exception to `unsafe_code = "deny"`: two calls into glibc.
#[allow(unsafe_code)]
mod host_allocator;
mod peak;
mod precision;

pub use estimate::{MemoryEstimate, MemoryPlan, OldValues};
pub use host_allocator::{release_freed_host_memory, retain_freed_host_memory};
pub use peak::{peak_rss, reset_peak_rss};
pub use precision::{Checkpointing, Precision};
