//! A training step of SmolLM2-135M on the CPU backend (ndarray), batch 4 × 128 tokens:
//! - `forward_backward`: loss and gradients — the throughput figure (tokens/s = 512 / time)
//! - `sft_step` / `gmt_step`: forward, backward and an AdamW step, plain or with GMT
//!   (ratio 0.3, tensor scope)
//!
//! Weights are random with SmolLM2-135M's config (throughput does not depend on values).
//! Peak resident memory of the whole run is printed at the end (VmHWM).

use std::time::Duration;

use burn::backend::{Autodiff, NdArray};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gmt_bench::{peak_rss_bytes, random_model, smollm2_135m_config};
use gmt_core::GmtConfig;
use gmt_models::{LlamaForCausalLm, TokenBatch};
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

fn step<O: Optimizer<LlamaForCausalLm<B>, B>>(
    model: LlamaForCausalLm<B>,
    optim: &mut O,
    batch: &TokenBatch,
) -> LlamaForCausalLm<B> {
    let loss = model.forward(batch).unwrap().loss.unwrap();
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    optim.step(1e-5, model, grads)
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
        })
    });

    let adamw = || AdamWConfig::new().with_epsilon(1e-8).with_weight_decay(0.0);
    let mut sft_model = Some(random_model::<B>(&config, &device, 0));
    let mut sft = adamw().init::<B, LlamaForCausalLm<B>>();
    group.bench_function("sft_step", |b| {
        b.iter(|| sft_model = Some(step(sft_model.take().unwrap(), &mut sft, &batch)))
    });
    let mut gmt_model = Some(random_model::<B>(&config, &device, 0));
    let mut gmt = GmtConfig::new(0.3)
        .init(adamw().init(), gmt_model.as_ref().unwrap())
        .unwrap();
    group.bench_function("gmt_step", |b| {
        b.iter(|| gmt_model = Some(step(gmt_model.take().unwrap(), &mut gmt, &batch)))
    });
    group.finish();
    if let Some(bytes) = peak_rss_bytes() {
        eprintln!(
            "peak RSS of the whole benchmark run: {:.2} GiB",
            bytes as f64 / (1u64 << 30) as f64
        );
    }
}

criterion_group!(benches, train_step);
criterion_main!(benches);
