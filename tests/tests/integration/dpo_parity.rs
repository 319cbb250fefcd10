//! DPO against PyTorch (`shared/fixtures/dpo`, see its README): a policy and a reference tiny
//! Llama, three pairs of different lengths, batched as gmt-data batches them (right-padded,
//! chosen rows then rejected rows). Checked: the summed log-probabilities of both models, the
//! loss for three (β, label smoothing) settings, the rewards, and every gradient of the β 0.1
//! loss. Tolerances are the on ndarray (log-probs 1e-5, losses 1e-6, gradients 1e-5 of
//! each tensor's largest magnitude) and the cross-backend suite's on other backends.

use std::collections::BTreeMap;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use gmt_models::{
    HostTensor, IGNORE_INDEX, LlamaForCausalLm, TokenBatch, load_hf_dir, named_gradients,
};
use gmt_train::{Dpo, DpoConfig, Objective, PreferenceBatch, reference_log_probs};

use crate::cross_backend::{assert_within, max_abs, read_tensors, shared};

/// Tolerances of one backend.
pub struct DpoTolerances {
    /// Summed log-probabilities, absolute.
    pub log_probs: f32,
    /// Losses and rewards, absolute.
    pub loss: f32,
    /// Gradients, relative to each tensor's largest |gradient|.
    pub grads: f32,
}

/// The three pairs as one micro-batch: rows = prompt + response, right-padded, labels on the
/// response only.
fn fixture_batch(ints: &BTreeMap<String, Vec<i64>>) -> TokenBatch {
    let width = ints["prompt_ids"].len() / 3;
    let row = |name: &str, i: usize| -> Vec<i64> {
        ints[name][i * width..(i + 1) * width]
            .iter()
            .copied()
            .take_while(|&t| t >= 0)
            .collect()
    };
    let mut rows = Vec::new();
    for response in ["chosen_ids", "rejected_ids"] {
        for i in 0..3 {
            let (prompt, resp) = (row("prompt_ids", i), row(response, i));
            let labels: Vec<i64> = std::iter::repeat_n(IGNORE_INDEX, prompt.len())
                .chain(resp.iter().copied())
                .collect();
            rows.push((prompt.into_iter().chain(resp).collect::<Vec<_>>(), labels));
        }
    }
    let seq = rows.iter().map(|(ids, _)| ids.len()).max().unwrap();
    let mut batch = TokenBatch {
        batch: rows.len(),
        seq_len: seq,
        attention_mask: Some(Vec::new()),
        labels: Some(Vec::new()),
        ..TokenBatch::default()
    };
    for (ids, labels) in rows {
        let pad = seq - ids.len();
        batch.input_ids.extend(ids.iter().map(|&t| t as u32));
        batch.input_ids.extend(std::iter::repeat_n(0, pad));
        let mask = batch.attention_mask.as_mut().unwrap();
        mask.extend(std::iter::repeat_n(true, ids.len()));
        mask.extend(std::iter::repeat_n(false, pad));
        let l = batch.labels.as_mut().unwrap();
        l.extend(labels);
        l.extend(std::iter::repeat_n(IGNORE_INDEX, pad));
    }
    batch
}

/// Log-probabilities, losses, rewards and gradients of DPO against the PyTorch fixture.
pub fn check_dpo<B: AutodiffBackend>(device: &B::Device, backend: &str, tol: &DpoTolerances) {
    let dir = shared().join("dpo");
    let (expected, ints, _) = read_tensors(&dir.join("cases.safetensors"));
    let policy: LlamaForCausalLm<B> = load_hf_dir(dir.join("policy"), device).unwrap();
    let reference: LlamaForCausalLm<B::InnerBackend> =
        load_hf_dir(shared().join("hf/llama-tiny"), device).unwrap();
    let mut batch = PreferenceBatch {
        tokens: fixture_batch(&ints),
        reference: None,
    };
    let what = |x: &str| format!("{backend} dpo {x}");

    let reference_logps = reference_log_probs(&reference, &batch).unwrap();
    let policy_logps = reference_log_probs(&policy.valid(), &batch).unwrap();
    for (name, values) in [("reference", &reference_logps), ("policy", &policy_logps)] {
        let chosen: Vec<f32> = values.iter().map(|v| v.chosen).collect();
        let rejected: Vec<f32> = values.iter().map(|v| v.rejected).collect();
        let key = |side: &str| format!("{name}_logp_{side}");
        assert_within(
            &chosen,
            &expected[&key("chosen")].data,
            tol.log_probs,
            &what(&key("chosen")),
        );
        assert_within(
            &rejected,
            &expected[&key("rejected")].data,
            tol.log_probs,
            &what(&key("rejected")),
        );
    }
    batch.reference = Some(reference_logps);

    for (beta, smoothing) in [(0.1, 0.0), (0.5, 0.0), (0.1, 0.2)] {
        let dpo = Dpo::new(DpoConfig {
            beta,
            label_smoothing: smoothing,
            ..DpoConfig::default()
        })
        .unwrap();
        let out = dpo.loss(&policy.valid(), &batch).unwrap();
        let loss = HostTensor::from_tensor(out.loss.unwrap()).data;
        let key = format!("loss.beta{beta}.ls{smoothing:.1}");
        assert_within(&loss, &expected[&key].data, tol.loss, &what(&key));
        assert_eq!(out.weight, 3.0, "a micro-batch weighs as many as its pairs");
        if beta == 0.1 && smoothing == 0.0 {
            // The metrics are sums over pairs; the fixture has each pair's reward.
            let sum = |k: &str| expected[k].data.iter().map(|&x| f64::from(x)).sum::<f64>();
            for (metric, key) in [
                ("rewards/chosen", "reward_chosen.beta0.1"),
                ("rewards/rejected", "reward_rejected.beta0.1"),
            ] {
                let got = out.metrics.get(metric).unwrap() as f32;
                assert_within(
                    &[got],
                    &[sum(key) as f32],
                    3.0 * tol.loss.max(1e-6),
                    &what(metric),
                );
            }
        }
    }

    let dpo = Dpo::new(DpoConfig::default()).unwrap();
    let loss = dpo.loss(&policy, &batch).unwrap().loss.unwrap();
    let grads = named_gradients(&policy, &loss.backward());
    assert_eq!(
        grads.len(),
        expected.keys().filter(|k| k.starts_with("grad.")).count()
    );
    for (param, grad) in grads {
        let reference = &expected[&format!("grad.{param}")];
        let tolerance = tol.grads * max_abs(&reference.data);
        assert_within(
            &grad.data,
            &reference.data,
            tolerance,
            &what(&format!("grad {param}")),
        );
    }
}
