//! Losses over next-token log-probabilities, with Transformers' semantics: position t's logits
//! predict `labels[t + 1]`, and labels equal to -100 count nothing.

use burn::tensor::{FloatDType, IndexingUpdateOp, Int, Tensor, TensorData, backend::Backend};

/// Label value that carries no loss.
pub const IGNORE_INDEX: i64 = -100;

/// Mean next-token cross-entropy: position t's logits predict `labels[t + 1]` (labels are
/// shifted here), labels equal to -100 are ignored, and the mean runs over the counted
/// tokens. Returns the loss and that count. With nothing to count the loss is 0 (where
/// Transformers would give NaN), so an all-prompt micro-batch contributes nothing.
pub fn causal_lm_loss<B: Backend>(logits: Tensor<B, 3>, labels: &[i64]) -> (Tensor<B, 1>, usize) {
    let Some(picked) = LabelLogProbs::new(logits.clone(), labels) else {
        return (logits.cast(FloatDType::F32).sum().mul_scalar(0.0), 0);
    };
    let count = picked.counts.iter().sum::<usize>();
    if count == 0 {
        return (logits.cast(FloatDType::F32).sum().mul_scalar(0.0), 0);
    }
    let loss = picked.log_probs.sum().neg().div_scalar(count as f64);
    (loss, count)
}

/// The summed log-probability of each row's counted tokens (labels other than -100), with
/// the same shift as [`causal_lm_loss`]: `[batch]`, and how many tokens each row counts. A
/// row that counts nothing sums to 0. This is what preference losses (DPO) compare: the
/// log-likelihood of a whole response given its prompt.
pub fn sequence_log_probs<B: Backend>(
    logits: Tensor<B, 3>,
    labels: &[i64],
) -> (Tensor<B, 1>, Vec<usize>) {
    let [batch, ..] = logits.dims();
    match LabelLogProbs::new(logits.clone(), labels) {
        Some(picked) => {
            let per_row = picked.log_probs.reshape([batch as i32, -1]).sum_dim(1);
            (per_row.reshape([batch]), picked.counts)
        }
        None => (
            logits
                .cast(FloatDType::F32)
                .sum_dim(2)
                .sum_dim(1)
                .reshape([batch])
                .mul_scalar(0.0),
            vec![0; batch],
        ),
    }
}

/// log p(label) at every shifted position, 0 where the label is ignored.
struct LabelLogProbs<B: Backend> {
    /// `[batch · seq_len]`, row-major: position t holds log p(`labels[t + 1]`), and each row's
    /// last position, which predicts nothing, holds 0.
    log_probs: Tensor<B, 1>,
    /// Counted tokens per row.
    counts: Vec<usize>,
}

/// Per position, row-major: the label it predicts (`labels[t + 1]`; 0 where ignored), its
/// weight (1 counted, 0 ignored or a row's last position), and each row's counted tokens.
fn shifted_targets(labels: &[i64], batch: usize, seq: usize) -> (Vec<i64>, Vec<f32>, Vec<usize>) {
    let mut targets = Vec::with_capacity(batch * seq);
    let mut weights = Vec::with_capacity(batch * seq);
    let mut counts = vec![0; batch];
    for (b, count) in counts.iter_mut().enumerate() {
        for t in 0..seq {
            let label = if t + 1 < seq {
                labels[b * seq + t + 1]
            } else {
                IGNORE_INDEX
            };
            let counted = label != IGNORE_INDEX;
            *count += usize::from(counted);
            targets.push(if counted { label } else { 0 });
            weights.push(if counted { 1.0f32 } else { 0.0 });
        }
    }
    (targets, weights, counts)
}

impl<B: Backend> LabelLogProbs<B> {
    /// `None` for sequences of one token, which predict nothing.
    fn new(logits: Tensor<B, 3>, labels: &[i64]) -> Option<Self> {
        let [batch, seq, vocab] = logits.dims();
        if seq < 2 {
            return None;
        }
        let device = logits.device();
        // Every position, the last of each row included with weight 0: the logits then
        // reshape without a copy, where dropping the last position would copy them (and its
        // backward would allocate a logits-sized zero tensor); the extra row per sequence
        // costs 1/seq of it.
        let rows = batch * seq;
        let (targets, weights, counts) = shifted_targets(labels, batch, seq);
        let targets = Tensor::<B, 2, Int>::from_data(TensorData::new(targets, [rows, 1]), &device);
        let weights = Tensor::<B, 2>::from_data(TensorData::new(weights, [rows, 1]), &device);
        // In fp32 whatever the logits' format, as Transformers' loss upcasts them: a softmax
        // over a large vocabulary is not to be rounded to bf16.
        let logits = logits.reshape([rows, vocab]).cast(FloatDType::F32);

        // The values, computed outside the autodiff graph: log p = (x_t − max) − log Σ exp(x −
        // max), the same operations in the same order as burn's `log_softmax` followed by a
        // gather, so the values are those of the textbook formulation to the bit.
        let detached = logits.clone().detach();
        let max = detached.clone().max_dim(1);
        let label_logits = detached.clone().gather(1, targets.clone());
        let exp = (detached - max.clone()).exp();
        let sums = exp.clone().sum_dim(1);
        let values = (label_logits - max - sums.clone().log()) * weights.clone();
        // Only an autodiff backend takes a gradient (a plain one evaluates, e.g. a frozen DPO
        // reference); burn offers no test for whether this tensor is tracked.
        if !B::ad_enabled(&device) {
            return Some(Self {
                log_probs: values.reshape([rows]),
                counts,
            });
        }

        // The gradient, supplied in one piece: ∂ log p / ∂x = w · (onehot(t) − softmax(x)).
        // Autodiff through log-softmax and gather would write several logits-sized tensors
        // forward and backward (≈ 9% of a SmolLM2 step on the CPU); here the backward pass is
        // one product with `coefficients`. `surrogate − detach(surrogate)` is 0 in value and
        // carries exactly that gradient, so the result equals `values` and differentiates as
        // log p. (It needs finite logits, as a model's are: a −∞ logit would make the product
        // NaN where log-softmax would not.)
        let coefficients = (exp * (weights.clone() / sums)).scatter(
            1,
            targets,
            weights.neg(),
            IndexingUpdateOp::Add,
        );
        let surrogate = (logits * coefficients).sum_dim(1).neg();
        let log_probs = surrogate.clone() - surrogate.detach() + values;
        Some(Self {
            log_probs: log_probs.reshape([rows]),
            counts,
        })
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, NdArray};
    use burn::tensor::activation::log_softmax;

