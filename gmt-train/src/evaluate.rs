//! Evaluation: the weighted mean loss of a model over held-out micro-batches.

use std::collections::BTreeMap;

use burn::tensor::ElementConversion;
use burn::tensor::backend::Backend;
use gmt_models::LlamaForCausalLm;
use serde::Serialize;

use crate::{MetricSums, Objective, TrainError};

/// Mean loss over the counted tokens (or pairs) of some batches.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LossReport {
    /// Mean loss per counted token (nats for the causal-LM loss).
    pub loss: f64,
    /// exp(loss).
    pub perplexity: f64,
    /// What the loss is a mean over (tokens that carry loss, for the causal-LM loss; pairs,
    /// for DPO).
    pub tokens: u64,
    /// The means of the objective's own metrics (DPO's rewards; none for the causal-LM loss).
    pub metrics: BTreeMap<String, f64>,
}

/// The weighted mean loss of `model` over `batches` under `objective`, without gradients
/// (pass a model on a plain backend, e.g. `model.valid()`).
pub fn evaluate<B: Backend, O: Objective>(
    model: &LlamaForCausalLm<B>,
    objective: &O,
    batches: &[O::Batch],
) -> Result<LossReport, TrainError> {
    let mut sum = 0.0f64;
    let mut weight = 0.0f64;
    let mut metrics = MetricSums::default();
    for batch in batches {
        let out = objective.loss(model, batch)?;
        let Some(loss) = out.loss else {
            continue;
        };
        let loss: f32 = loss.into_scalar().elem();
        sum += loss as f64 * out.weight;
        weight += out.weight;
        metrics.merge(&out.metrics);
    }
    if weight <= 0.0 {
        return Err(TrainError::NothingToEvaluate);
    }
    let loss = sum / weight;
    Ok(LossReport {
        loss,
        perplexity: loss.exp(),
        tokens: weight as u64,
        metrics: metrics.means(weight),
    })
}
