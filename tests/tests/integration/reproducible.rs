//! Training on burn's Flex (the `gmt` binary's CPU backend) repeats to the bit at sizes where
//! its kernels go multi-threaded: a plain `sum` of over 4M entries there combines rayon chunks
//! in work-stealing order, and gemm splits its products over threads. The tiny fixture models
//! stay below every such threshold, so this runs a random model whose embedding and LM head
//! (40,000 × 128 each, 5.1M entries) cross them.

use burn::backend::{Autodiff, Flex};
use gmt_core::{GmtConfig, MaskScope};
use gmt_models::{LlamaConfig, LlamaForCausalLm, TokenBatch, WeightMap};

use crate::small_llama_config;
use gmt_train::{CausalLm, OptimConfig, ScheduleConfig, ScheduleKind, Trainer, TrainerConfig};

type B = Autodiff<Flex>;

const VOCAB: usize = 40_000;

fn config() -> LlamaConfig {
    LlamaConfig {
        hidden_size: 128,
        intermediate_size: 384,
        num_hidden_layers: 2,
        head_dim: 32,
        tie_word_embeddings: false,
        ..small_llama_config(VOCAB)
    }
}

/// Micro-batch `i`: 4 rows of 64 tokens spread over the vocabulary, every label real.
fn batch(i: u64) -> TokenBatch {
    let ids: Vec<u32> = (0..256u64)
        .map(|j| ((i * 7919 + j * 104_729 + j * j * 31) % VOCAB as u64) as u32)
        .collect();
    let labels = ids.iter().map(|&t| t as i64).collect();
    TokenBatch::new(ids, 4, 64).with_labels(labels)
}

/// Losses and final weights (as bits) of 3 steps of 2 micro-batches, clipped at norm 1.
fn run(mask_ratio: f64, scope: MaskScope) -> (Vec<u64>, Vec<(String, Vec<u32>)>) {
    let model: LlamaForCausalLm<B> =
        LlamaForCausalLm::from_weights(&config(), WeightMap::random(3), &Default::default())
            .unwrap();
    let trainer_config = TrainerConfig {
        gmt: GmtConfig::new(mask_ratio)
            .with_scope(scope)
            .with_max_grad_norm(Some(1.0)),
        optim: OptimConfig {
            lr: 1e-3,
            weight_decay: 0.01,
            ..OptimConfig::default()
        },
        schedule: ScheduleConfig {
            kind: ScheduleKind::Constant,
            warmup_steps: 0,
            min_lr_ratio: 1.0,
        },
    };
    let mut trainer = Trainer::new(model, CausalLm, &trainer_config, 3).unwrap();
    let mut losses = Vec::new();
    for s in 0..3 {
        let step = trainer.step([batch(2 * s), batch(2 * s + 1)]).unwrap();
        losses.push(step.loss().to_bits());
    }
    let weights = trainer
        .into_model()
        .hf_weights()
        .into_iter()
        .map(|(name, t)| (name, t.data.iter().map(|x| x.to_bits()).collect()))
        .collect();
    (losses, weights)
}

#[test]
fn flex_training_repeats_to_the_bit_where_its_kernels_are_multi_threaded() {
    // Plain fine-tuning (norms of whole tensors on the device) and GMT (selection and norms on
    // the host), each run three times.
    for (ratio, scope) in [(0.0, MaskScope::Tensor), (0.3, MaskScope::Global)] {
        let (losses, weights) = run(ratio, scope);
        for again in 1..3 {
            let (losses_again, weights_again) = run(ratio, scope);
            assert_eq!(losses, losses_again, "ratio {ratio}: losses of run {again}");
            for ((name, a), (_, b)) in weights.iter().zip(&weights_again) {
                let differing = a.iter().zip(b).filter(|(x, y)| x != y).count();
                assert_eq!(differing, 0, "ratio {ratio}: {name} differs in run {again}");
            }
        }
    }
}
