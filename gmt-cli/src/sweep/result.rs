//! One finished run of a sweep, as a row of `results.jsonl`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::plan::{Configuration, PlannedRun};
use crate::metrics::StepMetrics;

/// A trained and evaluated run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// Its configuration's name.
    pub config: String,
    /// Its seed.
    pub seed: u64,
    /// The settings its configuration changes (dotted keys).
    pub changes: BTreeMap<String, toml::Value>,
    /// Its directory, relative to the sweep's.
    pub run_dir: String,
    /// Optimizer steps taken.
    pub steps: u64,
    /// The last step's training loss.
    pub train_loss: f64,
    /// The mean training loss over the last tenth of the steps (at least one): less noisy.
    pub train_loss_tail: f64,
    /// The last in-training evaluation loss (with `[data] eval` or `eval_fraction`).
    pub train_eval_loss: Option<f64>,
    /// Mean over steps of the fraction of gradient entries kept by the mask.
    pub mean_kept_fraction: f64,
    /// What `gmt eval --json` reported on the final model (loss, perplexity, tokens; accuracy,
    /// correct and total for GSM8K), if the sweep evaluates.
    pub eval: Option<serde_json::Value>,
    /// Wall-clock figures (left out when comparing sweeps).
    pub timing: Timing,
}

/// How long a run took.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    /// Seconds in optimizer steps (evaluation and checkpoints excluded), over every sitting.
    pub train_secs: f64,
    /// The median seconds of one optimizer step.
    pub median_step_secs: f64,
    /// Seconds of the final evaluation.
    pub eval_secs: f64,
    /// The machine of the run's last sitting (CPU model and threads): timings compare only
    /// within one. Absent in rows written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
}

/// This machine, as a timing's `machine`: the CPU model (Linux's `/proc/cpuinfo`, else the
/// architecture) and how many threads the process may run.
pub fn this_machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, name)| name.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    format!("{model}, {} threads", crate::backend::rayon_threads())
}

impl RunResult {
    /// The row of `run`, from its `metrics.jsonl` and evaluation.
    pub fn new(
        config: &Configuration,
        run: &PlannedRun,
        metrics: &[StepMetrics],
        eval: Option<serde_json::Value>,
        eval_secs: f64,
    ) -> Self {
        let steps = metrics.last().map_or(0, |m| m.step);
        let tail = (metrics.len() / 10).max(1).min(metrics.len());
        let mean = |xs: &mut dyn Iterator<Item = f64>, n: usize| xs.sum::<f64>() / n.max(1) as f64;
        let mut step_secs: Vec<f64> = metrics
            .iter()
            .scan(0.0, |before, m| {
                let secs = m.elapsed_secs - *before;
                *before = m.elapsed_secs;
                Some(secs)
            })
            .collect();
        step_secs.sort_by(f64::total_cmp);
        Self {
            config: config.name.clone(),
            seed: run.seed,
            changes: config.changes.clone(),
            run_dir: run.rel_dir.to_string_lossy().into_owned(),
            steps,
            train_loss: metrics.last().map_or(f64::NAN, |m| m.loss),
            train_loss_tail: mean(
                &mut metrics[metrics.len() - tail..].iter().map(|m| m.loss),
                tail,
            ),
            train_eval_loss: metrics.iter().rev().find_map(|m| m.eval_loss),
            mean_kept_fraction: mean(&mut metrics.iter().map(|m| m.kept_fraction), metrics.len()),
            eval,
            timing: Timing {
                train_secs: metrics.last().map_or(0.0, |m| m.elapsed_secs),
                median_step_secs: median(&step_secs),
                eval_secs,
                machine: Some(this_machine()),
            },
        }
    }

    /// A number from the evaluation (`loss`, `accuracy`, …).
    pub fn eval_metric(&self, key: &str) -> Option<f64> {
        self.eval.as_ref()?.get(key)?.as_f64()
    }
}

/// The median of sorted numbers (0 for none).
fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Writes `value` as JSON, atomically.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    write_atomic(path, &serde_json::to_vec_pretty(value)?)
}

/// Reads a run's `result.json`.
pub fn read_json(path: &Path) -> Result<RunResult> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| {
        format!(
            "{} is not a sweep result (delete it to run that run again)",
            path.display()
        )
    })
}

/// Writes under a temporary name, then renames: a reader never sees half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let partial = path.with_file_name(format!(".partial-{name}"));
    std::fs::write(&partial, bytes)
        .and_then(|()| std::fs::rename(&partial, path))
        .with_context(|| format!("cannot write {}", path.display()))
}
