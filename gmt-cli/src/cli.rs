//! The command line (clap): subcommands and their flags.

use std::path::PathBuf;

use bytesize::ByteSize;
use clap::{Args, Parser, Subcommand};
use gmt_core::{MaskScope, MaskStrategy, MaskTarget};
use gmt_data::Truncation;
use serde::Serialize;

use crate::backend::{BackendChoice, DeviceSpec};
use crate::distributed::Distributed;
use gmt_train::memory::{Checkpointing, Precision};
use gmt_train::{DpoLossType, ScheduleKind};

use crate::settings::{ObjectiveKind, ReferenceLogps, TrainSettings};

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
    /// Keep the memory a CPU step frees for the next step instead of returning it to the
    /// kernel (glibc on Linux): ~10% faster CPU training steps, but the process keeps its peak
    /// and the heap fragments, so the peak can exceed `gmt plan`'s estimate (SmolLM2: +7% to
    /// +27%). See README "Known limits".
    #[arg(long, global = true, env = "GMT_KEEP_FREED_MEMORY")]
    pub keep_freed_memory: bool,
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
    /// Train and evaluate many runs (configurations × seeds) from a sweep file; resumable.
    Sweep(SweepArgs),
    /// The memory a training run needs, part by part, whether it fits a device, and the
    /// cheapest settings that do.
    Plan(PlanArgs),
}

/// Which model, tokenizer and template to use (`[model]` for `gmt train`).
#[derive(Args, Debug, Clone, Serialize)]
pub struct ModelArgs {
    /// A Hugging Face model directory, a .gguf file, or a gmt checkpoint directory.
    #[arg(long)]
    #[serde(rename = "path")]
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
#[derive(Args, Debug, Clone, Default, Serialize)]
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

/// `gmt train`.
///
/// Its settings flags are grouped as the config file's sections and named as its keys (a
/// `serde` rename where the flag reads better otherwise), so that the flags given serialize
/// into a TOML overlay of the file: adding a setting takes its field in
/// [`TrainSettings`] and, if it has a flag, the flag here — no mapping code.
#[derive(Args, Debug, Serialize)]
pub struct TrainArgs {
    /// A TOML settings file; flags override its values.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Print the effective settings as TOML and exit.
    #[arg(long)]
    #[serde(skip)]
    pub print_config: bool,
    /// Continue from the newest checkpoint in the output directory (same settings).
    #[arg(long)]
    #[serde(skip)]
    pub resume: bool,
    /// Replace an earlier run in the output directory (its checkpoints, final model, metrics
    /// and plot are deleted) instead of refusing to start; and train even where the memory
    /// estimate says the run will not fit (`[train] memory_check = false` skips that check
    /// alone, for --resume).
    #[arg(long, conflicts_with = "resume")]
    #[serde(skip)]
    pub force: bool,
    /// Stop after this many steps in this invocation, leaving a checkpoint to --resume from
    /// (for time-limited or preemptible jobs; the schedule is unaffected).
    #[arg(long)]
    #[serde(skip)]
    pub stop_after: Option<u64>,
    /// Run as one process of a multi-process job: `mpi` under `mpirun -np N` (one replica per
    /// rank, each on its share of every step; rank 0 writes the run's files). Needs a gmt
    /// built with `--features mpi`.
    #[arg(long, value_enum, value_name = "mpi")]
    #[serde(skip)]
    pub distributed: Option<Distributed>,

