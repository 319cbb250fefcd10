//! The effective configuration of `gmt train`: a TOML file (`--config`) overlaid with
//! command-line flags, flags winning.
//!
//! Every section denies unknown keys; a misspelt key is an error that names the file, the key
//! and the closest known key.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bytesize::ByteSize;
use gmt_core::GmtConfig;
use gmt_data::{BatchConfig, FieldMapping, RecordFormat, Split, Truncation};
use serde::{Deserialize, Serialize};

use crate::backend::{BackendChoice, DeviceSpec};
use crate::model_source::Overrides;
use gmt_train::memory::{Checkpointing, Precision};
use gmt_train::{DpoConfig, OptimConfig, ScheduleConfig, TrainerConfig};

/// Everything `gmt train` needs, as saved to `<output>/config.toml`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSettings {
    /// The model and its tokenizer.
    pub model: ModelSettings,
    /// The training and evaluation data.
    pub data: DataSettings,
    /// Gradient-Mask Tuning: gmt-core's own configuration. `seed`, when the file leaves it
    /// out, is `[train] seed`.
    pub gmt: GmtConfig,
    /// The learning rate and AdamW: gmt-train's own configuration.
    pub optim: OptimConfig,
    /// Learning-rate schedule: gmt-train's own configuration.
    pub schedule: ScheduleConfig,
    /// The DPO loss (with `train.objective = "dpo"`): gmt-train's own configuration.
    pub dpo: DpoConfig,
    /// Batching, length, checkpoints and evaluation.
    pub train: LoopSettings,
}

/// What a run trains the model to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum ObjectiveKind {
    /// Supervised fine-tuning: next-token loss on the responses of instruction data.
    #[default]
    CausalLm,
    /// Direct Preference Optimization on preference pairs, against a frozen reference.
    Dpo,
}

/// Where DPO's reference log-probabilities come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum ReferenceLogps {
    /// One pass of the reference over the data before training, saved in the run's
    /// `reference_logps.json`: training holds one model, and a resumed run reads them back.
    #[default]
    Precompute,
    /// A frozen copy of the reference held beside the policy, run (without a graph) on
    /// every micro-batch.
    Resident,
}

/// `[model]`
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSettings {
    /// A Hugging Face model directory or a `.gguf` file.
    pub path: Option<PathBuf>,
    /// A `tokenizer.json` (or a directory holding one); defaults to the model's.
    pub tokenizer: Option<PathBuf>,
    /// A chat template: a built-in name (chatml, llama-2, llama-3, mistral, plain) or a
    /// `.jinja` file; defaults to the model's own.
    pub chat_template: Option<String>,
}

/// `[data]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataSettings {
    /// Training data: a file or a directory of shards.
    pub train: Option<PathBuf>,
    /// Evaluation data; when absent, `eval_fraction` of `train` is held out.
    pub eval: Option<PathBuf>,
    /// Fraction of `train` held out for evaluation (deterministic in `seed`).
    pub eval_fraction: f64,
    /// At most this many evaluation examples (0 = all).
    pub eval_max_examples: usize,
    /// Record format: alpaca, messages, sharegpt, prompt_completion, text or fields;
    /// detected from the first record when absent.
    pub format: Option<String>,
    /// For `format = "fields"`: the user field.
    pub user_field: Option<String>,
    /// For `format = "fields"`: the assistant field.
    pub assistant_field: Option<String>,
    /// For `format = "fields"`: the system field, if any.
    pub system_field: Option<String>,
    /// Put the loss on prompts too, not only on assistant turns.
    pub train_on_prompt: bool,
    /// Longest sequence in tokens.
    pub max_seq_len: usize,
    /// What to do with longer examples: truncate or drop (both counted).
    pub truncation: Truncation,
    /// Pack several examples into one sequence (no attention across them).
    pub packing: bool,
    /// Length-grouped batching: sort windows of this many batches by length so that a
    /// batch's rows need little padding (0 = off; not with packing).
    pub group_by_length: usize,
    /// Examples in the shuffle buffer (1 = file order).
    pub shuffle_buffer: usize,
    /// Skip and count bad records instead of stopping at the first.
    pub skip_bad_records: bool,
    /// Preference pairs: the most prompt tokens kept when a pair exceeds `max_seq_len` (the
    /// prompt's start is cut, then the responses' ends); default half of `max_seq_len`.
    pub max_prompt_len: Option<usize>,
}

