//! The pieces [`GmtOptimizer`](crate::GmtOptimizer) is built from, for benchmarks and for
//! code that masks gradients without the optimizer. Most users need none of them.
//!
//! - [`mask_gradients`]: one step's Γ·mask and its statistics, from [`MaskInput`]s (or
//!   [`NonFiniteInput`]);
//! - threshold selection: [`kth_largest_abs`] (host, exact, O(n)),
//!   [`device_kth_largest_abs`] (on the device), [`sampled_kth_largest_abs`] (estimated),
//!   [`kept_count`] (how many entries a ratio keeps);
//! - [`fixed_order_sum`]: a sum rounded the same way whatever the threads do (norms,
//!   checksums);
//! - [`list_params`]: a module's float parameters in step order; [`ParamFilter`]: the
//!   `exclude` globs.

pub use crate::filter::ParamFilter;
pub use crate::fixed_order::fixed_order_sum;
pub use crate::mask::{MaskInput, MaskedGradients, NonFiniteInput, mask_gradients};
pub use crate::params::list_params;
pub use crate::selection::{
    device_kth_largest_abs, kept_count, kth_largest_abs, kth_largest_abs_by_sort, sample_count,
    sampled_kth_largest_abs,
};
