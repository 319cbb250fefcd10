//! Padding, packing and the KV cache (one sequence or a left-padded batch) give the same
//! numbers as the plain forward.

use crate::hf_fixture;
use burn::backend::NdArray;
use burn::tensor::Tensor;
use gmt_models::{
    GenerationConfig, LlamaForCausalLm, TokenBatch, generate, generate_batch, load_hf_dir,
};

fn model(name: &str) -> LlamaForCausalLm<NdArray> {
    load_hf_dir(hf_fixture(name), &Default::default()).unwrap()
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

/// The last position's logits of each row of `[batch, seq, vocab]`.
fn last_logits(t: Tensor<NdArray, 3>) -> Vec<Vec<f32>> {
    let [b, s, v] = t.dims();
    (0..b)
        .map(|r| {
            t.clone()
                .slice([r..r + 1, s - 1..s, 0..v])
                .into_data()
                .to_vec()
                .unwrap()
        })
        .collect()
}

#[test]
fn left_padded_batch_decoding_equals_each_row_alone() {
    let seq = |len: u32, salt: u32| -> Vec<u32> {
        (0..len)
            .map(|i| (i * 7 + salt * 11 + 3) % VOCAB as u32)
            .collect()
    };
    let prompts = [seq(3, 1), seq(7, 2), seq(5, 3)];
    let follow = [seq(6, 4), seq(6, 5), seq(6, 6)];
    // Row 1 feeds padding at step 2 (as a finished row does): the gap must change nothing.
    let gap = |row: usize, step: usize| row == 1 && step == 2;
    for name in ["llama3-tiny", "mistral-tiny"] {
        let m = model(name);
        let alone: Vec<Vec<Vec<f32>>> = (0..3)
            .map(|r| {
                let mut cache = m.new_cache();
                let mut out = last_logits(m.forward_cached(&prompts[r], &mut cache).unwrap());
                for (step, &id) in follow[r].iter().enumerate() {
                    if !gap(r, step) {
                        out.extend(last_logits(m.forward_cached(&[id], &mut cache).unwrap()));
                    }
                }
                out
            })
            .collect();

        let (mut ids, mut padding) = (Vec::new(), Vec::new());
        for p in &prompts {
            ids.extend(std::iter::repeat_n(0, 7 - p.len()).chain(p.iter().copied()));
            padding.extend((0..7).map(|i| i < 7 - p.len()));
        }
        let mut cache = m.new_cache();
        let first = m
            .forward_cached_batch(&ids, &padding, 3, &mut cache)
            .unwrap();
        let mut batched: Vec<Vec<Vec<f32>>> =
            last_logits(first).into_iter().map(|r| vec![r]).collect();
        for step in 0..6 {
            let ids: Vec<u32> = follow.iter().map(|f| f[step]).collect();
            let padding: Vec<bool> = (0..3).map(|r| gap(r, step)).collect();
            let out = last_logits(
                m.forward_cached_batch(&ids, &padding, 3, &mut cache)
                    .unwrap(),
            );
            for (r, logits) in out.into_iter().enumerate() {
                if !gap(r, step) {
                    batched[r].push(logits);
                }
            }
        }
        for r in 0..3 {
            assert_eq!(alone[r].len(), batched[r].len());
            for (a, b) in alone[r].iter().zip(&batched[r]) {
                assert_close(b, a, &format!("{name} row {r}"));
            }
        }
        let err = m
            .forward_cached_batch(&[1, 2], &[false, false], 2, &mut cache)
            .unwrap_err();
        assert!(err.to_string().contains("cache holds 3 rows"), "{err}");
    }
}

#[test]
fn batched_generation_gives_each_prompt_its_own_continuation() {
    let m = model("llama-tiny");
    let prompts: [&[u32]; 3] = [&[5, 9, 2], &[17, 3, 8, 40, 11, 6], &[1]];
    let free = GenerationConfig {
        max_new_tokens: 8,
        stop_tokens: vec![u32::MAX],
        ..Default::default()
    };
    // Stop on row 0's third token, so that row finishes while the others go on.
    let row0 = generate(&m, prompts[0], &free, |_| {}).unwrap();
    let config = GenerationConfig {
        stop_tokens: vec![row0.tokens[2]],
        ..free
    };
    let alone: Vec<_> = prompts
        .iter()
        .map(|p| generate(&m, p, &config, |_| {}).unwrap())
        .collect();
    let batched = generate_batch(&m, &prompts, &config).unwrap();
    assert_eq!(batched, alone);
    assert!(batched[0].stopped, "row 0 stops early");
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
