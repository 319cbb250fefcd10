//! gmt's side of `scripts/bench-vs-pytorch.sh`: one training step (or greedy decoding) of a
//! Hugging Face model directory on the CPU backend, timed phase by phase, printed as
//! `key=value` lines under the same names as `../shared/anchors/torch_train_step.py`.
//!
//! ```text
//! cargo run --release -p gmt-bench --features profile --example train_profile -- \
//!     HF_MODEL_DIR [batch=4] [seq=128] [steps=6] [sft|gmt-tensor|gmt-global|decode] [ratio=0.3]
//! ```
//!
//! Training modes: `steps` optimizer steps of one micro-batch each after two warm-up steps,
//! AdamW (lr 1e-5, ε 1e-8, no weight decay; gmt-core's `FusedAdamW` as `gmt train` uses it,
//! or burn's own with `GMT_BENCH_ADAMW=burn`), labels = inputs, every token real (no padding).
//! `optimizer_s_median` is the whole optimizer call: for the GMT modes, mask and AdamW
//! together (the anchor's `mask_s_median + optimizer_s_median`). Mode `decode`: `seq` new
//! tokens greedily for `batch` prompts of 16 tokens, with the KV cache and no stop token,
//! after one warm-up run. Peak RSS is the process's, so each mode runs in its own process.
//!
//! The backend is burn's Flex (the `gmt` binary's CPU backend, multi-threaded with SIMD);
//! `GMT_BENCH_BACKEND=ndarray` measures burn-ndarray instead. As `gmt --keep-freed-memory`
//! does (opt-in there), the allocator keeps what a step frees for the next step
//! (`gmt_train::memory::retain_freed_host_memory`); `GMT_BENCH_ALLOCATOR=default` leaves
//! glibc's defaults, for an A/B of that setting.
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::backend::{Autodiff, Flex, NdArray};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::ElementConversion;
use burn::tensor::backend::{AutodiffBackend, Backend};
use gmt_bench::median;
use gmt_core::{FusedAdamW, GmtConfig, MaskScope};
use gmt_models::{GenerationConfig, LlamaForCausalLm, TokenBatch, generate_batch, load_hf_dir};
use gmt_train::memory::{peak_rss, retain_freed_host_memory};

/// What to measure: training with an optimizer (`None`: plain AdamW; `Some`: GMT over it, with
/// this scope), or decoding.
enum Mode {
    Train(Option<MaskScope>),
    Decode,
}

impl Mode {
    fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "sft" => Self::Train(None),
            "gmt-tensor" => Self::Train(Some(MaskScope::Tensor)),
            "gmt-global" => Self::Train(Some(MaskScope::Global)),
            "decode" => Self::Decode,
            other => bail!("unknown mode `{other}` (sft, gmt-tensor, gmt-global or decode)"),
        })
    }
}

/// Times of one training step, in seconds.
struct StepTimes {
    forward: f64,
    backward: f64,
    optimizer: f64,
}

impl StepTimes {
    fn total(&self) -> f64 {
        self.forward + self.backward + self.optimizer
    }
}

fn train<B: AutodiffBackend, O: Optimizer<LlamaForCausalLm<B>, B>>(
    mut model: LlamaForCausalLm<B>,
    mut optim: O,
    steps: usize,
    batch: &TokenBatch,
) -> Result<(Vec<StepTimes>, f32)> {
    let mut times = Vec::new();
    let mut last_loss = f32::NAN;
    for step in 0..steps + 2 {
        let start = Instant::now();
        let loss = model
            .forward(batch)?
            .loss
            .context("the batch has no labels")?;
        // Reading the loss waits for the forward pass (a no-op wait on the CPU backend).
        last_loss = loss.clone().into_scalar().elem();
        let forward = start.elapsed().as_secs_f64();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let backward = start.elapsed().as_secs_f64() - forward;
        model = optim.step(1e-5, model, grads);
        let optimizer = start.elapsed().as_secs_f64() - forward - backward;
        if step >= 2 {
            times.push(StepTimes {
                forward,
                backward,
                optimizer,
            });
        }
    }
    Ok((times, last_loss))
}

/// [`train`] with `adamw` alone (`scope` `None`) or GMT around it.
fn train_with<B: AutodiffBackend, O: Optimizer<LlamaForCausalLm<B>, B>>(
    model: LlamaForCausalLm<B>,
    adamw: O,
    scope: Option<MaskScope>,
    ratio: f64,
    steps: usize,
    batch: &TokenBatch,
) -> Result<(Vec<StepTimes>, f32)> {
    match scope {
        None => train(model, adamw, steps, batch),
        Some(scope) => {
            let gmt = GmtConfig::new(ratio)
                .with_scope(scope)
                .init(adamw, &model)?;
            train(model, gmt, steps, batch)
        }
    }
}

/// Deterministic token ids spread over the vocabulary (the anchor draws them at random: the
/// time of a step does not depend on which ids it sees).
fn token_ids(count: usize, vocab: usize, salt: usize) -> Vec<u32> {
    (0..count)
        .map(|i| ((i * 7919 + salt * 104_729) % vocab) as u32)
        .collect()
}

