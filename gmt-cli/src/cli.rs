//! The command line (clap): subcommands and their flags.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use gmt_core::{MaskScope, MaskStrategy, MaskTarget};
use gmt_data::Truncation;

use crate::backend::BackendChoice;
use gmt_train::ScheduleKind;

use crate::settings::TrainSettings;

/// Fine-tune Llama and Mistral models with Gradient-Mask Tuning (GMT).
///
/// GMT masks, at every optimizer step, the gradient entries with the smallest magnitude and
/// lets only the salient ones reach AdamW (Li et al., AAAI 2025).
#[derive(Parser, Debug)]
#[command(name = "gmt", version, about, long_about)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
    /// Log level filter (error, warn, info, debug, trace; or a tracing directive).
    #[arg(long, global = true, default_value = "info", env = "GMT_LOG")]
    pub log: String,
}

/// `gmt <command>`
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Fine-tune a model on a dataset (settings from --config and flags; flags win).
    Train(Box<TrainArgs>),
    /// Mean loss and perplexity on a dataset, or GSM8K-style answer accuracy.
    Eval(EvalArgs),
    /// Continue a chat message or a plain prompt, streaming tokens to stdout.
    Generate(GenerateArgs),
    /// Write a checkpoint (or a run's newest one) as a Hugging Face model directory.
    Export(ExportArgs),
    /// List the backends and devices found, and optionally describe a model.
    Info(InfoArgs),
    /// Generate the arithmetic word-problem dataset used by the README's demo.
    MakeData(MakeDataArgs),
}

/// Which model, tokenizer and template to use.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A Hugging Face model directory, a .gguf file, or a gmt checkpoint directory.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// A tokenizer.json (or a directory with one); default: the model's own.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Chat template: a built-in name (chatml, llama-2, llama-3, mistral, plain) or a .jinja
    /// file; default: the model's own.
    #[arg(long)]
    pub chat_template: Option<String>,
}

/// How records are read.
#[derive(Args, Debug, Clone, Default)]
pub struct FormatArgs {
    /// Record format: alpaca, messages, sharegpt, prompt_completion, text or fields
    /// (default: detected from the first record).
    #[arg(long)]
    pub format: Option<String>,
    /// For --format fields: the field holding the user turn (e.g. `question`).
    #[arg(long)]
    pub user_field: Option<String>,
    /// For --format fields: the field holding the assistant turn (e.g. `answer`).
    #[arg(long)]
    pub assistant_field: Option<String>,
    /// For --format fields: the field holding a system prompt.
    #[arg(long)]
    pub system_field: Option<String>,
    /// Skip and count malformed records instead of stopping at the first.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub skip_bad_records: Option<bool>,
}

