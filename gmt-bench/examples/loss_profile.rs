//! What the causal-LM loss costs on the CPU backend, apart from the model: SmolLM2-135M's
//! LM head (`[512, 576] × [576, 49152]`, batch 4 × 128) followed by `causal_lm_loss`
//! (log-softmax over 49152 logits per token, then the labels' entries), forward and backward,
//! against the same LM head followed by a plain mean (the head's own cost). The difference is
//! the loss's share of a training step.
//!
//! ```text
//! cargo run --release -p gmt-bench --features profile --example loss_profile -- [loss|mean] [steps=5]
//! ```
//!
//! Prints each step's forward and backward seconds and, last, their medians as `key=value`.
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::backend::{Autodiff, Flex};
use gmt_bench::{labelled_batch, median, random_tensor, smollm2_135m_config};
use gmt_models::causal_lm_loss;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

type B = Autodiff<Flex>;

const BATCH: usize = 4;
const SEQ: usize = 128;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "loss".into());
    if mode != "loss" && mode != "mean" {
        bail!("unknown mode `{mode}` (loss or mean)");
    }
    let steps: usize = match args.next() {
        Some(s) => s
            .parse()
            .with_context(|| format!("steps `{s}` is not a count"))?,
        None => 5,
    };
    let device = Default::default();
    let config = smollm2_135m_config();
    let (hidden_size, vocab) = (config.hidden_size, config.vocab_size);
    let rows = BATCH * SEQ;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let hidden = random_tensor::<B, 2>(&mut rng, [rows, hidden_size], 2.0, &device).require_grad();
    let head = random_tensor::<B, 2>(&mut rng, [vocab, hidden_size], 0.1, &device).require_grad();
    let labels = labelled_batch(vocab, BATCH, SEQ)
        .labels
        .context("the profiling batch is labelled")?;

    let (mut forward, mut backward) = (Vec::new(), Vec::new());
    for step in 0..steps {
        let start = Instant::now();
        let logits = hidden
            .clone()
            .matmul(head.clone().transpose())
            .reshape([BATCH, SEQ, vocab]);
        let loss = match mode.as_str() {
            "loss" => causal_lm_loss(logits, &labels).0,
            _ => logits.mean(),
        };
        let value: f32 = loss.clone().into_scalar();
        let f = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let grads = loss.backward();
        let d_head = head.grad(&grads).context("no gradient for the head")?;
        let d_hidden = hidden
            .grad(&grads)
            .context("no gradient for the hidden states")?;
        let check: f32 = d_head.sum().into_scalar() + d_hidden.sum().into_scalar();
        let b = start.elapsed().as_secs_f64();
        println!(
            "step {step}: forward {f:.3} s, backward {b:.3} s (loss {value:.6}, Σgrad {check:e})"
        );
        forward.push(f);
        backward.push(b);
    }
    println!("mode={mode}");
    println!("forward_s_median={:.3}", median(forward));
    println!("backward_s_median={:.3}", median(backward));
    Ok(())
}