fn decode<B: Backend>(
    model: &LlamaForCausalLm<B>,
    batch: usize,
    seq: usize,
    steps: usize,
) -> Result<()> {
    let vocab = model.config().vocab_size;
    let prompts: Vec<Vec<u32>> = (0..batch).map(|row| token_ids(16, vocab, row)).collect();
    let prompts: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let config = GenerationConfig {
        max_new_tokens: seq,
        // No id of the vocabulary: every run generates exactly `seq` tokens, as the anchor's
        // `min_new_tokens` makes Transformers do.
        stop_tokens: vec![u32::MAX],
        ..GenerationConfig::default()
    };
    let mut times = Vec::new();
    for run in 0..steps + 1 {
        let start = Instant::now();
        let out = generate_batch(model, &prompts, &config)?;
        let secs = start.elapsed().as_secs_f64();
        if out.iter().any(|g| g.tokens.len() != seq) {
            bail!("a row stopped before {seq} new tokens");
        }
        if run >= 1 {
            times.push(secs);
        }
    }
    let med = median(times);
    println!("decode_s_median={med:.3}");
    println!("decode_tokens_per_s={:.1}", (batch * seq) as f64 / med);
    print_peak_rss();
    Ok(())
}

/// The process's peak RSS, where the OS reports it (Linux); nothing printed elsewhere rather
/// than a made-up zero.
fn print_peak_rss() {
    if let Some(peak) = peak_rss() {
        println!("peak_rss_gib={:.2}", peak as f64 / (1u64 << 30) as f64);
    }
}

fn main() -> Result<()> {
    match std::env::var("GMT_BENCH_ALLOCATOR").as_deref() {
        Ok("retain") | Err(_) => {
            retain_freed_host_memory();
        }
        Ok("default") => {}
        Ok(other) => bail!("GMT_BENCH_ALLOCATOR={other}: retain or default"),
    }
    match std::env::var("GMT_BENCH_BACKEND").as_deref() {
        Ok("flex") | Err(_) => profile::<Autodiff<Flex>>("flex"),
        Ok("ndarray") => profile::<Autodiff<NdArray>>("ndarray"),
        Ok(other) => bail!("GMT_BENCH_BACKEND={other}: ndarray or flex"),
    }
}

fn profile<B: AutodiffBackend>(backend: &str) -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.into());
    let dir = args
        .first()
        .context("usage: train_profile HF_MODEL_DIR [batch] [seq] [steps] [mode] [ratio]")?;
    let batch: usize = arg(1, "4").parse().context("batch")?;
    let seq: usize = arg(2, "128").parse().context("seq")?;
    let steps: usize = arg(3, "6").parse().context("steps")?;
    let mode_name = arg(4, "sft");
    let mode = Mode::parse(&mode_name)?;
    let ratio: f64 = arg(5, "0.3").parse().context("ratio")?;
    if steps == 0 || batch == 0 || seq == 0 {
        bail!("batch, seq and steps must be positive");
    }
    let device = Default::default();
    // Both CPU backends run on rayon's global pool: one thread per core.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("backend={backend} threads={threads} mode={mode_name} batch={batch} seq={seq}");

    let scope = match mode {
        Mode::Decode => {
            // Inference runs on the inner backend, without autodiff's bookkeeping (as `gmt
            // generate` and `gmt eval` do).
            let model: LlamaForCausalLm<B::InnerBackend> =
                load_hf_dir(dir, &device).with_context(|| format!("cannot load {dir}"))?;
            return decode(&model, batch, seq, steps);
        }
        Mode::Train(scope) => scope,
    };
    let model: LlamaForCausalLm<B> =
        load_hf_dir(dir, &device).with_context(|| format!("cannot load {dir}"))?;
    let ids = token_ids(batch * seq, model.config().vocab_size, 0);
    let labels = ids.iter().map(|&i| i64::from(i)).collect();
    let tokens = TokenBatch::new(ids, batch, seq).with_labels(labels);
    let (times, loss) = if std::env::var("GMT_BENCH_ADAMW").as_deref() == Ok("burn") {
        let adamw = AdamWConfig::new()
            .with_epsilon(1e-8)
            .with_weight_decay(0.0)
            .init();
        train_with(model, adamw, scope, ratio, steps, &tokens)?
    } else {
        let adamw = FusedAdamW::new(0.9, 0.999, 1e-8, 0.0).init();
        train_with(model, adamw, scope, ratio, steps, &tokens)?
    };
    let step = median(times.iter().map(StepTimes::total).collect());
    println!("step_s_median={step:.3}");
    println!("tokens_per_s={:.1}", (batch * seq) as f64 / step);
    let phase = |f: fn(&StepTimes) -> f64| median(times.iter().map(f).collect());
    println!("forward_s_median={:.3}", phase(|t| t.forward));
    println!("backward_s_median={:.3}", phase(|t| t.backward));
    println!("optimizer_s_median={:.3}", phase(|t| t.optimizer));
    println!("loss={loss:.4}");
    print_peak_rss();
    Ok(())
}
