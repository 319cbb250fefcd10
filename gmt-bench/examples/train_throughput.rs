//! Training throughput of SmolLM2-135M (random weights, same shapes) on one backend, SFT and
//! GMT side by side on the same warm device, with the optimizer step timed on its own so the
//! cost of mask selection shows against the AdamW step:
//!
//! ```text
//! cargo run --release -p gmt-bench --features gpu --example train_throughput -- \
//!     --backend cuda|wgpu|cpu --batch 16 --seq 512 --steps 5 --warmup 2 [--ratio 0.2]
//! ```
//!
//! Every phase ends with a read-back, so asynchronous GPU backends are timed to completion.
use std::time::Instant;

use burn::backend::cuda::CudaDevice;
use burn::backend::ndarray::NdArrayDevice;
use burn::backend::wgpu::WgpuDevice;
use burn::backend::{Autodiff, Cuda, NdArray, Wgpu};
use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use gmt_bench::{labelled_batch, random_model, smollm2_135m_config};
use gmt_core::GmtConfig;
use gmt_models::{LlamaForCausalLm, TokenBatch};

struct Args {
    backend: String,
    batch: usize,
    seq: usize,
    steps: usize,
    warmup: usize,
    ratio: f64,
}

fn parse() -> Args {
    let mut args = Args {
        backend: "cpu".into(),
        batch: 4,
        seq: 128,
        steps: 3,
        warmup: 1,
        ratio: 0.2,
    };
    let raw: Vec<String> = std::env::args().skip(1).collect();
    for pair in raw.chunks(2) {
        let value = pair.get(1).map(String::as_str).unwrap_or_default();
        let number = || {
            value
                .parse::<usize>()
                .unwrap_or_else(|_| panic!("{}: not a number", pair[0]))
        };
        match pair[0].as_str() {
            "--backend" => args.backend = value.into(),
            "--batch" => args.batch = number(),
            "--seq" => args.seq = number(),
            "--steps" => args.steps = number(),
            "--warmup" => args.warmup = number(),
            "--ratio" => args.ratio = value.parse().expect("--ratio: a number"),
            other => panic!("unknown argument {other}"),
        }
    }
    args
}

/// Seconds of forward+backward and of the optimizer step, averaged over the timed steps.
fn time_steps<B, O>(
    mut model: LlamaForCausalLm<B>,
    mut optim: O,
    batch: &TokenBatch,
    args: &Args,
) -> (f64, f64)
where
    B: AutodiffBackend,
    O: Optimizer<LlamaForCausalLm<B>, B>,
{
    let (mut fwd_bwd, mut step) = (0.0, 0.0);
    for i in 0..args.warmup + args.steps {
        let start = Instant::now();
        let loss = model.forward(batch).unwrap().loss.unwrap();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        // Gradients exist once backward has run; a read-back waits for the device.
        let _ = model.norm.weight.val().sum().into_scalar();
        let mid = Instant::now();
        model = optim.step(1e-5, model, grads);
        let _ = model.norm.weight.val().sum().into_scalar();
        if i >= args.warmup {
            fwd_bwd += (mid - start).as_secs_f64();
            step += mid.elapsed().as_secs_f64();
        }
    }
    let n = args.steps as f64;
    (fwd_bwd / n, step / n)
}

fn bench<B: AutodiffBackend>(device: B::Device, args: &Args) {
    let config = smollm2_135m_config();
    let tokens = args.batch * args.seq;
    let batch = labelled_batch(config.vocab_size, args.batch, args.seq);
    let adamw = AdamWConfig::new().with_epsilon(1e-8).with_weight_decay(0.0);
    let model = random_model::<B>(&config, &device, 0);
    println!(
        "SmolLM2-135M shapes ({} parameters), batch {} × {} tokens, backend {}",
        model.num_params(),
        args.batch,
        args.seq,
        args.backend
    );
    let (fb, sft_step) = time_steps(
        model.clone(),
        adamw.init::<B, LlamaForCausalLm<B>>(),
        &batch,
        args,
    );
    let gmt = GmtConfig::new(args.ratio)
        .init(adamw.init(), &model)
        .unwrap();
    let (fb_gmt, gmt_step) = time_steps(model, gmt, &batch, args);
    for (name, fb, step) in [("sft (AdamW)", fb, sft_step), ("gmt", fb_gmt, gmt_step)] {
        println!(
            "{name:12} forward+backward {:.3} s, optimizer step {:.3} s: {:.0} tokens/s",
            fb,
            step,
            tokens as f64 / (fb + step)
        );
    }
    println!(
        "mask selection + masking: {:.3} s per step = {:.2}× the AdamW step; GMT step time {:.1}% over SFT",
        gmt_step - sft_step,
        (gmt_step - sft_step) / sft_step,
        100.0 * ((fb_gmt + gmt_step) / (fb + sft_step) - 1.0)
    );
}

fn main() {
    let args = parse();
    match args.backend.as_str() {
        "cuda" => bench::<Autodiff<Cuda>>(CudaDevice::new(0), &args),
        "wgpu" => bench::<Autodiff<Wgpu>>(WgpuDevice::DefaultDevice, &args),
        "cpu" => bench::<Autodiff<NdArray>>(NdArrayDevice::Cpu, &args),
        other => panic!("unknown backend {other}: cpu, wgpu or cuda"),
    }
}
