//! Where a training step's memory peak is set: the process's resident size, and its peak
//! since the previous mark, after each phase of GMT steps of SmolLM2-135M (random weights) on
//! burn's Flex backend, the phases laid out as `Trainer::step` runs them:
//! `cargo run --release -p gmt-bench --features profile --example memory_phases --
//! [fp32|bf16] [steps] [B] [T]`.
//!
//! Linux only (`/proc/self/status`); one configuration per process.
use burn::backend::{Autodiff, Flex};
use burn::module::{Module, ModuleMapper, Param};
use burn::optim::GradientsParams;
use burn::tensor::{FloatDType, Tensor};
use gmt_bench::{labelled_batch, random_model, smollm2_135m_config};
use gmt_core::{GmtConfig, GradientMean};
use gmt_train::memory::{MemoryPlan, Precision, peak_rss, reset_peak_rss};
use gmt_train::{CausalLm, Objective, OptimConfig};

type B = Autodiff<Flex>;
const GIB: f64 = (1u64 << 30) as f64;

/// The process's resident size now (`VmRSS`).
fn resident() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<u64>().ok())
        .unwrap_or(0);
    kib * 1024
}

/// Prints the resident size and the peak since the last mark, and restarts the peak.
fn mark(phase: &str) {
    println!(
        "{phase:<34} resident {:>6.3} GiB   peak in phase {:>6.3} GiB",
        resident() as f64 / GIB,
        peak_rss().unwrap_or(0) as f64 / GIB
    );
    reset_peak_rss();
}

/// Every float parameter in bf16, as a trained leaf with the same id (`--precision bf16`).
struct ToBf16;

impl ModuleMapper<B> for ToBf16 {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        param.map(|t| Tensor::from_inner(t.inner().cast(FloatDType::BF16)).require_grad())
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let precision: Precision = args
        .get(1)
        .map_or(Ok(Precision::Fp32), |s| s.parse())
        .expect("fp32 or bf16");
    assert!(
        matches!(precision, Precision::Fp32 | Precision::Bf16),
        "fp32 or bf16 (bf16-mixed adds a working copy: see memory_profile)"
    );
    let arg = |i: usize, default: usize| args.get(i).map_or(default, |s| s.parse().unwrap());
    let (steps, batch, seq) = (arg(2, 2), arg(3, 4), arg(4, 128));

    let config = smollm2_135m_config();
    let plan = MemoryPlan {
        micro_batch_size: batch,
        seq_len: seq,
        precision,
        ..MemoryPlan::default()
    };
    let estimate = plan.estimate(&config);
    for (part, bytes) in estimate.parts() {
        println!("estimate {part:<12} {:.3} GiB", bytes as f64 / GIB);
    }
    println!(
        "estimate total       {:.3} GiB",
        estimate.total() as f64 / GIB
    );

    let mut model = random_model::<B>(&config, &Default::default(), 0);
    if precision == Precision::Bf16 {
        model = model.map(&mut ToBf16);
    }
    let mut optim = GmtConfig::new(0.3)
        .init(OptimConfig::default().adamw().init(), &model)
        .expect("a valid config");
    let micro = labelled_batch(config.vocab_size, batch, seq);
    mark("model built");

    for step in 1..=steps {
        println!("step {step}");
        let out = CausalLm.loss(&model, &micro).expect("a loss");
        let loss = out.loss.expect("labels carry loss");
        mark("  forward (loss)");
        let grads = loss.backward();
        mark("  backward");
        drop(loss);
        let grads = GradientsParams::from_grads(grads, &model);
        mark("  gradients by parameter");
        let mut sum = GradientMean::new();
        sum.add_weighted(&model, grads, out.weight).expect("a sum");
        let (sum, _) = sum.take_sum();
        let gamma = GradientMean::mean_of(&model, sum, out.weight).expect("a mean");
        mark("  Γ");
        let (stepped, _) = optim.try_step(1e-4, model, gamma).expect("a step");
        model = stepped;
        mark("  mask + AdamW");
    }
}
