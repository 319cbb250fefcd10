//! What a micro-batch is and how its loss is computed: the seam between the training step and
//! the training objective.

use std::collections::BTreeMap;

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use gmt_models::{LlamaForCausalLm, TokenBatch};

use crate::TrainError;

/// One micro-batch's loss, with the weight it carries in the step's mean.
///
/// Γ is the weighted mean of the micro-batch gradients, so a step's loss is the weighted mean
/// of its micro-batches' losses whatever their split: for the causal-LM loss the weight is
/// the number of tokens that carry loss; for a pairwise loss it would be the number of pairs.
pub struct MicroBatchLoss<B: Backend> {
    /// The mean loss over the micro-batch; `None` when nothing in it carries loss
    /// (`weight` is then 0).
    pub loss: Option<Tensor<B, 1>>,
    /// What the loss is a mean over (counted tokens, pairs, …).
    pub weight: f64,
    /// Tokens the model processed (padding excluded), for throughput.
    pub tokens: u64,
    /// The objective's own metrics, summed over the micro-batch's weight units (e.g. the
    /// rewards of DPO's pairs); steps and evaluations report them as means.
    pub metrics: MetricSums,
}

/// Named sums of per-unit metrics (per pair, per token), to be added up over micro-batches,
/// steps and replicas and divided by the total weight at the end.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MetricSums(BTreeMap<String, f64>);

impl MetricSums {
    /// Adds `value` to the sum named `name`.
    pub fn add(&mut self, name: &str, value: f64) {
        *self.0.entry(name.to_string()).or_default() += value;
    }

    /// Adds every sum of `other`.
    pub fn merge(&mut self, other: &MetricSums) {
        for (name, value) in &other.0 {
            self.add(name, *value);
        }
    }

    /// The sum named `name`.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.0.get(name).copied()
    }

    /// Every sum divided by `weight`: the means.
    pub fn means(&self, weight: f64) -> BTreeMap<String, f64> {
        self.0
            .iter()
            .map(|(k, v)| (k.clone(), v / weight))
            .collect()
    }

    /// The sums, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> {
        self.0.iter().map(|(k, v)| (k.as_str(), *v))
    }
}

/// A training objective: how the model's loss on one micro-batch is computed.
///
/// The method is generic over the backend so that one objective serves training (an autodiff
/// backend) and evaluation (its inner backend).
pub trait Objective {
    /// What one micro-batch holds.
    type Batch;

    /// The loss of `model` on `batch`.
    fn loss<B: Backend>(
        &self,
        model: &LlamaForCausalLm<B>,
        batch: &Self::Batch,
    ) -> Result<MicroBatchLoss<B>, TrainError>;
}

/// Next-token cross-entropy over the tokens whose label is not masked, as Transformers'
/// causal-LM loss: the supervised fine-tuning objective. A micro-batch weighs as many as the
/// tokens it counts.
#[derive(Clone, Copy, Debug, Default)]
pub struct CausalLm;

impl Objective for CausalLm {
    type Batch = TokenBatch;

    fn loss<B: Backend>(
        &self,
        model: &LlamaForCausalLm<B>,
        batch: &TokenBatch,
    ) -> Result<MicroBatchLoss<B>, TrainError> {
        let out = model.forward(batch)?;
        let tokens = real_tokens(batch);
        Ok(MicroBatchLoss {
            loss: out.loss.filter(|_| out.tokens > 0),
            weight: out.tokens as f64,
            tokens,
            metrics: MetricSums::default(),
        })
    }
}

/// Tokens of a batch that are not padding: what a step's throughput counts.
pub(crate) fn real_tokens(batch: &TokenBatch) -> u64 {
    let real = batch
        .attention_mask
        .as_ref()
        .map_or(batch.input_ids.len(), |m| m.iter().filter(|&&x| x).count());
    real as u64
}
