//! Padding, packing and the KV cache give the same numbers as the plain forward.

use std::path::PathBuf;

use burn::backend::NdArray;
use gmt_models::{LlamaForCausalLm, TokenBatch, load_hf_dir};

fn model(name: &str) -> LlamaForCausalLm<NdArray> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/hf")
        .join(name);
    load_hf_dir(dir, &Default::default()).unwrap()
}

fn logits(model: &LlamaForCausalLm<NdArray>, batch: &TokenBatch) -> Vec<f32> {
    model
        .forward(batch)
        .unwrap()
        .logits
        .into_data()
        .to_vec()
        .unwrap()
}

fn assert_close(a: &[f32], b: &[f32], what: &str) {
    let worst = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-5, "{what}: differs by {worst}");
}

const VOCAB: usize = 96;

#[test]
fn packed_examples_do_not_see_each_other() {
    for name in ["llama-tiny", "mistral-tiny"] {
        let m = model(name);
        let a: Vec<u32> = vec![5, 17, 33, 2, 80, 41, 7];
        let b: Vec<u32> = vec![9, 64, 12, 3, 55];
        let alone_a = logits(&m, &TokenBatch::new(a.clone(), 1, a.len()));
        let alone_b = logits(&m, &TokenBatch::new(b.clone(), 1, b.len()));

        let packed = TokenBatch {
            position_ids: Some((0..a.len()).chain(0..b.len()).collect()),
            segment_ids: Some(a.iter().map(|_| 0).chain(b.iter().map(|_| 1)).collect()),
            ..TokenBatch::new([a.clone(), b.clone()].concat(), 1, a.len() + b.len())
        };
        let both = logits(&m, &packed);
        assert_close(
            &both[..a.len() * VOCAB],
            &alone_a,
            &format!("{name}: first example"),
        );
        assert_close(
            &both[a.len() * VOCAB..],
            &alone_b,
            &format!("{name}: second example"),
        );
    }
}

#[test]
fn right_padding_does_not_change_real_tokens() {
    let m = model("llama-tiny");
    let row: Vec<u32> = vec![4, 8, 15, 16, 23, 42];
    let alone = logits(&m, &TokenBatch::new(row.clone(), 1, row.len()));
    let mut ids = row.clone();
    ids.extend([0, 0, 0]);
    let padded = TokenBatch {
        attention_mask: Some((0..9).map(|i| i < 6).collect()),
        ..TokenBatch::new(ids, 1, 9)
    };
    let out = logits(&m, &padded);
    assert_close(&out[..6 * VOCAB], &alone, "padded row");
    assert!(
        out.iter().all(|v| v.is_finite()),
        "padding positions stay finite"
    );
}

#[test]
fn kv_cache_decoding_equals_the_full_forward() {
    for name in ["llama3-tiny", "mistral-tiny"] {
        let m = model(name);
        let ids: Vec<u32> = (0..11).map(|i| (i * 13 + 5) % VOCAB as u32).collect();
        let full = logits(&m, &TokenBatch::new(ids.clone(), 1, ids.len()));
        let mut cache = m.new_cache();
        let mut incremental: Vec<f32> = m
            .forward_cached(&ids[..4], &mut cache)
            .unwrap()
            .into_data()
            .to_vec()
            .unwrap();
        for &id in &ids[4..] {
            incremental.extend(
                m.forward_cached(&[id], &mut cache)
                    .unwrap()
                    .into_data()
                    .to_vec::<f32>()
                    .unwrap(),
            );
        }
        assert_eq!(cache.len(), ids.len());
        assert_close(&incremental, &full, name);
    }
}

#[test]
fn bad_batches_are_errors() {
    let m = model("llama-tiny");
    let err = m
        .forward(&TokenBatch::new(vec![1, 2, 300], 1, 3))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("token id 300 at row 0, column 2 is outside the vocabulary of 96"),
        "{err}"
    );
    let err = m
        .forward(&TokenBatch::new(vec![1, 2, 3], 2, 2))
        .unwrap_err()
        .to_string();
    assert!(err.contains("input_ids has 3 entries"), "{err}");
    let err = m
        .forward(&TokenBatch::new(vec![1, 2], 1, 2).with_labels(vec![-100, 96]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("label 96"), "{err}");
}
