//! `gmt train`: the fine-tuning loop.
//!
//! One optimizer step = `grad_accum` micro-batches. Each micro-batch's gradient is weighted
//! by its counted (response) tokens, so Γ is the gradient of the mean loss over every counted
//! token of the step, whatever the split into micro-batches. Γ then goes through the GMT
//! optimizer: mask, clip the global norm of Γ·mask (`optim.max_grad_norm`), AdamW.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::ElementConversion;
use burn::tensor::backend::AutodiffBackend;
use gmt_core::{GmtConfig, GradientMean, MaskStats, MaskStrategy, StepReport};
use gmt_data::{Batches, DataStream, Encoder, Split};
use gmt_models::{ExportDtype, LlamaForCausalLm, TokenBatch};

use crate::backend::BackendJob;
use crate::checkpoint::{Checkpoint, TrainerState, write_checkpoint};
use crate::dataset::{StreamSettings, batch_config, count_steps, eval_batches, open_source};
use crate::evaluate::{LossReport, mean_loss};
use crate::export::export_model;
use crate::metrics::{MetricsLog, Progress, StepMetrics};
use crate::model_source::{Overrides, load_model, load_weights_record, weights_record_bytes};
use crate::plot::plot_run;
use crate::schedule::LrSchedule;
use crate::settings::{StrategySetting, TrainSettings};

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
    /// Stopped early (Ctrl-C or `--stop-after`) with a checkpoint to resume from.
    Stopped {
        /// Steps done.
        step: u64,
        /// The checkpoint written.
        checkpoint: PathBuf,
        /// Whether Ctrl-C stopped it.
        interrupted: bool,
    },
}

/// `gmt train` as a backend job.
pub struct TrainJob {
    /// Effective settings.
    pub settings: TrainSettings,
    /// Continue from the newest checkpoint in the output directory.
    pub resume: bool,
    /// Stop (with a checkpoint) after this many steps in this invocation.
    pub stop_after: Option<u64>,
    /// Set by the Ctrl-C handler.
    pub interrupt: Arc<AtomicBool>,
}

impl BackendJob for TrainJob {
    type Output = TrainOutcome;

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<TrainOutcome> {
        train::<B>(self, &device)
    }
}

/// The GMT optimizer settings of a run.
pub fn gmt_config(settings: &TrainSettings) -> GmtConfig {
    let g = &settings.gmt;
    let strategy = match g.strategy {
        StrategySetting::Gmt => MaskStrategy::Magnitude,
        StrategySetting::Random => MaskStrategy::Random,
        StrategySetting::None => MaskStrategy::None,
    };
    let max_norm = settings.optim.max_grad_norm;
    GmtConfig::new(g.mask_ratio)
        .with_scope(g.scope)
        .with_target(g.target)
        .with_strategy(strategy)
        .with_exclude(g.exclude.clone())
        .with_seed(settings.train.seed)
        .with_max_grad_norm((max_norm > 0.0).then_some(max_norm))
}