impl Default for DataSettings {
    fn default() -> Self {
        Self {
            train: None,
            eval: None,
            eval_fraction: 0.0,
            eval_max_examples: 0,
            format: None,
            user_field: None,
            assistant_field: None,
            system_field: None,
            train_on_prompt: false,
            max_seq_len: 512,
            truncation: Truncation::Truncate,
            packing: false,
            group_by_length: 0,
            shuffle_buffer: 1024,
            skip_bad_records: false,
            max_prompt_len: None,
        }
    }
}

/// `[train]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoopSettings {
    /// Where checkpoints, metrics, plots and the final model go.
    pub output_dir: Option<PathBuf>,
    /// `cpu`, `wgpu`, `cuda` or `auto`.
    pub backend: BackendChoice,
    /// Data-parallel devices, one replica each (`["cuda:0", "cuda:1"]`); empty: one device
    /// of `backend`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceSpec>,
    /// Sequences per micro-batch.
    pub micro_batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Optimizer steps to run (0 = run `epochs` passes over the data).
    pub max_steps: u64,
    /// Passes over the training data when `max_steps` is 0.
    pub epochs: u64,
    /// Seed of data order and sampling, and of the masks unless `[gmt] seed` is set.
    pub seed: u64,
    /// Evaluate every N steps (0 = only at the end).
    pub eval_every: u64,
    /// Checkpoint every N steps (0 = only at the end).
    pub checkpoint_every: u64,
    /// Checkpoints kept (the oldest are deleted).
    pub keep_checkpoints: usize,
    /// `causal_lm` (supervised fine-tuning) or `dpo` (preference pairs).
    pub objective: ObjectiveKind,
    /// DPO: the reference model (a Hugging Face directory or `.gguf`); default the starting
    /// model.
    pub reference: Option<PathBuf>,
    /// DPO: `precompute` the reference's log-probabilities before training, or keep the
    /// reference `resident` beside the policy.
    pub reference_logps: ReferenceLogps,
    /// `none`, or `balanced`: backward recomputes element-wise results instead of keeping
    /// them (less memory, the same gradients to the bit).
    pub checkpointing: Checkpointing,
    /// The number format of the forward and backward passes: `fp32`, or `bf16-mixed` (bf16
    /// on a copy of the fp32 weights; Γ, the mask and AdamW in fp32). README "Fitting a 7B
    /// model" gives each mode's bytes per parameter.
    pub precision: Precision,
    /// Check before loading that the run fits the device's memory (README "Fitting a 7B
    /// model"); `false` skips the check (`--force` does too).
    pub memory_check: bool,
    /// The device memory the check compares against (`"80GiB"`, `"141GB"`, or bytes);
    /// default: the device's own (the machine's available memory on the CPU, `nvidia-smi`
    /// on CUDA).
    #[serde(
        serialize_with = "bytes_as_integer",
        skip_serializing_if = "Option::is_none"
    )]
    pub device_memory: Option<ByteSize>,
}

/// Writes a size back as its byte count: bytesize's own text rounds to a tenth of a unit, and
/// a run's `config.toml` must read back to the same settings.
pub(crate) fn bytes_as_integer<S: serde::Serializer>(
    size: &Option<ByteSize>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match size {
        Some(size) => serializer.serialize_u64(size.as_u64()),
        None => serializer.serialize_none(),
    }
}

