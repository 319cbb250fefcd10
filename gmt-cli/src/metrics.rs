//! What a training run reports: `metrics.jsonl` in the output directory, and progress on the
//! terminal (an `indicatif` bar) or as plain log lines when stderr is not a terminal.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use gmt_train::{LossReport, StepSummary};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

/// One line of `metrics.jsonl`: one optimizer step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Optimizer steps completed (1-based).
    pub step: u64,
    /// Mean training loss over the step's counted tokens.
    pub loss: f64,
    /// Mean evaluation loss, on steps that evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
    /// Learning rate of the step.
    pub lr: f64,
    /// Global L2 norm of the masked gradient, before clipping.
    pub grad_norm: f64,
    /// Fraction of gradient entries that reached the optimizer.
    pub kept_fraction: f64,
    /// Kept fraction of each decoder layer's entries (embeddings and final norm excluded).
    pub layer_kept: Vec<f64>,
    /// Tokens that carried loss in this step (pairs, for DPO): what the loss is a mean over.
    pub tokens: u64,
    /// Tokens that went through the forward and backward passes in this step (every token of
    /// its batches, prompts included, padding excluded). Absent from runs logged before it
    /// was recorded.
    #[serde(default)]
    pub tokens_processed: u64,
    /// Throughput of this step: `tokens_processed` per second, as other training tools count
    /// tokens/s.
    pub tokens_per_sec: f64,
    /// Training seconds since the run began (resumed runs continue the count).
    pub elapsed_secs: f64,
    /// The objective's own metrics (DPO: `rewards/chosen`, `rewards/rejected`,
    /// `rewards/accuracy`, `rewards/margin`, `logps/chosen`, `logps/rejected`), means over
    /// the step's pairs; on steps that evaluated, the same over the evaluation data as
    /// `eval_rewards/accuracy` and so on.
    #[serde(flatten)]
    pub objective: BTreeMap<String, f64>,
}

impl StepMetrics {
    /// The record of `step`, `elapsed_secs` into the run, for a model of `layers` layers.
    pub fn from_step(step: &StepSummary, elapsed_secs: f64, layers: usize) -> Self {
        Self {
            step: step.step,
            loss: step.loss(),
            eval_loss: None,
            lr: step.lr,
            grad_norm: step.grad_norm(),
            kept_fraction: step.mask.kept_fraction(),
            layer_kept: step.layer_kept_fractions(layers),
            tokens: step.totals.weight as u64,
            tokens_processed: step.totals.tokens,
            tokens_per_sec: step.tokens_per_sec(),
            elapsed_secs,
            objective: step.totals.metrics.means(step.totals.weight),
        }
    }

    /// Adds an evaluation's loss and metrics.
    pub fn add_eval(&mut self, report: &LossReport) {
        self.eval_loss = Some(report.loss);
        for (name, value) in &report.metrics {
            self.objective.insert(format!("eval_{name}"), *value);
        }
    }
}

/// Appends steps to `metrics.jsonl`.
pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// Opens `output_dir/metrics.jsonl`, keeping only the steps up to `resume_step` (a resumed
    /// run rewrites what an interrupted run logged after its checkpoint).
    pub fn open(output_dir: &Path, resume_step: u64) -> Result<Self> {
        let path = output_dir.join("metrics.jsonl");
        // A history that cannot be read stops the run rather than being replaced by an empty
        // one: it is the record of every step so far.
        let earlier = if path.exists() && resume_step > 0 {
            read_metrics(&path).context("the run's metrics history cannot be continued")?
        } else {
            Vec::new()
        };
        let kept: Vec<StepMetrics> = earlier
            .into_iter()
            .filter(|m| m.step <= resume_step)
            .collect();
        let mut text = String::new();
        for m in &kept {
            text.push_str(&serde_json::to_string(m).expect("metrics serialize"));
            text.push('\n');
        }
        fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Self { path, file })
    }

    /// Appends one step.
    pub fn write(&mut self, metrics: &StepMetrics) -> Result<()> {
        let line = serde_json::to_string(metrics).expect("metrics serialize");
        writeln!(self.file, "{line}")
            .with_context(|| format!("cannot write {}", self.path.display()))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads a `metrics.jsonl`.
pub fn read_metrics(path: &Path) -> Result<Vec<StepMetrics>> {
    let file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    BufReader::new(file)
        .lines()
        .enumerate()
        .filter(|(_, line)| !matches!(line, Ok(l) if l.trim().is_empty()))
        .map(|(i, line)| {
            let line = line.with_context(|| format!("cannot read {}", path.display()))?;
            serde_json::from_str(&line)
                .with_context(|| format!("{}:{}: not a metrics record", path.display(), i + 1))
        })
        .collect()
}

/// Progress on the terminal, or log lines when stderr is redirected.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// Progress over `total` steps, starting at `done`.
    pub fn new(total: u64, done: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total).with_position(done);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
                )
                .expect("valid template"),
            );
            bar.enable_steady_tick(Duration::from_millis(500));
            bar
        });
        Self { bar }
    }

    /// Shows a completed step.
    pub fn step(&self, m: &StepMetrics, total: u64) {
        let mut msg = format!(
            "loss {:.4}  lr {:.2e}  {:.0} tok/s  kept {:.1}%",
            m.loss,
            m.lr,
            m.tokens_per_sec,
            100.0 * m.kept_fraction
        );
        match m.objective.get("rewards/accuracy") {
            Some(accuracy) => msg.push_str(&format!("  reward acc {:.0}%", 100.0 * accuracy)),
            // tok/s counts every token processed; the loss is over fewer (responses only).
            None => msg.push_str(&format!(
                "  loss on {}/{} tok",
                m.tokens, m.tokens_processed
            )),
        }
        match &self.bar {
            Some(bar) => {
                bar.set_position(m.step);
                bar.set_message(msg);
            }
            None => tracing::info!("step {}/{total}  {msg}", m.step),
        }
    }

    /// Prints a line without breaking the bar.
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => tracing::info!("{line}"),
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
