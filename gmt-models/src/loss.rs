//! The causal-LM loss with Transformers' semantics.

use burn::tensor::{Int, Tensor, TensorData, activation::log_softmax, backend::Backend};

/// Label value that carries no loss.
pub const IGNORE_INDEX: i64 = -100;

/// Mean next-token cross-entropy: position t's logits predict `labels[t + 1]` (labels are
/// shifted here), labels equal to -100 are ignored, and the mean runs over the counted
/// tokens. Returns the loss and that count. With nothing to count the loss is 0 (where
/// Transformers would give NaN), so an all-prompt micro-batch contributes nothing.
pub fn causal_lm_loss<B: Backend>(logits: Tensor<B, 3>, labels: &[i64]) -> (Tensor<B, 1>, usize) {
    let [batch, seq, vocab] = logits.dims();
    let device = logits.device();
    if seq < 2 {
        return (logits.sum().mul_scalar(0.0), 0);
    }
    let rows = batch * (seq - 1);
    let mut targets = Vec::with_capacity(rows);
    let mut weights = Vec::with_capacity(rows);
    for b in 0..batch {
        for t in 0..seq - 1 {
            let label = labels[b * seq + t + 1];
            let counted = label != IGNORE_INDEX;
            targets.push(if counted { label } else { 0 });
            weights.push(if counted { 1.0f32 } else { 0.0 });
        }
    }
    let count = weights.iter().filter(|w| **w > 0.0).count();
    if count == 0 {
        return (logits.sum().mul_scalar(0.0), 0);
    }
    let shifted = logits
        .slice([0..batch, 0..seq - 1, 0..vocab])
        .reshape([rows, vocab]);
    let log_probs = log_softmax(shifted, 1);
    let targets = Tensor::<B, 2, Int>::from_data(TensorData::new(targets, [rows, 1]), &device);
    let weights = Tensor::<B, 1>::from_data(TensorData::new(weights, [rows]), &device);
    let picked = log_probs.gather(1, targets).reshape([rows]);
    let loss = (picked * weights).sum().neg().div_scalar(count as f64);
    (loss, count)
}