impl Default for LoopSettings {
    fn default() -> Self {
        Self {
            output_dir: None,
            backend: BackendChoice::Auto,
            devices: Vec::new(),
            micro_batch_size: 4,
            grad_accum: 1,
            max_steps: 0,
            epochs: 1,
            seed: 0,
            eval_every: 0,
            checkpoint_every: 0,
            keep_checkpoints: 2,
            objective: ObjectiveKind::CausalLm,
            reference: None,
            reference_logps: ReferenceLogps::Precompute,
            checkpointing: Checkpointing::None,
            precision: Precision::Fp32,
            memory_check: true,
            device_memory: None,
        }
    }
}

impl TrainSettings {
    /// Reads a TOML settings file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::from_toml(&text).with_context(|| format!("in config file {}", path.display()))
    }

    /// A settings file as a TOML table, checked as settings first (so that its errors name
    /// the file, line and key).
    pub fn read_table(path: &Path) -> Result<toml::Table> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::from_toml(&text).with_context(|| format!("in config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("in config file {}", path.display()))
    }

    /// Settings from a TOML table (a file's, with flags laid over it).
    pub fn from_table(table: toml::Table) -> Result<Self> {
        let mask_seed_set = sets_mask_seed(&table);
        let settings: Self = toml::Value::Table(table)
            .try_into()
            .map_err(|e| anyhow::anyhow!(explain_toml_error(&e)))?;
        Ok(settings.with_mask_seed(mask_seed_set))
    }

    /// Parses TOML text; unknown keys are errors with the closest known key suggested.
    pub fn from_toml(text: &str) -> Result<Self> {
        let settings: Self =
            toml::from_str(text).map_err(|e| anyhow::anyhow!(explain_toml_error(&e)))?;
        let table: toml::Table = toml::from_str(text)?;
        Ok(settings.with_mask_seed(sets_mask_seed(&table)))
    }

    /// One seed for the run: the masks' seed is `[train] seed` unless `[gmt] seed` was given.
    fn with_mask_seed(mut self, mask_seed_set: bool) -> Self {
        if !mask_seed_set {
            self.gmt.seed = self.train.seed;
        }
        self
    }

    /// The settings as TOML (what `--print-config` prints and `config.toml` holds).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("settings serialize to TOML")
    }

    /// Checks the settings before anything is loaded, so a run that cannot work fails at once.
    pub fn validate(&self) -> Result<()> {
        if self.model.path.is_none() {
            bail!("no model given: set --model or `[model] path` in the config file");
        }
        if self.data.train.is_none() {
            bail!("no training data given: set --data or `[data] train` in the config file");
        }
        if self.train.output_dir.is_none() {
            bail!("no output directory given: set --output or `[train] output_dir`");
        }
        let t = &self.train;
        let dpo = t.objective == ObjectiveKind::Dpo;
        let replicas = t.devices.len().max(1);
        let checks: [(bool, &str, String); 7] = [
            (
                t.grad_accum == 0,
                "train.grad_accum",
                "must be at least 1".into(),
            ),
            (
                !t.grad_accum.is_multiple_of(replicas),
                "train.grad_accum",
                format!(
                    "must be a multiple of the {replicas} devices, so that each replica takes an equal share of a step"
                ),
            ),
            (
                t.micro_batch_size == 0,
                "train.micro_batch_size",
                "must be at least 1".into(),
            ),
            (
                t.max_steps == 0 && t.epochs == 0,
                "train.epochs",
                "set max_steps or epochs above 0".into(),
            ),
            (
                t.keep_checkpoints == 0,
                "train.keep_checkpoints",
                "must be at least 1".into(),
            ),
            (
                dpo && self.data.packing,
                "data.packing",
                "DPO sums each response's log-probability over its own row: no packing".into(),
            ),
            (
                !dpo && t.reference.is_some(),
                "train.reference",
                "a reference model is for `objective = \"dpo\"`".into(),
            ),
        ];
        for (bad, key, reason) in checks {
            if bad {
                bail!("invalid setting `{key}`: {reason}");
            }
        }
        if let Some(format) = self.record_format()? {
            self.check_format(&format)?;
        }
        if let Err(gmt_train::TrainError::InvalidConfig { key, reason }) = self.dpo.validate() {
            bail!("invalid setting `dpo.{key}`: {reason}");
        }
        // The libraries check their own settings; the messages name the config file's keys.
        let d = &self.data;
        let batching = BatchConfig {
            batch_size: t.micro_batch_size,
            max_seq_len: d.max_seq_len,
            truncation: d.truncation,
            packing: d.packing,
            pad_id: 0,
            group_by_length: d.group_by_length,
            max_prompt_len: d.max_prompt_len,
        };
        if let Err(gmt_data::DataError::InvalidConfig { key, reason }) = batching.validate() {
            bail!("invalid setting `data.{key}`: {reason}");
        }
        let split = Split::Train {
            eval_fraction: self.data.eval_fraction,
        };
        if let Err(gmt_data::DataError::InvalidConfig { reason, .. }) = split.validate() {
            bail!("invalid setting `data.eval_fraction`: {reason}");
        }
        self.trainer_config().validate().map_err(|e| match e {
            gmt_train::TrainError::InvalidConfig { key, reason } => {
                anyhow::anyhow!("invalid setting `{key}`: {reason}")
            }
            gmt_train::TrainError::Gmt(gmt_core::GmtError::InvalidConfig { key, reason }) => {
                anyhow::anyhow!("invalid setting `gmt.{key}`: {reason}")
            }
            other => other.into(),
        })?;
        Ok(())
    }

    /// A resumed run must be the run that wrote the checkpoint: everything but the backend, the
    /// devices and the output location must match the `saved` settings. (The devices may
    /// change: a step's micro-batches are the same whatever their number.)
    pub fn ensure_same_run(&self, saved: &TrainSettings) -> Result<()> {
        let mut a = self.clone();
        let mut b = saved.clone();
        for s in [&mut a, &mut b] {
            s.train.backend = Default::default();
            s.train.devices = Vec::new();
            // Neither changes a result: checkpointing gives the same gradients to the bit.
            s.train.checkpointing = Checkpointing::None;
            s.train.memory_check = true;
            s.train.device_memory = None;
            s.train.output_dir = None;
        }
        if a != b {
            let (ta, tb) = (a.to_toml(), b.to_toml());
            let differing: Vec<String> = ta
                .lines()
                .zip(tb.lines())
                .filter(|(x, y)| x != y)
                .map(|(x, y)| format!("  now: {x}\n  checkpoint: {y}"))
                .take(5)
                .collect();
            bail!(
                "the settings differ from those of the checkpoint being resumed:\n{}\n(resume with the same config, or start a new run in another --output)",
                differing.join("\n")
            );
        }
        Ok(())
    }

    /// The settings with every path made absolute (against the working directory), so that
    /// a checkpoint's `config.toml` names the same files whatever directory a resumed run,
    /// an export or an evaluation starts in.
    pub fn with_absolute_paths(mut self) -> Result<Self> {
        fn absolute(path: &mut Option<PathBuf>) -> Result<()> {
            if let Some(p) = path.as_mut() {
                *p = std::path::absolute(&*p)
                    .with_context(|| format!("cannot make {} absolute", p.display()))?;
            }
            Ok(())
        }
        absolute(&mut self.model.path)?;
        absolute(&mut self.model.tokenizer)?;
        absolute(&mut self.data.train)?;
        absolute(&mut self.data.eval)?;
        absolute(&mut self.train.reference)?;
        absolute(&mut self.train.output_dir)?;
        if let Some(template) = &self.model.chat_template {
            let path = Path::new(template);
            if path.extension().is_some_and(|e| e == "jinja") || path.is_file() {
                let mut as_path = Some(path.to_path_buf());
                absolute(&mut as_path)?;
                self.model.chat_template = as_path.map(|p| p.to_string_lossy().into_owned());
            }
        }
        Ok(self)
    }

    /// The model to load (validated settings always name one).
    pub fn model_path(&self) -> Result<&Path> {
        self.model
            .path
            .as_deref()
            .context("no model given: set --model or `[model] path` in the config file")
    }

    /// The tokenizer and chat template that replace the model's own.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            tokenizer: self.model.tokenizer.clone(),
            chat_template: self.model.chat_template.clone(),
        }
    }

    /// The trainer's configuration: the `[gmt]`, `[optim]` and `[schedule]` sections.
    pub fn trainer_config(&self) -> TrainerConfig {
        TrainerConfig {
            gmt: self.gmt.clone(),
            optim: self.optim.clone(),
            schedule: self.schedule,
        }
    }

    /// Refuses data of the wrong kind for the objective: preference pairs for supervised
    /// fine-tuning, or examples to imitate for DPO.
    pub fn check_format(&self, format: &RecordFormat) -> Result<()> {
        match (self.train.objective, format.is_preference()) {
            (ObjectiveKind::CausalLm, true) => bail!(
                "the data are preference pairs (format `{}`): train on them with `--objective dpo`",
                format.name()
            ),
            (ObjectiveKind::Dpo, false) => bail!(
                "DPO trains on preference pairs (formats `preference`, `hh`), not on `{}` records",
                format.name()
            ),
            _ => Ok(()),
        }
    }

    /// The record format named in `[data]`, `None` to detect it.
    pub fn record_format(&self) -> Result<Option<RecordFormat>> {
        record_format(
            self.data.format.as_deref(),
            &self.data.user_field,
            &self.data.assistant_field,
            &self.data.system_field,
        )
    }
}

