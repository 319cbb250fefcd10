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

/// Turns this process's Γ into the step's Γ.
///
/// The [`Trainer`](crate::Trainer) calls it once per step, after the micro-batches' weighted
/// mean Γ_local is formed and before GMT masks it. A data-parallel implementation all-reduces
/// over its R replicas: Γ = Σ_r w_r·Γ_r / Σ_r w_r, and the totals summed, so that masking,
/// clipping and AdamW see the gradient of the mean loss over every replica's tokens, exactly
/// as one process with all the micro-batches would.
pub trait GradientAllReduce<B: AutodiffBackend> {
    /// Combines `gamma` (this process's weighted mean Γ) and `totals` with the other replicas'.
    fn all_reduce(
        &mut self,
        model: &LlamaForCausalLm<B>,
        gamma: GradientsParams,
        totals: StepTotals,
    ) -> Result<(GradientsParams, StepTotals), TrainError>;
}

/// One process, one replica: Γ is this process's Γ.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleReplica;

impl<B: AutodiffBackend> GradientAllReduce<B> for SingleReplica {
    fn all_reduce(
        &mut self,
        _model: &LlamaForCausalLm<B>,
        gamma: GradientsParams,
        totals: StepTotals,
    ) -> Result<(GradientsParams, StepTotals), TrainError> {
        Ok((gamma, totals))
    }
}