    use super::*;

    type Ad = Autodiff<NdArray>;

    /// Logits `[2, 5, 7]` with spread-out values, and labels with ignored positions.
    fn case() -> (Tensor<Ad, 3>, Vec<i64>) {
        let values: Vec<f32> = (0..70)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.7)
            .collect();
        let logits =
            Tensor::<Ad, 3>::from_data(TensorData::new(values, [2, 5, 7]), &Default::default())
                .require_grad();
        let labels = vec![3, 1, -100, 6, 0, -100, -100, 2, 5, 4];
        (logits, labels)
    }

    /// log p(label) by autodiff through burn's log-softmax and a gather: the textbook form.
    fn textbook(logits: Tensor<Ad, 3>, labels: &[i64]) -> Tensor<Ad, 1> {
        let [batch, seq, vocab] = logits.dims();
        let (targets, weights, _) = shifted_targets(labels, batch, seq);
        let rows = batch * seq;
        let device = logits.device();
        let targets = Tensor::<Ad, 2, Int>::from_data(TensorData::new(targets, [rows, 1]), &device);
        let weights = Tensor::<Ad, 1>::from_data(TensorData::new(weights, [rows]), &device);
        log_softmax(logits.reshape([rows, vocab]), 1)
            .gather(1, targets)
            .reshape([rows])
            * weights
    }

    fn host<const D: usize>(t: Tensor<NdArray, D>) -> Vec<f32> {
        t.into_data().into_vec().unwrap()
    }

    fn assert_close(a: &[f32], b: &[f32]) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-6 * (1.0 + y.abs()), "{a:?}\n{b:?}");
        }
    }

    /// `ours` equals `theirs` to the bit (the same operations in the same order), and the
    /// gradient of their sums with respect to `logits` agrees within 1e-6.
    fn assert_agrees(logits: &Tensor<Ad, 3>, ours: Tensor<Ad, 1>, theirs: Tensor<Ad, 1>) {
        assert_eq!(host(ours.clone().inner()), host(theirs.clone().inner()));
        let (ours, theirs) = (ours.sum().backward(), theirs.sum().backward());
        assert_close(
            &host(logits.grad(&ours).unwrap()),
            &host(logits.grad(&theirs).unwrap()),
        );
    }

    #[test]
    fn causal_lm_loss_has_the_textbook_value_and_gradient() {
        let (logits, labels) = case();
        let (loss, count) = causal_lm_loss(logits.clone(), &labels);
        assert_eq!(count, 6);
        let expected = textbook(logits.clone(), &labels)
            .sum()
            .neg()
            .div_scalar(6.0);
        assert_agrees(&logits, loss, expected);
    }

    #[test]
    fn sequence_log_probs_differentiate_per_row() {
        let (logits, labels) = case();
        let (rows, counts) = sequence_log_probs(logits.clone(), &labels);
        assert_eq!(counts, vec![3, 3]);
        let expected = textbook(logits.clone(), &labels)
            .reshape([2, 5])
            .sum_dim(1)
            .reshape([2]);
        // Rows weighted differently, as DPO's loss weighs chosen and rejected responses.
        let scale = Tensor::<Ad, 1>::from_data(
            TensorData::new(vec![0.25f32, -1.5], [2]),
            &Default::default(),
        );
        assert_agrees(&logits, rows * scale.clone(), expected * scale);
    }

    #[test]
    fn a_plain_backend_gets_the_same_values() {
        let (logits, labels) = case();
        let plain = logits.clone().inner();
        let (loss, _) = causal_lm_loss(plain, &labels);
        let (ad_loss, _) = causal_lm_loss(logits, &labels);
        assert_eq!(host(loss), host(ad_loss.inner()));
    }
}