    /// `[model]`
    #[command(flatten)]
    pub model: ModelArgs,
    /// `[data]`
    #[command(flatten)]
    pub data: DataFlags,
    /// `[gmt]`
    #[command(flatten)]
    pub gmt: GmtFlags,
    /// `[optim]`
    #[command(flatten)]
    pub optim: OptimFlags,
    /// `[schedule]`
    #[command(flatten)]
    pub schedule: ScheduleFlags,
    /// `[dpo]`
    #[command(flatten)]
    pub dpo: DpoFlags,
    /// `[train]`
    #[command(flatten)]
    pub train: LoopFlags,
}

/// `[data]` flags of `gmt train`.
#[derive(Args, Debug, Serialize)]
pub struct DataFlags {
    /// Training data: a file (.jsonl, .json, .txt; .gz/.zst), a directory or a glob of shards.
    #[arg(long = "data")]
    pub train: Option<PathBuf>,
    /// Evaluation data (default: --eval-fraction of the training data, if set).
    #[arg(long = "eval-data")]
    pub eval: Option<PathBuf>,
    /// Hold out this fraction of the training data for evaluation (deterministic).
    #[arg(long)]
    pub eval_fraction: Option<f64>,
    /// Evaluate on at most this many examples (0 = all).
    #[arg(long)]
    pub eval_max_examples: Option<usize>,
    /// Record format and fields.
    #[command(flatten)]
    #[serde(flatten)]
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
    /// Preference pairs: the most prompt tokens kept when a pair exceeds --max-seq-len
    /// (default: half of it).
    #[arg(long)]
    pub max_prompt_len: Option<usize>,
}

/// `[gmt]` flags of `gmt train`.
#[derive(Args, Debug, Serialize)]
pub struct GmtFlags {
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
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// Clip the global norm of the masked gradient (after masking) to this; 0 = off.
    #[arg(long)]
    pub max_grad_norm: Option<f64>,
}

/// `[optim]` flags of `gmt train`.
#[derive(Args, Debug, Serialize)]
pub struct OptimFlags {
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
}

/// `[dpo]` flags of `gmt train` (gmt-train's `DpoConfig`).
#[derive(Args, Debug, Serialize)]
pub struct DpoFlags {
    /// DPO's β: how far the policy may move from the reference (larger = closer).
    #[arg(long)]
    pub beta: Option<f64>,
    /// DPO's label smoothing ε in [0, 0.5): the assumed chance that a preference is wrong.
    #[arg(long)]
    pub label_smoothing: Option<f64>,
    /// The preference loss.
    #[arg(long, value_parser = parse_enum::<DpoLossType>, value_name = "sigmoid|ipo")]
    pub loss_type: Option<DpoLossType>,
}

/// `[schedule]` flags of `gmt train`.
#[derive(Args, Debug, Serialize)]
pub struct ScheduleFlags {
    /// Learning-rate decay after warmup.
    #[arg(long = "schedule", value_parser = parse_enum::<ScheduleKind>, value_name = "constant|linear|cosine")]
    pub kind: Option<ScheduleKind>,
    /// Steps of linear warmup.
    #[arg(long)]
    pub warmup_steps: Option<u64>,
    /// Final learning rate as a fraction of --lr.
    #[arg(long)]
    pub min_lr_ratio: Option<f64>,
}

/// `[train]` flags of `gmt train`.
#[derive(Args, Debug, Serialize)]
pub struct LoopFlags {
    /// Output directory: config.toml, metrics.jsonl, plot.svg, checkpoints/, final/.
    #[arg(long = "output")]
    pub output_dir: Option<PathBuf>,
    /// Compute backend.
    #[arg(long, value_enum)]
    pub backend: Option<BackendChoice>,
    /// Train data-parallel, one replica per device: `cuda:0,cuda:1`, `wgpu:0,wgpu:1`, or
    /// `cpu,cpu` (replicas sharing the CPU, for tests). Each step's --grad-accum micro-batches
    /// are split evenly over them.
    #[arg(long, value_delimiter = ',', value_parser = parse_device)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceSpec>,
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
    /// Seed of data order and sampling, and of the masks unless the config file sets
    /// `[gmt] seed`.
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
    /// What to train: causal_lm (supervised fine-tuning) or dpo (preference pairs).
    #[arg(long, value_enum)]
    pub objective: Option<ObjectiveKind>,
    /// DPO's reference model (a Hugging Face directory or .gguf); default: the starting model.
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// DPO: precompute the reference's log-probabilities before training (one model in
    /// memory), or keep the reference resident beside the policy.
    #[arg(long, value_enum)]
    pub reference_logps: Option<ReferenceLogps>,
    /// none, or balanced: backward recomputes element-wise results instead of keeping them
    /// (less memory, a little more compute, the same gradients to the bit).
    #[arg(long, value_parser = parse_enum::<Checkpointing>)]
    pub checkpointing: Option<Checkpointing>,
    /// fp32; bf16-mixed: the forward and backward passes in bf16 on a copy of the fp32
    /// weights, Γ, the mask and AdamW in fp32; or bf16: weights, Γ and AdamW's moments in
    /// bf16, the update Kahan-compensated (both bf16 modes: CUDA and the CPU, not WGPU).
    #[arg(long, value_parser = parse_enum::<Precision>)]
    pub precision: Option<Precision>,
    /// The device memory to check the run against before loading (`80GiB`, `141GB`);
    /// default: the device's own. `gmt plan` shows the budget.
    #[arg(long, value_name = "SIZE")]
    #[serde(serialize_with = "crate::settings::bytes_as_integer")]
    pub device_memory: Option<ByteSize>,
}

/// Parses a flag value with the same names the TOML file uses (serde's).
fn parse_enum<T: serde::de::DeserializeOwned>(value: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(value.to_string())).map_err(|e| e.to_string())
}

impl TrainArgs {
    /// The settings of `--config` (or the defaults) with every given flag applied: the flags
    /// given, serialized as TOML (absent ones are `None` and leave no key), overlay the file.
    pub fn settings(&self) -> anyhow::Result<TrainSettings> {
        let mut table = match &self.config {
            Some(path) => TrainSettings::read_table(path)?,
            None => toml::Table::new(),
        };
        let flags = toml::Table::try_from(self).map_err(|e| match too_large(self) {
            Some(key) => anyhow::anyhow!(
                "invalid setting `{key}`: above {}, the largest number a setting holds",
                i64::MAX
            ),
            None => anyhow::anyhow!("cannot read the flags as settings: {e}"),
        })?;
        overlay(&mut table, flags);
        TrainSettings::from_table(table)?.with_absolute_paths()
    }
}

