//! `gmt train`: the settings become a model, data and a gmt-train [`Trainer`]; the loop below
//! decides when to evaluate, save and stop, and owns what the user sees (progress, log lines,
//! `metrics.jsonl`, the plot, the exported model).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use gmt_core::StepReport;
use gmt_data::Encoder;
use gmt_models::LlamaForCausalLm;
use gmt_train::{DataParallel, LossReport, Objective};

use crate::backend::BackendJob;
use crate::checkpoint::RunDir;
use crate::dataset::{RunData, report_data};
use crate::distributed::Rank;
use crate::metrics::{MetricsLog, Progress, StepMetrics};
use crate::model_source::load_model;
use crate::objective::{DpoRun, RunObjective, Sft};
use crate::settings::{ObjectiveKind, TrainSettings};

/// How a `gmt train` invocation ended.
#[derive(Clone, Debug, PartialEq)]
pub enum TrainOutcome {
    /// Every step ran; the final model is in `final_dir`.
    Finished {
        /// Steps of the run.
        steps: u64,
        /// Last evaluation, if there is eval data.
        eval: Option<LossReport>,
        /// The exported final model.
        final_dir: PathBuf,
    },
    /// Stopped early (Ctrl-C, SIGTERM or `--stop-after`) with a checkpoint to resume from.
    Stopped {
        /// Steps done.
        step: u64,
        /// The checkpoint written.
        checkpoint: PathBuf,
        /// Whether an interrupt (Ctrl-C, SIGTERM) stopped it.
        interrupted: bool,
    },
}

/// `gmt train` as a backend job.
pub struct TrainJob {
    /// Effective settings.
    pub settings: TrainSettings,
    /// Continue from the newest checkpoint in the output directory.
    pub resume: bool,
    /// Replace an earlier run in the output directory.
    pub force: bool,
    /// Stop (with a checkpoint) after this many steps in this invocation.
    pub stop_after: Option<u64>,
    /// Set by the interrupt handler (Ctrl-C, SIGTERM, SIGHUP).
    pub interrupt: Arc<AtomicBool>,
    /// This process's rank when it is one of several (`--distributed`).
    pub rank: Option<Rank>,
}

impl TrainJob {
    /// Whether this process writes the run's files and reports its progress: rank 0, or the
    /// only process.
    fn writes(&self) -> bool {
        self.rank.is_none_or(|r| r.index() == 0)
    }
}

impl BackendJob for TrainJob {
    type Output = TrainOutcome;

    fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>) -> Result<TrainOutcome> {
        train::<B>(self, &devices)
    }
}

fn train<B: AutodiffBackend>(job: TrainJob, devices: &[B::Device]) -> Result<TrainOutcome> {
    let settings = &job.settings;
    let device = &devices[0];
    settings.train.precision.check_backend::<B>(device)?;
    let run = RunDir::open(settings, job.resume, job.force, job.writes())?;
    let loaded = load_model::<B>(settings.model_path()?, &settings.overrides(), device)?;
    let data = RunData::new(settings, loaded.model.config())?;
    let encoder = Encoder::new(
        loaded.tokenizer,
        loaded.template,
        settings.data.train_on_prompt,
    );
    data.check_format(&encoder, settings)?;
    let model = loaded.model;
    match settings.train.objective {
        ObjectiveKind::CausalLm => run_loop(&job, &run, model, &data, &encoder, Sft, devices),
        ObjectiveKind::Dpo => {
            let start = (!run.is_resuming()).then_some(&model);
            let dpo = DpoRun::new(
                settings,
                run.path(),
                start,
                &data,
                &encoder,
                device,
                job.writes(),
            )?;
            run_loop(&job, &run, model, &data, &encoder, dpo, devices)
        }
    }
}