fn train<B: AutodiffBackend>(job: TrainJob, device: &B::Device) -> Result<TrainOutcome> {
    let settings = &job.settings;
    settings.validate()?;
    let output = settings.train.output_dir.clone().expect("validated");
    std::fs::create_dir_all(&output)
        .with_context(|| format!("cannot create output directory {}", output.display()))?;

    let checkpoint = Checkpoint::latest(&output)?;
    let checkpoint = match (job.resume, checkpoint) {
        (true, Some(c)) => {
            check_same_run(settings, &c.settings()?)?;
            Some(c)
        }
        (true, None) => bail!(
            "--resume: no checkpoint in {}/checkpoints to resume from",
            output.display()
        ),
        (false, Some(c)) => bail!(
            "{} already holds checkpoint {}: pass --resume to continue that run, or choose another --output",
            output.display(),
            c.dir().display()
        ),
        (false, None) => None,
    };
    std::fs::write(output.join("config.toml"), settings.to_toml())
        .with_context(|| format!("cannot write {}/config.toml", output.display()))?;

    let overrides = Overrides {
        tokenizer: settings.model.tokenizer.clone(),
        chat_template: settings.model.chat_template.clone(),
    };
    let model_path = settings.model.path.as_deref().expect("validated");
    let loaded = load_model::<B>(model_path, &overrides, device)?;
    let mut model = loaded.model;
    let model_config = model.config().clone();
    let encoder = Encoder::new(
        loaded.tokenizer,
        loaded.template,
        settings.data.train_on_prompt,
    );

    let data = &settings.data;
    let train_path = data.train.as_deref().expect("validated");
    let streams = StreamSettings {
        format: settings.record_format()?,
        seed: settings.train.seed,
        shuffle_buffer: data.shuffle_buffer,
        skip_bad_records: data.skip_bad_records,
    };
    let (train_split, eval_source) = match (&data.eval, data.eval_fraction) {
        (Some(eval), _) => (Split::All, Some((eval.clone(), Split::All))),
        (None, f) if f > 0.0 => (
            Split::Train { eval_fraction: f },
            Some((train_path.to_path_buf(), Split::Eval { eval_fraction: f })),
        ),
        (None, _) => (Split::All, None),
    };
    let batching = batch_config(
        &model_config,
        settings.train.micro_batch_size,
        data.max_seq_len,
        data.truncation,
        data.packing,
        data.group_by_length,
    );
    let eval_set: Option<Vec<TokenBatch>> = eval_source
        .map(|(path, split)| {
            // Evaluation order does not matter; packing would change what the model sees.
            let eval_batching = gmt_data::BatchConfig {
                packing: false,
                group_by_length: 0,
                ..batching.clone()
            };
            eval_batches(
                &path,
                &encoder,
                &streams,
                split,
                eval_batching,
                data.eval_max_examples,
            )
        })
        .transpose()?;

    let stream_config = streams.config(train_split);
    let grad_accum = settings.train.grad_accum;
    let total_steps = match &checkpoint {
        Some(c) => c.trainer_state()?.total_steps,
        None if settings.train.max_steps > 0 => settings.train.max_steps,
        None => count_steps(
            train_path,
            &encoder,
            &stream_config,
            batching.clone(),
            grad_accum,
            settings.train.epochs,
        )?,
    };
    let schedule = LrSchedule {
        lr: settings.optim.lr,
        kind: settings.schedule.kind,
        warmup_steps: settings.schedule.warmup_steps,
        total_steps,
        min_lr_ratio: settings.schedule.min_lr_ratio,
    };

    let o = &settings.optim;
    let adamw = AdamWConfig::new()
        .with_beta_1(o.beta1)
        .with_beta_2(o.beta2)
        .with_epsilon(o.eps)
        .with_weight_decay(o.weight_decay)
        .init();
    let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
    let mut state = match &checkpoint {
        Some(c) => {
            model = load_weights_record(model, &c.model_file(), device)?;
            c.trainer_state()?
        }
        None => TrainerState {
            step: 0,
            total_steps,
            tokens_seen: 0,
            elapsed_secs: 0.0,
            stream: DataStream::new(open_source(train_path)?, &encoder, stream_config.clone())?
                .state(),
            pending: Vec::new(),
            fit: Default::default(),
        },
    };
    let mut optim = gmt_config(settings).init(adamw, &model)?;
    if let Some(c) = &checkpoint {
        let record = recorder
            .load(c.optimizer_bytes()?, device)
            .map_err(|e| anyhow::anyhow!("{}: corrupt optimizer state: {e}", c.dir().display()))?;
        optim = optim.load_record(record);
        tracing::info!("resuming {} at step {}", c.dir().display(), state.step);
    }

    let stream = DataStream::resume(
        open_source(train_path)?,
        &encoder,
        stream_config,
        state.stream.clone(),
    )?;
    let mut batches = Batches::resume(stream, batching, state.pending.clone(), state.fit)?;
    if let Some(format) = &batches.examples().report().format {
        tracing::info!("training data: {} ({format})", train_path.display());
    }
    let epochs = (settings.train.max_steps == 0).then_some(settings.train.epochs);

    let mut metrics_log = MetricsLog::open(&output, state.step)?;
    let progress = Progress::new(total_steps, state.step);
    let layers = model_config.num_hidden_layers;
    let started_at = state.step;
    let mut last_eval = None;
    let save = |model: &LlamaForCausalLm<B>, optim: &_, state: &TrainerState| -> Result<PathBuf> {
        let optim_bytes = recorder
            .record(Optimizer::<LlamaForCausalLm<B>, B>::to_record(optim), ())
            .map_err(|e| anyhow::anyhow!("cannot serialize the optimizer: {e}"))?;
        write_checkpoint(
            &output,
            &weights_record_bytes(model)?,
            &optim_bytes,
            state,
            settings,
            settings.train.keep_checkpoints,
        )
    };

    while state.step < total_steps {
        let stop_requested = job.interrupt.load(Ordering::SeqCst)
            || job.stop_after.is_some_and(|n| state.step - started_at >= n);
        if stop_requested {
            let interrupted = job.interrupt.load(Ordering::SeqCst);
            snapshot_data(&batches, &mut state);
            let dir = save(&model, &optim, &state)?;
            progress.finish();
            return Ok(TrainOutcome::Stopped {
                step: state.step,
                checkpoint: dir,
                interrupted,
            });
        }
        let lr = schedule.at(state.step);
        let started = Instant::now();
        let mut mean = GradientMean::new();
        let (mut loss_sum, mut counted, mut seen) = (0.0f64, 0u64, 0u64);
        for _ in 0..grad_accum {
            let Some(batch) = next_batch(&mut batches, epochs)? else {
                break;
            };
            let out = model.forward(&batch)?;
            seen += batch
                .attention_mask
                .as_ref()
                .map_or(batch.input_ids.len(), |m| m.iter().filter(|&&x| x).count())
                as u64;
            if out.tokens == 0 {
                continue; // nothing to learn from (every label masked)
            }
            let loss = out.loss.context("training batches carry labels")?;
            let value: f32 = loss.clone().into_scalar().elem();
            loss_sum += value as f64 * out.tokens as f64;
            counted += out.tokens as u64;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            mean.add_weighted(&model, grads, out.tokens as f64)?;
        }
        if counted == 0 {
            break; // the data ran out (epochs done)
        }
        let gamma = mean.finish(&model)?;
        model = optim
            .try_step(lr, model, gamma)
            .map_err(|failure| failure.error)
            .with_context(|| format!("optimizer step {}", state.step + 1))?;
        let secs = started.elapsed().as_secs_f64();
        state.step += 1;
        state.tokens_seen += counted;
        state.elapsed_secs += secs;
        let (grad_norm, kept_fraction, layer_kept) = match optim.last_report() {
            Some(report @ StepReport::Applied { stats, .. }) => (
                report.grad_norm().unwrap_or(0.0),
                stats.kept_fraction(),
                layer_kept_fractions(stats, layers),
            ),
            Some(StepReport::Skipped { param, .. }) => {
                progress.println(&format!(
                    "step {} skipped: non-finite gradient in {param}",
                    state.step
                ));
                (f64::NAN, 0.0, vec![0.0; layers])
            }
            None => (0.0, 1.0, vec![1.0; layers]),
        };
        let mut metrics = StepMetrics {
            step: state.step,
            loss: loss_sum / counted as f64,
            eval_loss: None,
            lr,
            grad_norm,
            kept_fraction,
            layer_kept,
            tokens: counted,
            tokens_per_sec: seen as f64 / secs,
            elapsed_secs: state.elapsed_secs,
        };
        let last = state.step == total_steps;
        let every = |n: u64| n > 0 && state.step % n == 0;
        if let Some(eval) = &eval_set
            && (every(settings.train.eval_every) || last)
        {
            let report = mean_loss(&model.valid(), eval)?;
            metrics.eval_loss = Some(report.loss);
            progress.println(&format!(
                "step {}: eval loss {:.4} (perplexity {:.2}, {} tokens)",
                state.step, report.loss, report.perplexity, report.tokens
            ));
            last_eval = Some(report);
        }
        metrics_log.write(&metrics)?;
        progress.step(&metrics, total_steps);
        if every(settings.train.checkpoint_every) && !last {
            snapshot_data(&batches, &mut state);
            save(&model, &optim, &state)?;
        }
    }
    progress.finish();
    snapshot_data(&batches, &mut state);
    state.total_steps = state.step;
    save(&model, &optim, &state)?;
    report_data(&batches);

    let final_dir = output.join("final");
    export_model(
        &model,
        encoder.tokenizer(),
        encoder.template(),
        &final_dir,
        ExportDtype::F32,
    )?;
    let plot = output.join("plot.svg");
    let all = crate::metrics::read_metrics(metrics_log.path())?;
    if let Err(e) = plot_run(&all, &plot) {
        tracing::warn!("{e:#}");
    }
    Ok(TrainOutcome::Finished {
        steps: state.step,
        eval: last_eval,
        final_dir,
    })
}

