//! Peak memory of SmolLM2-135M training steps on the CPU against `gmt plan`'s estimate:
//! `cargo run --release -p gmt-bench --features profile --example memory_profile --
//! B T [none|balanced] [K] [ratio] [fp32|bf16-mixed]` (micro-batch size, sequence length, checkpointing,
//! micro-batches per step, mask ratio, precision). fp32 runs on burn-ndarray, bf16-mixed on
//! burn's Flex backend (the CPU backend with bf16 arithmetic). One configuration per
//! process: the peak (Linux `VmHWM`) is the process's.
use burn::backend::autodiff::checkpoint::strategy::{
    BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
};
use burn::backend::{Autodiff, Flex, NdArray};
use burn::tensor::backend::AutodiffBackend;
use gmt_bench::{labelled_batch, random_model, smollm2_135m_config};
use gmt_core::GmtConfig;
use gmt_train::memory::{Checkpointing, MemoryPlan, Precision, peak_rss};
use gmt_train::{CausalLm, Trainer, TrainerConfig};

const GIB: f64 = (1u64 << 30) as f64;

fn run<B: AutodiffBackend>(plan: &MemoryPlan, ratio: f64) {
    let (batch, seq, accum) = (plan.micro_batch_size, plan.seq_len, plan.grad_accum);
    let config = smollm2_135m_config();
    let model = random_model::<B>(&config, &Default::default(), 0);
    let before = peak_rss().unwrap_or(0);
    let trainer_config = TrainerConfig {
        gmt: GmtConfig::new(ratio),
        ..TrainerConfig::default()
    };
    let mut trainer = Trainer::new(model, CausalLm, &trainer_config, 3)
        .and_then(|t| t.with_precision(plan.precision))
        .expect("valid config");
    let micro = labelled_batch(config.vocab_size, batch, seq);
    for _ in 0..3 {
        let step = trainer.step(vec![micro.clone(); accum]).expect("a step");
        println!("step {}: loss {:.4}", step.step, step.loss());
    }
    let peak = peak_rss().unwrap_or(0);
    println!(
        "peak RSS {:.3} GiB (after building the model: {:.3} GiB)",
        peak as f64 / GIB,
        before as f64 / GIB
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg =
        |i: usize, default: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default);
    let (batch, seq) = (arg(1, 4), arg(2, 128));
    let checkpointing: Checkpointing = args
        .get(3)
        .map_or(Ok(Checkpointing::None), |s| s.parse())
        .expect("none or balanced");
    let accum = arg(4, 1);
    let ratio: f64 = args.get(5).and_then(|s| s.parse().ok()).unwrap_or(0.3);
    let precision: Precision = args
        .get(6)
        .map_or(Ok(Precision::Fp32), |s| s.parse())
        .expect("fp32 or bf16-mixed");
    let plan = MemoryPlan {
        micro_batch_size: batch,
        seq_len: seq,
        grad_accum: accum,
        checkpointing,
        precision,
        ..MemoryPlan::default()
    };
    let estimate = plan.estimate(&smollm2_135m_config());
    for (part, bytes) in estimate.parts() {
        println!("estimate {part:<12} {:.3} GiB", bytes as f64 / GIB);
    }
    println!(
        "estimate total        {:.3} GiB",
        estimate.total() as f64 / GIB
    );
    fn on<C: CheckpointStrategy>(plan: &MemoryPlan, ratio: f64) {
        match plan.precision {
            Precision::Fp32 => run::<Autodiff<NdArray, C>>(plan, ratio),
            _ => run::<Autodiff<Flex, C>>(plan, ratio),
        }
    }
    match checkpointing {
        Checkpointing::None => on::<NoCheckpointing>(&plan, ratio),
        Checkpointing::Balanced => on::<BalancedCheckpointing>(&plan, ratio),
    }
}
