//! Threshold selection: the (n − m)-th largest |Γ| of a group of entries.
//!
//! Three ways to find it, all returning the same `f32` bit pattern for exact selection:
//! - [`kth_largest_abs`] on host memory: a radix histogram over the top bits of |x| finds the
//!   bucket holding the answer in one pass, then `select_nth_unstable` runs on that bucket
//!   alone. O(n), no sort, no copy of the whole group. (GMT's own host pass collects that
//!   bucket while it masks, so a step reads Γ for selection once.)
//! - [`device_kth_largest_abs`] on any burn backend: a bisection over the bit patterns of |x|
//!   (non-negative floats order like their bits), one counting pass per bit, with every group
//!   of a step searched together so a step costs 31 host synchronisations in all. Gradients
//!   never leave the device.
//! - [`sampled_kth_largest_abs`]: the matching quantile of a fixed-size uniform sample.
//!
//! [`kth_largest_abs_by_sort`] is the obvious sort-based reference the others are tested against.

mod device;
mod host;
mod sampled;

pub use device::device_kth_largest_abs;
pub(crate) use host::{BoundaryBucket, SMALL, abs_bits};
pub use host::{kth_largest_abs, kth_largest_abs_by_sort};
pub use sampled::{sample_count, sampled_kth_largest_abs};

/// Entries kept in a group of `n` at `mask_ratio`: `n − floor(ratio·n)`.
///
/// ```
/// assert_eq!(gmt_core::masking::kept_count(60, 0.3), 42);
/// assert_eq!(gmt_core::masking::kept_count(3, 0.3), 3); // floor(0.9) = 0: nothing masked
/// ```
pub fn kept_count(n: usize, mask_ratio: f64) -> usize {
    // f64 like the Python reference, so floor(0.3 * 60) agrees bit for bit.
    let masked = (mask_ratio * n as f64).floor() as usize;
    n - masked.min(n)
}
