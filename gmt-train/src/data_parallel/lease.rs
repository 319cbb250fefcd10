//! One data-parallel group per process at a time: burn-collective's server is process-wide.

use std::sync::atomic::{AtomicBool, Ordering};

static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Held by the group that uses burn-collective.
pub(crate) struct GroupLease(());

impl GroupLease {
    /// Takes the lease, or returns `None` while another group holds it. (Not a wait: a
    /// thread that still holds a group would wait for itself.)
    pub(crate) fn try_acquire() -> Option<Self> {
        ACTIVE
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Self(()))
    }
}

impl Drop for GroupLease {
    fn drop(&mut self) {
        ACTIVE.store(false, Ordering::Release);
    }
}