/// Whether a settings table gives `[gmt] seed` itself.
fn sets_mask_seed(table: &toml::Table) -> bool {
    table.get("gmt").and_then(|gmt| gmt.get("seed")).is_some()
}

/// A record format from its name and, for `fields`, the field names.
pub fn record_format(
    name: Option<&str>,
    user: &Option<String>,
    assistant: &Option<String>,
    system: &Option<String>,
) -> Result<Option<RecordFormat>> {
    let format = match name {
        None if user.is_some() || assistant.is_some() => "fields",
        None => return Ok(None),
        Some(name) => name,
    };
    let mapping = match (format, user, assistant) {
        ("fields", Some(user), Some(assistant)) => FieldMapping {
            system: system.clone(),
            user: user.clone(),
            assistant: assistant.clone(),
        },
        ("fields", ..) => bail!(
            "format `fields` needs both a user field and an assistant field (--user-field, --assistant-field)"
        ),
        (name, ..) => return Ok(Some(name.parse()?)),
    };
    Ok(Some(RecordFormat::Fields(mapping)))
}

/// TOML's message, with "did you mean" for an unknown key.
fn explain_toml_error(error: &toml::de::Error) -> String {
    let message = error.message();
    let mut text = error.to_string();
    // serde's wording: "unknown field `x`, expected one of `a`, `b`" (or "expected `a`").
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let mut parts = rest.split('`');
        let unknown = parts.next().unwrap_or_default();
        let known: Vec<&str> = parts.skip(1).step_by(2).collect();
        if let Some(best) = known
            .iter()
            .map(|k| (strsim::jaro_winkler(unknown, k), *k))
            .filter(|(score, _)| *score > 0.7)
            .max_by(|a, b| a.0.total_cmp(&b.0))
        {
            text.push_str(&format!("\ndid you mean `{}`?", best.1));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use gmt_core::MaskStrategy;

    #[test]
    fn unknown_keys_suggest_the_closest_known_key() {
        let err = TrainSettings::from_toml("[optim]\nlearning_rat = 1e-4\n").unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("learning_rat"), "{text}");
        let err = TrainSettings::from_toml("[optim]\nweight_decy = 0.1\n").unwrap_err();
        assert!(
            format!("{err:#}").contains("did you mean `weight_decay`"),
            "{err:#}"
        );
        let err = TrainSettings::from_toml("[trian]\nseed = 1\n").unwrap_err();
        assert!(
            format!("{err:#}").contains("did you mean `train`"),
            "{err:#}"
        );
    }

    #[test]
    fn the_mask_seed_is_the_run_seed_unless_given() {
        let s = TrainSettings::from_toml("[train]\nseed = 7\n").unwrap();
        assert_eq!((s.train.seed, s.gmt.seed), (7, 7));
        let s = TrainSettings::from_toml("[train]\nseed = 7\n[gmt]\nseed = 3\n").unwrap();
        assert_eq!((s.train.seed, s.gmt.seed), (7, 3));
        // What `config.toml` holds reads back as itself.
        assert_eq!(TrainSettings::from_toml(&s.to_toml()).unwrap(), s);
    }

    #[test]
    fn no_clipping_is_written_as_zero_and_read_back() {
        let mut s = TrainSettings::default();
        assert_eq!(s.gmt.max_grad_norm, Some(1.0), "gmt train clips at 1.0");
        s.gmt.max_grad_norm = None;
        let text = s.to_toml();
        assert!(text.contains("max_grad_norm = 0"), "{text}");
        assert_eq!(TrainSettings::from_toml(&text).unwrap(), s);
    }

    #[test]
    fn the_strategy_is_named_as_in_gmt_core_and_gmt_is_an_alias() {
        for (name, strategy) in [
            ("magnitude", MaskStrategy::Magnitude),
            ("gmt", MaskStrategy::Magnitude),
            ("random", MaskStrategy::Random),
            ("none", MaskStrategy::None),
        ] {
            let s = TrainSettings::from_toml(&format!("[gmt]\nstrategy = \"{name}\"\n")).unwrap();
            assert_eq!(s.gmt.strategy, strategy, "{name}");
            assert_eq!(s.trainer_config().gmt.strategy, strategy, "{name}");
        }
        let err = TrainSettings::from_toml("[gmt]\nstrategy = \"magnitud\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("magnitud"), "{err:#}");
    }

    #[test]
    fn settings_round_trip_through_toml() {
        let mut settings = TrainSettings::default();
        settings.model.path = Some("m.gguf".into());
        settings.gmt.mask_ratio = 0.4;
        settings.gmt.exclude = vec!["*norm*".into()];
        let again = TrainSettings::from_toml(&settings.to_toml()).unwrap();
        assert_eq!(again, settings);
    }

    #[test]
    fn impossible_settings_are_refused_by_key() {
        let mut s = TrainSettings::default();
        s.model.path = Some("m".into());
        s.data.train = Some("d".into());
        s.train.output_dir = Some("o".into());
        assert!(s.validate().is_ok());
        type Breaker = fn(&mut TrainSettings);
        let cases: [(Breaker, &str); 11] = [
            (|s| s.data.eval_fraction = 1.5, "data.eval_fraction"),
            (|s| s.train.grad_accum = 0, "train.grad_accum"),
            // Checked by gmt-core, named by its key in the config file.
            (
                |s| s.gmt.max_grad_norm = Some(f64::INFINITY),
                "gmt.max_grad_norm",
            ),
            (|s| s.gmt.mask_ratio = 1.0, "gmt.mask_ratio"),
            (|s| s.optim.lr = -1e-4, "optim.lr"),
            (|s| s.optim.beta2 = 2.0, "optim.beta2"),
            (|s| s.optim.beta1 = f32::NAN, "optim.beta1"),
            (|s| s.optim.eps = -1.0, "optim.eps"),
            (|s| s.optim.weight_decay = f32::NAN, "optim.weight_decay"),
            (|s| s.dpo.beta = 0.0, "dpo.beta"),
            (|s| s.schedule.min_lr_ratio = -0.5, "schedule.min_lr_ratio"),
        ];
        for (break_it, key) in cases {
            let mut bad = s.clone();
            break_it(&mut bad);
            let err = bad.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
    }
}
