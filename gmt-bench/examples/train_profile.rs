//! One training configuration of SmolLM2-135M (batch 4 × 128, ndarray), timed phase by
//! phase, with the process's peak memory at the end:
//! `cargo run --release -p gmt-bench --features profile --example train_profile -- [sft|gmt] [steps]`.
use std::time::Instant;

use burn::backend::{Autodiff, NdArray};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use gmt_bench::{random_model, smollm2_135m_config};
use gmt_core::GmtConfig;
use gmt_models::{LlamaForCausalLm, TokenBatch};
use gmt_train::memory::peak_rss;

type B = Autodiff<NdArray>;

fn run<O: Optimizer<LlamaForCausalLm<B>, B>>(
    mut model: LlamaForCausalLm<B>,
    mut optim: O,
    steps: usize,
    batch: &TokenBatch,
) {
    for _ in 0..steps {
        let start = Instant::now();
        let loss = model.forward(batch).unwrap().loss.unwrap();
        let _ = loss.clone().into_scalar();
        let forward = start.elapsed().as_secs_f64();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let backward = start.elapsed().as_secs_f64() - forward;
        model = optim.step(1e-5, model, grads);
        let total = start.elapsed().as_secs_f64();
        println!(
            "forward {forward:.2} s, backward {backward:.2} s, optimizer {:.2} s: {:.1} tokens/s",
            total - forward - backward,
            512.0 / total
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or("sft");
    let steps = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3);
    let config = smollm2_135m_config();
    let model = random_model::<B>(&config, &Default::default(), 0);
    let ids: Vec<u32> = (0..512).map(|i| (i * 7919 % 49152) as u32).collect();
    let batch =
        TokenBatch::new(ids.clone(), 4, 128).with_labels(ids.iter().map(|&i| i as i64).collect());
    let adamw = AdamWConfig::new().with_epsilon(1e-8).with_weight_decay(0.0);
    match mode {
        "gmt" => {
            let optim = GmtConfig::new(0.3).init(adamw.init(), &model).unwrap();
            run(model, optim, steps, &batch);
        }
        _ => run(model, adamw.init::<B, LlamaForCausalLm<B>>(), steps, &batch),
    }
    let peak = peak_rss().unwrap_or(0) as f64 / (1u64 << 30) as f64;
    println!("{mode}: peak RSS {peak:.2} GiB");
}
