//! Parity with Hugging Face Transformers on the tiny reference models in
//! `shared/fixtures/hf/` (see its README): logits, loss and the gradient of every parameter,
//! on both CPU backends (burn-ndarray, the cross-backend reference, and burn's Flex, the
//! `gmt` binary's) at the same tolerances.

use std::collections::BTreeMap;
use std::path::Path;

use crate::hf_fixture;
use burn::backend::autodiff::checkpoint::strategy::{
    BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
};
use burn::backend::{Autodiff, Flex, NdArray};
use burn::module::Module;
use burn::tensor::ElementConversion;
use burn::tensor::backend::Backend;
use gmt_models::{HostTensor, LlamaForCausalLm, TokenBatch, load_hf_dir, named_gradients};
use safetensors::SafeTensors;

/// `input_ids` and `labels` (i64) of the fixture's cases.
fn ids(dir: &Path) -> (Vec<u32>, Vec<i64>, [usize; 2]) {
    let bytes = std::fs::read(dir.join("cases.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let read = |name: &str| -> (Vec<i64>, Vec<usize>) {
        let view = st.tensor(name).unwrap();
        let values = view
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        (values, view.shape().to_vec())
    };
    let (input_ids, shape) = read("input_ids");
    let (labels, _) = read("labels");
    (
        input_ids.iter().map(|&i| i as u32).collect(),
        labels,
        [shape[0], shape[1]],
    )
}

/// The float tensors of the cases file (logits, loss, grad.*).
fn cases(dir: &Path) -> BTreeMap<String, HostTensor> {
    let bytes = std::fs::read(dir.join("cases.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .filter(|(_, v)| v.dtype() == safetensors::Dtype::F32)
        .map(|(name, v)| {
            let data = v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            (
                name,
                HostTensor {
                    shape: v.shape().to_vec(),
                    data,
                },
            )
        })
        .collect()
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0.0f32, |m, x| m.max(x.abs()))
}

/// Checks logits, loss and gradients on backend `B` against Transformers; returns the
/// gradients by name.
fn check<B: Backend, C: CheckpointStrategy>(name: &str) -> Vec<(String, HostTensor)> {
    let dir = hf_fixture(name);
    let device = Default::default();
    let model: LlamaForCausalLm<Autodiff<B, C>> = load_hf_dir(&dir, &device).unwrap();
    let name = &format!("{name} on {}", B::name(&device));
    assert_eq!(
        model.num_params() as u64,
        model.config().num_parameters(),
        "{name}: parameters counted from the config"
    );
    let (input_ids, labels, [batch, seq]) = ids(&dir);
    let expected = cases(&dir);

    let out = model
        .forward(&TokenBatch::new(input_ids, batch, seq).with_labels(labels.clone()))
        .unwrap();
    let logits = HostTensor::from_tensor(out.logits.clone());
    let reference = &expected["logits"];
    assert_eq!(logits.shape, reference.shape);
    let worst = logits
        .data
        .iter()
        .zip(&reference.data)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    // Measured: within 1.2e-7 on all three models (ndarray and Flex alike).
    assert!(worst <= 1e-6, "{name}: logits differ by up to {worst}");

    let loss = out.loss.unwrap();
    let value: f32 = loss.clone().into_scalar().elem();
    let reference_loss = expected["loss"].data[0];
    assert!(
        (value - reference_loss).abs() <= 1e-6,
        "{name}: loss {value} vs {reference_loss}"
    );
    let counted = labels
        .chunks(seq)
        .map(|row| row[1..].iter().filter(|&&l| l != -100).count())
        .sum::<usize>();
    assert_eq!(out.tokens, counted);

    let grads = loss.backward();
    let named = named_gradients(&model, &grads);
    let expected_grads: Vec<&String> = expected.keys().filter(|k| k.starts_with("grad.")).collect();
    assert_eq!(
        named.len(),
        expected_grads.len(),
        "{name}: one gradient per parameter"
    );
    for (param, grad) in &named {
        let reference = expected
            .get(&format!("grad.{param}"))
            .unwrap_or_else(|| panic!("{name}: no reference gradient for {param}"));
        assert_eq!(grad.shape, reference.shape, "{name}: {param} shape");
        let scale = max_abs(&reference.data);
        let worst = grad
            .data
            .iter()
            .zip(&reference.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        // 1e-5 relative to the tensor's largest magnitude; measured: within 4.8e-7 on every
        // parameter of the three models (burn-ndarray's approximate SIMD `recip`, now off,
        // cost up to 2.5e-4 here). Real errors are orders larger (an off-by-one sliding window
        // moves logits by 0.07).
        let tolerance = 1e-5 * scale;
        assert!(
            worst <= tolerance,
            "{name}: grad of {param} off by {worst} (max |ref| {scale}, tolerance {tolerance})"
        );
    }
    named
}

/// Both parities on both CPU backends, and `--checkpointing balanced` (backward recomputes
/// element-wise results instead of keeping them) gives the very same gradients as keeping
/// everything.
fn check_with_and_without_checkpointing(name: &str) {
    check_backend::<NdArray>(name);
    check_backend::<Flex>(name);
}

fn check_backend<B: Backend>(name: &str) {
    let kept = check::<B, NoCheckpointing>(name);
    let recomputed = check::<B, BalancedCheckpointing>(name);
    let name = &format!("{name} on {}", B::name(&Default::default()));
    assert_eq!(kept.len(), recomputed.len());
    for ((param, a), (_, b)) in kept.iter().zip(&recomputed) {
        assert_eq!(a.shape, b.shape, "{name}: {param}");
        let differing = a
            .data
            .iter()
            .zip(&b.data)
            .filter(|(x, y)| x.to_bits() != y.to_bits())
            .count();
        assert_eq!(
            differing, 0,
            "{name}: {differing} entries of the gradient of {param} differ with checkpointing"
        );
    }
}

#[test]
fn llama_matches_transformers() {
    check_with_and_without_checkpointing("llama-tiny");
}

#[test]
fn llama3_with_rope_scaling_and_tied_embeddings_matches_transformers() {
    check_with_and_without_checkpointing("llama3-tiny");
}

#[test]
fn mistral_with_sliding_window_matches_transformers() {
    check_with_and_without_checkpointing("mistral-tiny");
}

/// burn-ndarray's `simd` feature computes `recip` with the approximate `_mm256_rcp_ps` on x86
/// (relative error up to 3.7e-4), which RMSNorm and burn's backward passes of division,
/// softmax and log all use; the workspace keeps that feature off. This names the cause when
/// a dependency turns burn's default features (and so `simd`) back on.
#[test]
fn ndarray_recip_is_exact() {
    let values: Vec<f32> = (1..=256).map(|i| 1.0 + i as f32 * 0.37).collect();
    let tensor =
        burn::tensor::Tensor::<NdArray, 1>::from_floats(values.as_slice(), &Default::default());
    let recip: Vec<f32> = tensor.recip().into_data().to_vec().unwrap();
    for (x, r) in values.iter().zip(&recip) {
        assert_eq!(
            *r,
            1.0 / x,
            "burn-ndarray's recip is approximate: is its `simd` feature on? Keep burn's default \
             features off (workspace Cargo.toml)"
        );
    }
}
