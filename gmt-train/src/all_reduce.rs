//! Where a step's Γ is produced: the seam at which a data-parallel run combines the replicas'
//! gradients before masking.

use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use gmt_models::LlamaForCausalLm;

use crate::{MetricSums, TrainError};

/// The sums of one step that a data-parallel run adds up over its replicas together with Γ.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepTotals {
    /// Σ weight over the step's micro-batches (e.g. counted tokens): what Γ is a mean over.
    pub weight: f64,
    /// Σ weight · loss: the step's loss is `loss_sum / weight`.
    pub loss_sum: f64,
    /// Tokens processed (padding excluded).
    pub tokens: u64,
    /// Micro-batches stepped over, including those without a token to learn from.
    pub micro_batches: usize,
    /// Micro-batches without a token to learn from.
    pub empty_micro_batches: usize,
    /// The objective's metrics, summed over the weight units.
    pub metrics: MetricSums,
}

impl StepTotals {
    /// The step's mean loss.
    pub fn loss(&self) -> f64 {
        self.loss_sum / self.weight
    }

    /// The step's mean of the objective's metric `name` (e.g. DPO's `rewards/accuracy`).
    pub fn mean(&self, name: &str) -> Option<f64> {
        self.metrics.get(name).map(|sum| sum / self.weight)
    }
}

/// One replica's share of a step, before the replicas are combined: Σ wᵢ gᵢ over its
/// micro-batches, unnormalised, with its totals. After the all-reduce it is the whole step's.
#[derive(Debug)]
pub struct ReplicaStep {
    /// Σ wᵢ gᵢ: each micro-batch's gradient times its weight. Empty when no micro-batch of
    /// this replica had a token to learn from.
    pub grad_sum: GradientsParams,
    /// Its weight, loss, tokens and micro-batches.
    pub totals: StepTotals,
}

/// Adds this replica's share of a step to the other replicas'.
///
/// The [`Trainer`](crate::Trainer) calls it once per step, after its micro-batches' backward
/// passes and before Γ is formed. A data-parallel implementation sums the replicas' gradient
/// sums and totals, so that Γ = Σ_r Σ_i w_ri·g_ri / Σ_r Σ_i w_ri is the gradient of the mean
/// loss over every replica's tokens — what one process with all the micro-batches computes —
/// and every replica masks, clips and applies the same Γ.
///
/// `local` is this replica's share, or the error it met: every replica calls `all_reduce`
/// every step, a failed one included, so that none waits on a replica that will not arrive.
/// When any replica failed, every replica returns an error.
pub trait GradientAllReduce<B: AutodiffBackend> {
    /// Combines `local` with the other replicas' shares of the step.
    fn all_reduce(
        &mut self,
        model: &LlamaForCausalLm<B>,
        local: Result<ReplicaStep, TrainError>,
    ) -> Result<ReplicaStep, TrainError>;
}

/// One process, one replica: the step is this replica's.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleReplica;

impl<B: AutodiffBackend> GradientAllReduce<B> for SingleReplica {
    fn all_reduce(
        &mut self,
        _model: &LlamaForCausalLm<B>,
        local: Result<ReplicaStep, TrainError>,
    ) -> Result<ReplicaStep, TrainError> {
        local
    }
}
