//! A training step of SmolLM2-135M on the CPU backend (ndarray), batch 4 × 128 tokens:
//! - `forward_backward`: loss and gradients — the throughput figure (tokens/s = 512 / time)
//! - `sft_step` / `gmt_step`: one `gmt_train::Trainer` step (forward, backward, Γ, GMT,
//!   AdamW) at mask ratio 0 (plain fine-tuning, as `gmt train --strategy none` runs it) or
//!   0.3 (tensor scope)
//! - `dpo_step`: one DPO step (GMT 0.3) over the same 4 rows read as 2 preference pairs (rows
//!   0–1 chosen, 2–3 rejected, the first 32 tokens the prompt), reference log-probabilities
//!   precomputed: against `gmt_step`, what the DPO objective costs over the causal-LM loss
//!   (the goal: at most 1.1×)
//!
//! Weights are random with SmolLM2-135M's config (throughput does not depend on values).
//! Peak resident memory of the whole run is printed at the end (VmHWM).

use std::time::Duration;

use burn::backend::{Autodiff, NdArray};
use burn::module::AutodiffModule;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gmt_bench::{random_model, smollm2_135m_config};
use gmt_core::GmtConfig;
use gmt_models::{LlamaConfig, LlamaForCausalLm, TokenBatch};
use gmt_train::memory::peak_rss;
use gmt_train::{
    CausalLm, Dpo, DpoConfig, Objective, PreferenceBatch, ReferenceLogProbs, ScheduleConfig,
    ScheduleKind, Trainer, TrainerConfig,
};
use rand::{Rng, SeedableRng};

type B = Autodiff<NdArray>;
const BATCH: usize = 4;
const SEQ: usize = 128;

fn batch(vocab: usize) -> TokenBatch {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let ids: Vec<u32> = (0..BATCH * SEQ)
        .map(|_| rng.random_range(0..vocab as u32))
        .collect();
    let labels = ids.iter().map(|&i| i as i64).collect();
    TokenBatch::new(ids, BATCH, SEQ).with_labels(labels)
}

fn trainer<O: Objective>(model: &LlamaConfig, mask_ratio: f64, objective: O) -> Trainer<B, O> {
    let config = TrainerConfig {
        gmt: GmtConfig::new(mask_ratio),
        schedule: ScheduleConfig {
            kind: ScheduleKind::Constant,
            ..ScheduleConfig::default()
        },
        ..TrainerConfig::default()
    };
    let model = random_model::<B>(model, &Default::default(), 0);
    Trainer::new(model, objective, &config, u64::MAX).unwrap()
}

fn train_step(c: &mut Criterion) {
    let config = smollm2_135m_config();
    let device = Default::default();
    let batch = batch(config.vocab_size);
    let mut group = c.benchmark_group("smollm2_135m_train_b4x128");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(60));
    group.throughput(Throughput::Elements((BATCH * SEQ) as u64));

    let model: LlamaForCausalLm<B> = random_model(&config, &device, 0);
    group.bench_function("forward_backward", |b| {
        b.iter(|| {
            let loss = model.forward(&batch).unwrap().loss.unwrap();
            loss.backward()
        });
    });

    drop(model);
    for (name, ratio) in [("sft_step", 0.0), ("gmt_step", 0.3)] {
        let mut trainer = trainer(&config, ratio, CausalLm);
        group.bench_function(name, |b| b.iter(|| trainer.step([batch.clone()]).unwrap()));
    }

    let mut trainer = trainer(&config, 0.3, Dpo::new(DpoConfig::default()).unwrap());
    let mut pairs = PreferenceBatch {
        tokens: batch.clone(),
        reference: None,
    };
    let labels = pairs.tokens.labels.as_mut().expect("labels");
    for (i, label) in labels.iter_mut().enumerate() {
        if i % SEQ < 32 {
            *label = -100;
        }
    }
    let mut reference = ReferenceLogProbs::default();
    reference
        .add_batch(&trainer.model().valid(), &pairs)
        .unwrap();
    reference.fill(&mut pairs).unwrap();
    group.bench_function("dpo_step", |b| {
        b.iter(|| trainer.step([pairs.clone()]).unwrap());
    });
    group.finish();
    if let Some(bytes) = peak_rss() {
        eprintln!(
            "peak RSS of the whole benchmark run: {:.2} GiB",
            bytes as f64 / (1u64 << 30) as f64
        );
    }
}

criterion_group!(benches, train_step);
criterion_main!(benches);