/// The next micro-batch; at the end of the data, the next epoch when more are due.
fn next_batch(
    batches: &mut Batches<DataStream<'_>>,
    epochs: Option<u64>,
) -> Result<Option<TokenBatch>> {
    for _ in 0..2 {
        if let Some(batch) = batches.next() {
            return Ok(Some(batch.context("reading training data")?));
        }
        let stream = batches.examples_mut();
        if epochs.is_some_and(|e| stream.epoch() + 1 >= e) {
            return Ok(None);
        }
        stream.next_epoch()?;
    }
    bail!("the training data yields no examples")
}

/// Records where the data stream stands, for a checkpoint.
fn snapshot_data(batches: &Batches<DataStream<'_>>, state: &mut TrainerState) {
    state.stream = batches.examples().state();
    state.pending = batches.pending().cloned().collect();
    state.fit = batches.report();
}

/// Kept fraction of each decoder layer (parameters named `layers.<i>.…`).
fn layer_kept_fractions(stats: &MaskStats, layers: usize) -> Vec<f64> {
    let mut kept = vec![(0usize, 0usize); layers];
    for p in &stats.params {
        let layer = p
            .path
            .strip_prefix("layers.")
            .and_then(|rest| rest.split('.').next())
            .and_then(|i| i.parse::<usize>().ok());
        if let Some(slot) = layer.and_then(|l| kept.get_mut(l)) {
            slot.0 += p.kept;
            slot.1 += p.numel;
        }
    }
    kept.into_iter()
        .map(|(k, n)| if n == 0 { 1.0 } else { k as f64 / n as f64 })
        .collect()
}

fn report_data(batches: &Batches<DataStream<'_>>) {
    let report = batches.examples().report();
    let fit = batches.report();
    tracing::info!(
        "data: {} records read, {} examples, {} held out, {} bad records skipped, {} truncated, {} dropped as too long",
        report.records,
        report.examples,
        report.held_out,
        report.skipped,
        fit.truncated,
        fit.dropped
    );
    for error in &report.skipped_errors {
        tracing::warn!("skipped: {error}");
    }
}

/// A resumed run must be the run that wrote the checkpoint: everything but the backend and
/// the output location must match.
fn check_same_run(now: &TrainSettings, saved: &TrainSettings) -> Result<()> {
    let mut a = now.clone();
    let mut b = saved.clone();
    for s in [&mut a, &mut b] {
        s.train.backend = Default::default();
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