/// The run: steps, evaluations, checkpoints, until done or stopped.
fn run_loop<B: AutodiffBackend, R: RunObjective>(
    job: &TrainJob,
    run: &RunDir,
    model: LlamaForCausalLm<B>,
    data: &RunData,
    encoder: &Encoder,
    objective: R,
    devices: &[B::Device],
) -> Result<TrainOutcome>
where
    R::Objective: Send + 'static,
    <R::Objective as Objective>::Batch: Send + 'static,
{
    let t = &job.settings.train;
    let layers = model.config().num_hidden_layers;
    let eval_set = match data.eval_batches(encoder)? {
        Some(batches) => Some(objective.batches(batches)?),
        None => None,
    };
    let total_steps = || data.total_steps(encoder);
    let (mut replicas, position) =
        run.start(model, objective.objective(), total_steps, devices, job.rank)?;
    crate::fit::after_load();
    let mut batches = data.training_batches(encoder, position)?;

    let counters = *replicas.primary().progress();
    let (started_at, total_steps) = (counters.step, counters.total_steps);
    // Rank 0 of a multi-process run logs, evaluates and writes; the other ranks only step.
    let writes = job.writes();
    let mut metrics_log = match writes {
        true => Some(MetricsLog::open(run.path(), started_at)?),
        false => None,
    };
    let progress = writes.then(|| Progress::new(total_steps, started_at));
    let show = |line: &str| {
        if let Some(p) = &progress {
            p.println(line);
        }
    };
    let mut last_eval = None;
    while !replicas.primary().is_done() {
        // An interrupt on any rank stops every rank at this step.
        let interrupted = replicas.any_replica(job.interrupt.load(Ordering::SeqCst));
        let done_here = replicas.primary().progress().step - started_at;
        if interrupted || job.stop_after.is_some_and(|n| done_here >= n) {
            let checkpoint = run.save(&mut replicas, &batches.position())?;
            if let Some(p) = &progress {
                p.finish();
            }
            let step = replicas.primary().progress().step;
            return Ok(TrainOutcome::Stopped {
                step,
                checkpoint,
                interrupted,
            });
        }
        // Data that runs dry says why (bad records, examples cut to nothing) before the error.
        let step_batches = batches
            .next_step(data.grad_accum())
            .inspect_err(|_| report_data(batches.stream().report(), &batches.fit_report()))?;
        let micro_batches = objective.batches(step_batches)?;
        if micro_batches.is_empty() {
            break; // every epoch is done
        }
        let next = replicas.primary().progress().step + 1;
        let step = replicas
            .step(micro_batches)
            .with_context(|| format!("optimizer step {next}"))?;
        let trainer = replicas.primary();
        if let StepReport::Skipped { param, .. } = &step.mask {
            show(&format!(
                "step {} skipped: non-finite gradient in {param}",
                step.step
            ));
        }
        let mut metrics = StepMetrics::from_step(&step, trainer.progress().elapsed_secs, layers);
        let every = |n: u64| n > 0 && step.step % n == 0;
        if let Some(eval) = &eval_set
            && writes
            && (every(t.eval_every) || trainer.is_done())
        {
            let report = trainer.evaluate(eval)?;
            metrics.add_eval(&report);
            show(&format!(
                "step {}: {}",
                step.step,
                objective.describe_eval(&report)
            ));
            last_eval = Some(report);
        }
        if let (Some(log), Some(p)) = (&mut metrics_log, &progress) {
            log.write(&metrics)?;
            p.step(&metrics, total_steps);
        }
        if every(t.checkpoint_every) && !replicas.primary().is_done() {
            run.save(&mut replicas, &batches.position())?;
        }
    }
    if let Some(p) = &progress {
        p.finish();
    }
    replicas.finish_here();
    run.save(&mut replicas, &batches.position())?;
    report_all_reduce(&replicas);
    let steps = replicas.primary().progress().step;
    let final_dir = match &metrics_log {
        Some(log) => {
            report_data(batches.stream().report(), &batches.fit_report());
            run.write_final(replicas.primary().model(), encoder, log.path())?
        }
        None => run.path().join("final"),
    };
    // The step count came from a pass over the same data: running out before it means the
    // data changed under the run. The model is saved, but the run is not what was asked for.
    if steps < total_steps {
        anyhow::bail!(
            "the training data ran out after {steps} of {total_steps} steps (did it change during the run?); the model so far is in {}",
            final_dir.display()
        );
    }
    Ok(TrainOutcome::Finished {
        steps,
        eval: last_eval,
        final_dir,
    })
}

/// Logs what the all-reduce of a data-parallel run cost (rank 0 only).
fn report_all_reduce<B: AutodiffBackend, O: Objective>(run: &DataParallel<B, O>) {
    let stats = run.all_reduce_stats();
    if run.replicas() > 1 && run.is_primary() && stats.steps > 0 {
        tracing::info!(
            "all-reduce over {} replicas: {:.1} MB of gradients per step; {:.3} s per step summing them, {:.3} s per step waiting for the other replicas",
            run.replicas(),
            stats.bytes_per_step() / 1e6,
            stats.gradient_secs_per_step(),
            stats.wait_secs_per_step()
        );
    }
}
