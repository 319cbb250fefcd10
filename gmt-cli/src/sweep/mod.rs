//! `gmt sweep`: many `gmt train` runs (configurations × seeds) and an evaluation of each,
//! resumable. Each run is an ordinary `gmt train` output directory under
//! `<sweep>/runs/<configuration>/seed-<seed>/`; a finished, evaluated run holds `result.json`.
//! Rerunning the command skips finished runs, resumes an unfinished one from its newest
//! checkpoint and starts the rest; `results.jsonl` and `summary.md` are rewritten, in plan
//! order, after every run.

mod plan;
mod result;
mod summary;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};

pub use plan::SweepPlan;
pub use result::RunResult;

use crate::backend::{run_job, run_training_job};
use crate::checkpoint;
use crate::cli::{DpoFlags, EvalArgs, FormatArgs, ModelArgs, SweepArgs};
use crate::commands::{EvalJob, Finished, interrupt_flag, select_for_training};
use crate::metrics::read_metrics;
use crate::settings::{ObjectiveKind, TrainSettings};
use crate::train::{TrainJob, TrainOutcome};

/// Marks a run whose training finished (its evaluation may not have).
const TRAINED_FILE: &str = "trained.json";
/// A finished and evaluated run's row of `results.jsonl`.
const RESULT_FILE: &str = "result.json";

/// Where a planned run stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RunState {
    /// Trained and evaluated.
    Done,
    /// Trained, not yet evaluated.
    Trained,
    /// Stopped with a checkpoint.
    Partial,
    /// Not started.
    ToDo,
}

impl RunState {
    fn of(dir: &Path) -> Result<Self> {
        Ok(if dir.join(RESULT_FILE).is_file() {
            Self::Done
        } else if dir.join(TRAINED_FILE).is_file() {
            Self::Trained
        } else if has_checkpoint(dir) {
            Self::Partial
        } else {
            Self::ToDo
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Trained => "trained, not evaluated",
            Self::Partial => "partial (resumes from its checkpoint)",
            Self::ToDo => "to do",
        }
    }
}

/// Whether a run directory holds a checkpoint. Only a look at the names: `gmt train
/// --resume` verifies the checkpoint (hashing its files) once, when it resumes.
fn has_checkpoint(dir: &Path) -> bool {
    std::fs::read_dir(checkpoint::checkpoints_dir(dir)).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("step-"))
    })
}

/// `gmt sweep`
pub fn sweep(args: &SweepArgs) -> Result<Finished> {
    let plan = SweepPlan::from_file(&args.config, args.output.as_deref())?;
    if args.list {
        let mut out = std::io::stdout().lock();
        for run in &plan.runs {
            let state = RunState::of(&plan.dir.join(&run.rel_dir))?;
            match writeln!(out, "{}  {}", run.rel_dir.display(), state.name()) {
                // `gmt sweep --list | head`: the reader has what it wanted.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break,
                written => written.context("cannot write the list to stdout")?,
            }
        }
        return Ok(Finished::Done);
    }
    std::fs::create_dir_all(&plan.dir)
        .with_context(|| format!("cannot create the sweep directory {}", plan.dir.display()))?;
    // A finished run must have been trained with the settings planned now.
    for run in &plan.runs {
        let dir = plan.dir.join(&run.rel_dir);
        if RunState::of(&dir)? != RunState::ToDo && dir.join(checkpoint::SETTINGS_FILE).is_file() {
            let saved = TrainSettings::from_file(&dir.join(checkpoint::SETTINGS_FILE))?;
            run.settings.ensure_same_run(&saved).with_context(|| {
                format!(
                    "{} was trained with other settings than the sweep file now gives",
                    dir.display()
                )
            })?;
        }
    }
    let interrupt = interrupt_flag()?;
    let total = plan.runs.len();
    let mut finished_here = 0;
    for (i, run) in plan.runs.iter().enumerate() {
        let dir = plan.dir.join(&run.rel_dir);
        if RunState::of(&dir)? == RunState::Done {
            continue;
        }
        // An interrupt that came during an evaluation stops the sweep before the next run.
        if interrupt.load(Ordering::SeqCst) {
            outln!("interrupted; rerun the same command to continue");
            return Ok(Finished::Interrupted);
        }
        if args.max_runs.is_some_and(|n| finished_here >= n) {
            outln!(
                "stopped after {finished_here} runs (--max-runs); rerun the same command to continue"
            );
            return Ok(Finished::Done);
        }
        let name = &plan.configs[run.config].name;
        tracing::info!("run {} of {total}: {name}, seed {}", i + 1, run.seed);
        match run_one(&plan, run, args.stop_after, &interrupt)? {
            Some(result) => {
                result::write_json(&dir.join(RESULT_FILE), &result)?;
                remove_bulk(&dir, plan.keep_final)?;
                finished_here += 1;
                write_outputs(&plan)?;
            }
            None => {
                write_outputs(&plan)?;
                let interrupted = interrupt.load(Ordering::SeqCst);
                outln!(
                    "stopped during {} with a checkpoint; rerun the same command to continue",
                    run.rel_dir.display()
                );
                return Ok(if interrupted {
                    Finished::Interrupted
                } else {
                    Finished::Done
                });
            }
        }
    }
    let results = write_outputs(&plan)?;
    outln!("{}", summary::table(&plan, &results));
    outln!(
        "all {total} runs done: {}",
        plan.dir.join("summary.md").display()
    );
    Ok(Finished::Done)
}

