//! What each replica brings to a step's meeting — its totals, or why it failed — and how the
//! shares become the step's totals. Threads and processes meet the same way; only the
//! transport differs.

use crate::{ReplicaStep, StepTotals, TrainError};

/// A replica's share of a step: its totals, or its error's text.
pub(crate) type Share = Result<StepTotals, String>;

/// What `local` brings to the meeting.
pub(crate) fn share_of(local: &Result<ReplicaStep, TrainError>) -> Share {
    match local {
        Ok(step) => Ok(step.totals.clone()),
        Err(e) => Err(e.to_string()),
    }
}

/// The step's totals over every replica's share, added in replica order so that every
/// replica's sums are the same bits; the first failed replica's error when one failed.
pub(crate) fn combine(shares: &[Share]) -> Result<StepTotals, TrainError> {
    let mut sum = StepTotals::default();
    for (replica, share) in shares.iter().enumerate() {
        let share = share.as_ref().map_err(|reason| TrainError::ReplicaFailed {
            replica: Some(replica),
            reason: reason.clone(),
        })?;
        sum.weight += share.weight;
        sum.loss_sum += share.loss_sum;
        sum.tokens += share.tokens;
        sum.micro_batches += share.micro_batches;
        sum.empty_micro_batches += share.empty_micro_batches;
        sum.metrics.merge(&share.metrics);
    }
    Ok(sum)
}
