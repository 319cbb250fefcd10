//! Times one SmolLM2-135M training step (batch 4 × 128) phase by phase on ndarray:
//! `cargo run --release -p gmt-bench --example train_profile`.
use std::time::Instant;

use burn::backend::{Autodiff, NdArray};
use gmt_bench::{random_model, smollm2_135m_config};
use gmt_models::TokenBatch;

fn main() {
    let config = smollm2_135m_config();
    let model = random_model::<Autodiff<NdArray>>(&config, &Default::default(), 0);
    let ids: Vec<u32> = (0..512).map(|i| (i * 7919 % 49152) as u32).collect();
    let batch = TokenBatch::new(ids.clone(), 4, 128).with_labels(ids.iter().map(|&i| i as i64).collect());
    for _ in 0..3 {
        let start = Instant::now();
        let out = model.forward(&batch).unwrap();
        let loss = out.loss.unwrap();
        let _ = loss.clone().into_scalar();
        let forward = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let _grads = loss.backward();
        let backward = start.elapsed().as_secs_f64();
        println!("forward {forward:.2} s, backward {backward:.2} s, {:.1} tokens/s", 512.0 / (forward + backward));
    }
}