/// Trains (or resumes) and evaluates one run; `None` when it stopped with a checkpoint.
fn run_one(
    plan: &SweepPlan,
    run: &plan::PlannedRun,
    stop_after: Option<u64>,
    interrupt: &Arc<AtomicBool>,
) -> Result<Option<RunResult>> {
    let dir = plan.dir.join(&run.rel_dir);
    let settings = &run.settings;
    let state = RunState::of(&dir)?;
    if state != RunState::Trained {
        let resume = state == RunState::Partial;
        let job = TrainJob {
            settings: settings.clone(),
            resume,
            // Only the sweep writes here: files of a run that left no checkpoint are replaced.
            force: !resume,
            stop_after,
            interrupt: interrupt.clone(),
            rank: None,
        };
        let selected = select_for_training(settings)?;
        let replicas = settings.train.devices.len().max(1);
        crate::fit::check_train(
            settings,
            &selected,
            settings.train.grad_accum.div_ceil(replicas),
            true,
        )
        .with_context(|| format!("run {}", dir.display()))?;
        match run_training_job(&selected, settings.train.checkpointing, job)
            .with_context(|| format!("run {}", dir.display()))?
        {
            TrainOutcome::Finished { steps, .. } => result::write_json(
                &dir.join(TRAINED_FILE),
                &serde_json::json!({"steps": steps}),
            )?,
            TrainOutcome::Stopped { .. } => return Ok(None),
        }
    }
    let started = Instant::now();
    let eval = match &plan.eval {
        Some(spec) => {
            let args = eval_args(spec, settings, &dir);
            let selected = select_for_training(settings)?;
            let out = run_job(&selected, EvalJob(&args))
                .with_context(|| format!("evaluating {}", dir.display()))?;
            Some(out)
        }
        None => None,
    };
    let metrics = read_metrics(&dir.join("metrics.jsonl"))?;
    Ok(Some(RunResult::new(
        &plan.configs[run.config],
        run,
        &metrics,
        eval,
        started.elapsed().as_secs_f64(),
    )))
}

/// A finished run's checkpoints (only for resuming) and, unless kept, its final model: a
/// sweep of 7B runs would otherwise fill any disk.
fn remove_bulk(dir: &Path, keep_final: bool) -> Result<()> {
    let mut bulk = vec![dir.join("checkpoints")];
    if !keep_final {
        bulk.push(dir.join("final"));
    }
    for path in bulk.into_iter().filter(|p| p.exists()) {
        std::fs::remove_dir_all(&path)
            .with_context(|| format!("cannot remove {}", path.display()))?;
    }
    Ok(())
}

/// `gmt eval`'s arguments for a run's final model.
fn eval_args(spec: &plan::EvalSpec, settings: &TrainSettings, dir: &Path) -> EvalArgs {
    let dpo = settings.train.objective == ObjectiveKind::Dpo;
    let reference = settings
        .train
        .reference
        .clone()
        .or(settings.model.path.clone());
    EvalArgs {
        model: ModelArgs {
            model: Some(dir.join("final")),
            tokenizer: None,
            chat_template: None,
        },
        data: spec.data.clone(),
        format: FormatArgs::default(),
        task: spec.task,
        objective: settings.train.objective,
        reference: if dpo { reference } else { None },
        dpo: DpoFlags {
            beta: Some(settings.dpo.beta),
            label_smoothing: Some(settings.dpo.label_smoothing),
            loss_type: Some(settings.dpo.loss_type),
        },
        max_prompt_len: settings.data.max_prompt_len,
        max_seq_len: spec.max_seq_len,
        batch_size: spec.batch_size,
        max_examples: spec.max_examples,
        max_new_tokens: spec.max_new_tokens,
        json: true,
        backend: settings.train.backend,
    }
}

/// `results.jsonl` (finished runs, in plan order) and `summary.md`, from the runs'
/// `result.json` files.
fn write_outputs(plan: &SweepPlan) -> Result<Vec<RunResult>> {
    let mut results = Vec::new();
    for run in &plan.runs {
        let path = plan.dir.join(&run.rel_dir).join(RESULT_FILE);
        if path.is_file() {
            results.push(result::read_json(&path)?);
        }
    }
    let lines: String = results
        .iter()
        .map(|r| serde_json::to_string(r).map(|line| line + "\n"))
        .collect::<Result<_, _>>()?;
    result::write_atomic(&plan.dir.join("results.jsonl"), lines.as_bytes())?;
    let markdown = summary::markdown(plan, &results);
    result::write_atomic(&plan.dir.join("summary.md"), markdown.as_bytes())?;
    if let Err(e) = summary::plot(plan, &results, &plan.dir.join("summary.svg")) {
        tracing::warn!("{e:#}");
    }
    Ok(results)
}
