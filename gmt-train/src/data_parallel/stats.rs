//! What a data-parallel run's all-reduce costs: bytes and seconds, measured as it runs.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Bytes and time of a run's all-reduces so far, seen from this process's replica.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AllReduceStats {
    /// Steps all-reduced.
    pub steps: u64,
    /// Bytes of gradient this replica sent into the all-reduce, summed over the steps.
    pub bytes: u64,
    /// Seconds summing the gradients over the replicas, once every replica had arrived:
    /// the communication itself.
    pub gradient_secs: f64,
    /// Seconds waiting for the other replicas to finish their micro-batches, and
    /// exchanging the step's totals: load imbalance, not bandwidth.
    pub wait_secs: f64,
}

impl AllReduceStats {
    /// Mean bytes all-reduced per step.
    pub fn bytes_per_step(&self) -> f64 {
        self.bytes as f64 / self.steps.max(1) as f64
    }

    /// Mean seconds per step summing gradients.
    pub fn gradient_secs_per_step(&self) -> f64 {
        self.gradient_secs / self.steps.max(1) as f64
    }

    /// Mean seconds per step waiting for the other replicas.
    pub fn wait_secs_per_step(&self) -> f64 {
        self.wait_secs / self.steps.max(1) as f64
    }
}

/// The stats, shared between a run and the all-reduce inside its trainer.
#[derive(Clone, Debug, Default)]
pub(crate) struct SharedStats(Arc<Mutex<AllReduceStats>>);

impl SharedStats {
    /// Adds one step's all-reduce.
    pub(crate) fn record(&self, bytes: u64, summing: Duration, waiting: Duration) {
        let mut stats = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        stats.steps += 1;
        stats.bytes += bytes;
        stats.gradient_secs += summing.as_secs_f64();
        stats.wait_secs += waiting.as_secs_f64();
    }

    /// The stats so far.
    pub(crate) fn get(&self) -> AllReduceStats {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