/// The key (`data.max_seq_len`) of a flag whose number TOML cannot hold (TOML integers are
/// i64), so that the error names it.
fn too_large(args: &TrainArgs) -> Option<String> {
    fn find(value: &serde_json::Value, path: &str) -> Option<String> {
        match value {
            serde_json::Value::Object(fields) => fields.iter().find_map(|(k, v)| {
                let path = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                find(v, &path)
            }),
            v => v
                .as_u64()
                .is_some_and(|n| n > i64::MAX as u64)
                .then(|| path.to_string()),
        }
    }
    find(&serde_json::to_value(args).ok()?, "")
}

/// Puts every key of `top` into `base`, section by section.
pub(crate) fn overlay(base: &mut toml::Table, top: toml::Table) {
    for (key, value) in top {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(inner)), toml::Value::Table(value)) => overlay(inner, value),
            (_, value) => {
                base.insert(key, value);
            }
        }
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
    /// causal_lm (loss on the responses), or dpo: on preference pairs, the DPO loss and
    /// rewards of the model against --reference.
    #[arg(long, value_enum, default_value = "causal_lm")]
    pub objective: ObjectiveKind,
    /// For --objective dpo: the reference model (e.g. the model before DPO).
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// For --objective dpo.
    #[command(flatten)]
    pub dpo: DpoFlags,
    /// Preference pairs: the most prompt tokens kept when a pair exceeds --max-seq-len
    /// (default: half of it).
    #[arg(long)]
    pub max_prompt_len: Option<usize>,
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalTask {
    /// Mean loss and perplexity.
    Loss,
    /// Loss plus answer accuracy on GSM8K-style question/answer data.
    Gsm8k,
}

/// `gmt sweep`
#[derive(Args, Debug)]
pub struct SweepArgs {
    /// The sweep file: base settings (`[base.*]` or `base_config`), configurations
    /// (`[[configs]]`) and/or a grid (`[axes]`), `seeds`, and `[eval]`.
    #[arg(long)]
    pub config: PathBuf,
    /// The sweep's directory (overrides the file's `output_dir`).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Print each run and where it stands (done, partial, to do), and exit.
    #[arg(long)]
    pub list: bool,
    /// Finish at most N runs in this invocation, then stop (rerun to continue).
    #[arg(long, value_name = "N")]
    pub max_runs: Option<usize>,
    /// Stop the run in progress after N optimizer steps with a checkpoint (rerun to continue).
    #[arg(long, value_name = "N")]
    pub stop_after: Option<u64>,
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
    /// A checkpoint directory, a run's output directory (its newest checkpoint), or a model
    /// to convert: a GGUF file (dequantized) or a Hugging Face directory.
    #[arg(long, visible_alias = "model")]
    pub checkpoint: PathBuf,
    /// The Hugging Face directory to write.
    #[arg(long)]
    pub output: PathBuf,
    /// Replace the model files already in the output directory.
    #[arg(long)]
    pub force: bool,
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

/// `gmt plan`
#[derive(Args, Debug)]
pub struct PlanArgs {
    /// A Hugging Face directory or its config.json, a .gguf file, or a gmt checkpoint: only
    /// the model's shape is read.
    #[arg(long)]
    pub model: PathBuf,
    /// Sequences per micro-batch (preference pairs for --objective dpo).
    #[arg(long, default_value_t = 1)]
    pub micro_batch_size: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 2048)]
    pub max_seq_len: usize,
    /// Micro-batches per optimizer step on the device.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// fp32, bf16-mixed or bf16 (README "Fitting a 7B model").
    #[arg(long, default_value = "fp32", value_parser = parse_enum::<Precision>)]
    pub precision: Precision,
    /// none or balanced.
    #[arg(long, default_value = "none", value_parser = parse_enum::<Checkpointing>)]
    pub checkpointing: Checkpointing,
    /// causal_lm, or dpo (chosen and rejected both go through the model).
    #[arg(long, value_enum, default_value = "causal_lm")]
    pub objective: ObjectiveKind,
    /// The memory to fit (`80GiB`, `141GB`); default: GPU 0's (nvidia-smi), else this
    /// machine's available memory.
    #[arg(long, value_name = "SIZE")]
    pub device_memory: Option<ByteSize>,
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
    /// Replace data files already in the output directory.
    #[arg(long)]
    pub force: bool,
    /// Write preference pairs for DPO instead: train.jsonl and test_pairs.jsonl hold
    /// `{prompt, chosen, rejected}` (chosen = the worked answer, rejected = the same answer
    /// with one arithmetic slip); test.jsonl keeps `{question, answer}` for answer accuracy.
    #[arg(long)]
    pub pairs: bool,
}

fn parse_device(s: &str) -> Result<DeviceSpec, String> {
    s.parse()
}