/// `gmt train`
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// A TOML settings file; flags override its values.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print the effective settings as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Continue from the newest checkpoint in the output directory (same settings).
    #[arg(long)]
    pub resume: bool,
    /// Stop after this many steps in this invocation, leaving a checkpoint to --resume from
    /// (for time-limited or preemptible jobs; the schedule is unaffected).
    #[arg(long)]
    pub stop_after: Option<u64>,

    #[command(flatten)]
    pub model: ModelArgs,

    /// Training data: a file (.jsonl, .json, .txt; .gz/.zst), a directory or a glob of shards.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Evaluation data (default: --eval-fraction of the training data, if set).
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    /// Hold out this fraction of the training data for evaluation (deterministic).
    #[arg(long)]
    pub eval_fraction: Option<f64>,
    /// Evaluate on at most this many examples (0 = all).
    #[arg(long)]
    pub eval_max_examples: Option<usize>,
    #[command(flatten)]
    pub format: FormatArgs,
    /// Also put the loss on prompt tokens, not only on assistant turns.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub train_on_prompt: Option<bool>,
    /// Longest sequence, in tokens.
    #[arg(long)]
    pub max_seq_len: Option<usize>,
    /// Longer examples are cut (truncate) or left out (drop); both are counted.
    #[arg(long, value_parser = parse_enum::<Truncation>, value_name = "truncate|drop")]
    pub truncation: Option<Truncation>,
    /// Pack several examples per sequence (no attention across examples).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub packing: Option<bool>,
    /// Length-grouped batching: sort windows of N batches by length, so a batch's rows need
    /// little padding (0 = off; not with --packing).
    #[arg(long, value_name = "N")]
    pub group_by_length: Option<usize>,
    /// Examples in the shuffle buffer (1 = file order).
    #[arg(long)]
    pub shuffle_buffer: Option<usize>,

    /// Fraction of gradient entries set to zero each step, in [0, 1).
    #[arg(long)]
    pub mask_ratio: Option<f64>,
    /// Mask each tensor on its own, or all parameters with one threshold.
    #[arg(long, value_parser = parse_enum::<MaskScope>, value_name = "tensor|global")]
    pub scope: Option<MaskScope>,
    /// Mask the gradient AdamW sees, or the whole update (masked entries do not move).
    #[arg(long, value_parser = parse_enum::<MaskTarget>, value_name = "gradient|update")]
    pub target: Option<MaskTarget>,
    /// magnitude (GMT: keep the largest |gradient|; `gmt` also works), random (the paper's
    /// same-ratio control) or none (plain fine-tuning).
    #[arg(long, value_parser = parse_enum::<MaskStrategy>, value_name = "magnitude|random|none")]
    pub strategy: Option<MaskStrategy>,
    /// Parameters never masked (glob over module paths, e.g. `*norm*`); repeatable.
    #[arg(long)]
    pub exclude: Vec<String>,

    /// Peak learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// AdamW β1.
    #[arg(long)]
    pub beta1: Option<f32>,
    /// AdamW β2.
    #[arg(long)]
    pub beta2: Option<f32>,
    /// AdamW ε.
    #[arg(long)]
    pub eps: Option<f32>,
    /// AdamW decoupled weight decay.
    #[arg(long)]
    pub weight_decay: Option<f32>,
    /// Clip the global norm of the masked gradient (after masking) to this; 0 = off.
    #[arg(long)]
    pub max_grad_norm: Option<f64>,
    /// Learning-rate decay after warmup.
    #[arg(long, value_parser = parse_enum::<ScheduleKind>, value_name = "constant|linear|cosine")]
    pub schedule: Option<ScheduleKind>,
    /// Steps of linear warmup.
    #[arg(long)]
    pub warmup_steps: Option<u64>,
    /// Final learning rate as a fraction of --lr.
    #[arg(long)]
    pub min_lr_ratio: Option<f64>,

    /// Output directory: config.toml, metrics.jsonl, plot.svg, checkpoints/, final/.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Compute backend.
    #[arg(long, value_enum)]
    pub backend: Option<BackendChoice>,
    /// Sequences per micro-batch.
    #[arg(long)]
    pub micro_batch_size: Option<usize>,
    /// Micro-batches per optimizer step (gradients weighted by their response tokens).
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Optimizer steps (0 = --epochs passes over the data).
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Passes over the data when --max-steps is 0.
    #[arg(long)]
    pub epochs: Option<u64>,
    /// Seed of data order, masks and sampling.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Evaluate every N steps (and at the end).
    #[arg(long)]
    pub eval_every: Option<u64>,
    /// Checkpoint every N steps (and at the end).
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// Checkpoints kept; older ones are deleted.
    #[arg(long)]
    pub keep_checkpoints: Option<usize>,
}

/// Parses a flag value with the same names the TOML file uses (serde's).
fn parse_enum<T: serde::de::DeserializeOwned>(value: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(value.to_string())).map_err(|e| e.to_string())
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

fn set_some<T>(slot: &mut Option<T>, value: Option<T>) {
    if value.is_some() {
        *slot = value;
    }
}

impl TrainArgs {
    /// The settings of `--config` (or the defaults) with every given flag applied.
    pub fn settings(&self) -> anyhow::Result<TrainSettings> {
        let mut s = match &self.config {
            Some(path) => TrainSettings::from_file(path)?,
            None => TrainSettings::default(),
        };
        let a = self;
        set_some(&mut s.model.path, a.model.model.clone());
        set_some(&mut s.model.tokenizer, a.model.tokenizer.clone());
        set_some(&mut s.model.chat_template, a.model.chat_template.clone());
        let d = &mut s.data;
        set_some(&mut d.train, a.data.clone());
        set_some(&mut d.eval, a.eval_data.clone());
        set(&mut d.eval_fraction, a.eval_fraction);
        set(&mut d.eval_max_examples, a.eval_max_examples);
        set_some(&mut d.format, a.format.format.clone());
        set_some(&mut d.user_field, a.format.user_field.clone());
        set_some(&mut d.assistant_field, a.format.assistant_field.clone());
        set_some(&mut d.system_field, a.format.system_field.clone());
        set(&mut d.skip_bad_records, a.format.skip_bad_records);
        set(&mut d.train_on_prompt, a.train_on_prompt);
        set(&mut d.max_seq_len, a.max_seq_len);
        set(&mut d.truncation, a.truncation);
        set(&mut d.packing, a.packing);
        set(&mut d.group_by_length, a.group_by_length);
        set(&mut d.shuffle_buffer, a.shuffle_buffer);
        let g = &mut s.gmt;
        set(&mut g.mask_ratio, a.mask_ratio);
        set(&mut g.scope, a.scope);
        set(&mut g.target, a.target);
        set(&mut g.strategy, a.strategy);
        if !a.exclude.is_empty() {
            g.exclude = a.exclude.clone();
        }
        let o = &mut s.optim;
        set(&mut o.lr, a.lr);
        set(&mut o.beta1, a.beta1);
        set(&mut o.beta2, a.beta2);
        set(&mut o.eps, a.eps);
        set(&mut o.weight_decay, a.weight_decay);
        set(&mut o.max_grad_norm, a.max_grad_norm);
        set(&mut s.schedule.kind, a.schedule);
        set(&mut s.schedule.warmup_steps, a.warmup_steps);
        set(&mut s.schedule.min_lr_ratio, a.min_lr_ratio);
        let t = &mut s.train;
        set_some(&mut t.output_dir, a.output.clone());
        set(&mut t.backend, a.backend);
        set(&mut t.micro_batch_size, a.micro_batch_size);
        set(&mut t.grad_accum, a.grad_accum);
        set(&mut t.max_steps, a.max_steps);
        set(&mut t.epochs, a.epochs);
        set(&mut t.seed, a.seed);
        set(&mut t.eval_every, a.eval_every);
        set(&mut t.checkpoint_every, a.checkpoint_every);
        set(&mut t.keep_checkpoints, a.keep_checkpoints);
        Ok(s)
    }
}

/// `gmt eval`
#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The dataset.
    #[arg(long)]
    pub data: PathBuf,
    #[command(flatten)]
    pub format: FormatArgs,
    /// `loss` (mean loss and perplexity), or `gsm8k` (also answer accuracy by greedy
    /// generation: the number after `####` in the reference against the last number written).
    #[arg(long, value_enum, default_value = "loss")]
    pub task: EvalTask,
    /// Longest sequence scored, in tokens (longer examples are truncated).
    #[arg(long, default_value_t = 2048)]
    pub max_seq_len: usize,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// At most this many examples (0 = all).
    #[arg(long, default_value_t = 0)]
    pub max_examples: usize,
    /// For --task gsm8k: the longest answer generated, in tokens.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Print one JSON object (loss, perplexity, tokens; accuracy for gsm8k) on stdout.
    #[arg(long)]
    pub json: bool,
    /// Compute backend.
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendChoice,
}

/// What `gmt eval` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EvalTask {
    /// Mean loss and perplexity.
    Loss,
    /// Loss plus answer accuracy on GSM8K-style question/answer data.
    Gsm8k,
}

/// `gmt generate`
#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The user message (or, with --raw, the text to continue).
    #[arg(long)]
    pub prompt: String,
    /// A system message for the chat.
    #[arg(long)]
    pub system: Option<String>,
    /// Continue the prompt as plain text instead of as a chat turn.
    #[arg(long)]
    pub raw: bool,
    /// Most new tokens.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Nucleus sampling threshold.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Compute backend.
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendChoice,
}

/// `gmt export`
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// A checkpoint directory, or a run's output directory (its newest checkpoint).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The Hugging Face directory to write.
    #[arg(long)]
    pub output: PathBuf,
    /// Weight precision.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DtypeArg,
}

/// `--dtype`
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DtypeArg {
    /// float32 (exact).
    F32,
    /// bfloat16 (half the size).
    Bf16,
}

/// `gmt info`
#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Also describe this model (HF directory, .gguf or checkpoint).
    #[arg(long)]
    pub model: Option<PathBuf>,
}

/// `gmt make-data`
#[derive(Args, Debug)]
pub struct MakeDataArgs {
    /// Directory to write train.jsonl and test.jsonl into.
    #[arg(long)]
    pub output: PathBuf,
    /// Training problems.
    #[arg(long, default_value_t = 2000)]
    pub train: usize,
    /// Held-out test problems (never equal to a training problem).
    #[arg(long, default_value_t = 100)]
    pub test: usize,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}
