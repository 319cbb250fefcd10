//! The subcommands' entry points: argument handling around the library code of each.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use gmt_data::{
    DataSource, Encoder, Example, ExampleReader, FieldMapping, ReaderConfig, RecordFormat, Split,
    Truncation,
};
use gmt_models::{ExportDtype, GenerationConfig, generate};
use gmt_train::{CausalLm, Dpo, DpoConfig};
use serde_json::json;

use crate::backend::{self, BackendChoice, BackendJob, run_job};
use crate::checkpoint;
use crate::cli::{
    DtypeArg, EvalArgs, EvalTask, ExportArgs, FormatArgs, GenerateArgs, InfoArgs, MakeDataArgs,
    ModelArgs, TrainArgs,
};
use crate::dataset::{StreamSettings, batch_config, detect_format, eval_batches};
use crate::distributed::{Rank, Session};
use crate::evaluate::answer_accuracy;
use crate::export::export_model;
use crate::model_source::{LoadedModel, Overrides, load_model};
use crate::objective::{DpoRun, Reference, RunObjective};
use crate::settings::{ObjectiveKind, TrainSettings, record_format};
use crate::train::{TrainJob, TrainOutcome};

/// How a command ended, for the exit code.
pub enum Finished {
    /// Exit 0.
    Done,
    /// Stopped by Ctrl-C or SIGTERM after saving: exit 130.
    Interrupted,
}

/// The backend `choice` names, logged.
pub fn select(choice: BackendChoice) -> Result<backend::Selected> {
    let selected = backend::select(choice)?;
    tracing::info!("backend: {selected}");
    Ok(selected)
}

/// The backend and devices of a training run (`[train] backend` and `devices`), logged.
pub fn select_for_training(settings: &TrainSettings) -> Result<backend::Selected> {
    let selected = backend::select_devices(settings.train.backend, &settings.train.devices)
        .map_err(|e| match e {
            // Kept as itself: a backend that is not there exits with code 2.
            backend::DevicesError::Unavailable(e) => anyhow::Error::from(e),
            other => other.into(),
        })?;
    tracing::info!("backend: {selected}");
    Ok(selected)
}

fn overrides(model: &ModelArgs) -> Overrides {
    Overrides {
        tokenizer: model.tokenizer.clone(),
        chat_template: model.chat_template.clone(),
    }
}

fn model_path(model: &ModelArgs) -> Result<&Path> {
    model.model.as_deref().context(
        "no model given: pass --model (a Hugging Face directory, .gguf file or checkpoint)",
    )
}

/// `gmt train`
// Without MPI no `Rank` exists: what follows joining a job does not compile to anything.
#[cfg_attr(not(feature = "mpi"), allow(unreachable_code, unused_variables))]
pub fn train(args: &TrainArgs) -> Result<Finished> {
    let settings = args.settings()?;
    if args.print_config {
        out!("{}", settings.to_toml());
        return Ok(Finished::Done);
    }
    settings.validate()?;
    let Some(kind) = args.distributed else {
        return train_as(args, settings, None);
    };
    let session = Session::join(kind)?;
    let rank = session.rank();
    match train_as(args, settings, Some(rank)) {
        // Every rank leaves together: one that exits while rank 0 still writes the final
        // model would have mpirun end the job under it.
        Ok(finished) => {
            rank.barrier();
            Ok(finished)
        }
        Err(e) => rank.fail(&e),
    }
}

/// `gmt train` in this process: the whole run, or `rank`'s replica of it.
fn train_as(args: &TrainArgs, settings: TrainSettings, rank: Option<Rank>) -> Result<Finished> {
    let selected = match rank {
        None => select_for_training(&settings)?,
        Some(rank) => {
            // Everything else rests on every rank running the same job: checked first.
            let invocation = format!(
                "{}\nresume={} force={} stop_after={:?}",
                settings.to_toml(),
                args.resume,
                args.force,
                args.stop_after
            );
            rank.ensure_same("the settings and flags", &invocation)?;
            let grad_accum = settings.train.grad_accum;
            if !grad_accum.is_multiple_of(rank.size()) {
                anyhow::bail!(
                    "invalid setting `train.grad_accum`: {grad_accum} must be a multiple of the {} ranks, so that each rank takes an equal share of a step",
                    rank.size()
                );
            }
            let mut mine = settings.clone();
            mine.train.devices = rank.devices(&settings)?;
            select_for_training(&mine)?
        }
    };
    let replicas = rank.map_or(settings.train.devices.len().max(1), |r| r.size());
    let estimate = crate::fit::check_train(
        &settings,
        &selected,
        settings.train.grad_accum.div_ceil(replicas),
        !args.force,
    )?;
    let interrupt = interrupt_flag()?;
    let checkpointing = settings.train.checkpointing;
    let job = TrainJob {
        settings,
        resume: args.resume,
        force: args.force,
        stop_after: args.stop_after,
        interrupt,
        rank,
    };
    let outcome = backend::run_training_job(&selected, checkpointing, job)?;
    crate::fit::report_peak(&selected, &estimate);
    if rank.is_some_and(|r| r.index() > 0) {
        // Rank 0 reports the run.
        return Ok(match outcome {
            TrainOutcome::Stopped {
                interrupted: true, ..
            } => Finished::Interrupted,
            _ => Finished::Done,
        });
    }
    match outcome {
        TrainOutcome::Finished {
            steps,
            eval,
            final_dir,
        } => {
            if let Some(e) = eval
                .as_ref()
                .filter(|e| e.metrics.contains_key("rewards/accuracy"))
            {
                outln!(
                    "finished {steps} steps; eval DPO loss {:.4}, reward accuracy {:.1}%",
                    e.loss,
                    100.0 * e.metrics["rewards/accuracy"]
                );
            } else if let Some(e) = eval {
                outln!(
                    "finished {steps} steps; eval loss {:.4}, perplexity {:.2}",
                    e.loss,
                    e.perplexity
                );
            } else {
                outln!("finished {steps} steps");
            }
            outln!("final model: {}", final_dir.display());
            Ok(Finished::Done)
        }
        TrainOutcome::Stopped {
            step,
            checkpoint,
            interrupted,
        } => {
            outln!(
                "stopped at step {step}; checkpoint {} (continue with --resume)",
                checkpoint.display()
            );
            Ok(if interrupted {
                Finished::Interrupted
            } else {
                Finished::Done
            })
        }
    }
}

/// A flag set by Ctrl-C, SIGTERM and SIGHUP alike (ctrlc's `termination` feature): a
/// scheduler's stop signal must leave a checkpoint, not a lost run. A second signal exits
/// at once.
pub fn interrupt_flag() -> Result<Arc<AtomicBool>> {
    let interrupt = Arc::new(AtomicBool::new(false));
    let flag = interrupt.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("second interrupt: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!(
            "interrupted (Ctrl-C or SIGTERM): finishing this step and saving a checkpoint (interrupt again to abort)"
        );
    })
    .context("cannot install the interrupt (Ctrl-C, SIGTERM) handler")?;
    Ok(interrupt)
}

fn format_of(format: &FormatArgs, default: Option<RecordFormat>) -> Result<Option<RecordFormat>> {
    Ok(record_format(
        format.format.as_deref(),
        &format.user_field,
        &format.assistant_field,
        &format.system_field,
    )?
    .or(default))
}

/// `gmt eval` as a backend job: what `--json` prints.
pub struct EvalJob<'a>(pub &'a EvalArgs);

impl BackendJob for EvalJob<'_> {
    type Output = serde_json::Value;

    fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>) -> Result<serde_json::Value> {
        let device = backend::single(devices);
        let args = self.0;
        let LoadedModel {
            model,
            tokenizer,
            template,
        } = load_model::<B::InnerBackend>(
            model_path(&args.model)?,
            &overrides(&args.model),
            &device,
        )?;
        // GSM8K-style files use `question`/`answer`; other tasks detect the format.
        let default = (args.task == EvalTask::Gsm8k).then(|| {
            RecordFormat::Fields(FieldMapping {
                system: None,
                user: "question".into(),
                assistant: "answer".into(),
            })
        });
        let streams = StreamSettings {
            format: format_of(&args.format, default)?,
            seed: 0,
            shuffle_buffer: 1,
            skip_bad_records: args.format.skip_bad_records.unwrap_or(false),
        };
        let encoder = Encoder::new(tokenizer, template, false);
        let batching = batch_config(
            model.config(),
            args.batch_size,
            args.max_seq_len,
            Truncation::Truncate,
            false,
            0,
            args.max_prompt_len,
        );
        let pairs = match &streams.format {
            Some(format) => format.is_preference(),
            None => detect_format(&args.data, &encoder, streams.config(Split::All))?
                .is_some_and(|f| f.is_preference()),
        };
        if pairs != (args.objective == ObjectiveKind::Dpo) {
            anyhow::bail!(
                "{} holds {}: evaluate it with --objective {}",
                args.data.display(),
                if pairs {
                    "preference pairs"
                } else {
                    "examples, not preference pairs"
                },
                if pairs { "dpo" } else { "causal_lm" }
            );
        }
        let batches = eval_batches(
            &args.data,
            &encoder,
            &streams,
            Split::All,
            batching,
            args.max_examples,
        )?;
        if args.objective == ObjectiveKind::Dpo {
            let path = args.reference.as_deref().context(
                "--objective dpo needs --reference: the model the rewards are measured against",
            )?;
            let reference =
                load_model::<B::InnerBackend>(path, &overrides(&args.model), &device)
                    .with_context(|| format!("loading the reference model {}", path.display()))?;
            let config: DpoConfig = toml::Table::try_from(&args.dpo)?.try_into()?;
            let run = DpoRun {
                dpo: Dpo::new(config)?,
                reference: Reference::Resident(Box::new(reference.model)),
            };
            let report = gmt_train::evaluate(&model, &run.dpo, &run.batches(batches)?)?;
            let mut out = json!({"loss": report.loss, "pairs": report.tokens});
            for (name, value) in &report.metrics {
                out[name] = json!(value);
            }
            return Ok(out);
        }
        let loss = gmt_train::evaluate(&model, &CausalLm, &batches)?;
        let mut out = json!({
            "loss": loss.loss,
            "perplexity": loss.perplexity,
            "tokens": loss.tokens,
        });
        if args.task == EvalTask::Gsm8k {
            let examples = read_examples(&args.data, &streams, args.max_examples)?;
            let verbose = !args.json;
            let report = answer_accuracy(
                &model,
                encoder.tokenizer(),
                encoder.template(),
                &examples,
                args.max_new_tokens,
                |i, attempt| {
                    tracing::debug!("{}: {:?}", i + 1, attempt);
                    if verbose && i < 3 {
                        tracing::info!(
                            "example {}: {} → {:?} ({})",
                            i + 1,
                            attempt.question,
                            attempt.completion,
                            if attempt.correct { "correct" } else { "wrong" }
                        );
                    }
                },
            )?;
            out["accuracy"] = json!(report.accuracy);
            out["correct"] = json!(report.correct);
            out["total"] = json!(report.total);
        }
        Ok(out)
    }
}

/// The examples of a dataset, parsed (not tokenized), in file order.
/// The examples of `path` in file order (at most `max` when not 0), bad records skipped
/// (and logged) or fatal as `streams` says.
fn read_examples(path: &Path, streams: &StreamSettings, max: usize) -> Result<Vec<Example>> {
    let config = ReaderConfig {
        format: streams.format.clone(),
        skip_bad_records: streams.skip_bad_records,
        ..ReaderConfig::default()
    };
    let mut reader = ExampleReader::new(DataSource::open(path)?, config)?;
    let limit = if max == 0 { usize::MAX } else { max };
    let examples = reader
        .by_ref()
        .take(limit)
        .map(|read| read.map(|(_, example)| example))
        .collect::<Result<Vec<_>, _>>()?;
    for error in &reader.report().skipped_errors {
        tracing::warn!("skipped {error}");
    }
    Ok(examples)
}

/// `gmt eval`
pub fn eval(args: &EvalArgs) -> Result<Finished> {
    let selected = select(args.backend)?;
    let out = run_job(&selected, EvalJob(args))?;
    let metric = |k: &str| out[k].as_f64().unwrap_or(f64::NAN);
    if args.json {
        outln!("{out}");
    } else if args.objective == ObjectiveKind::Dpo {
        outln!(
            "DPO loss {:.4}  reward accuracy {:.1}%  log-prob accuracy {:.1}%  margin {:.4}  rewards chosen {:.4} / rejected {:.4}  pairs {}",
            metric("loss"),
            100.0 * metric("rewards/accuracy"),
            100.0 * metric("logps/accuracy"),
            metric("rewards/margin"),
            metric("rewards/chosen"),
            metric("rewards/rejected"),
            out["pairs"]
        );
    } else {
        outln!(
            "loss {:.4}  perplexity {:.3}  tokens {}",
            out["loss"].as_f64().unwrap_or(f64::NAN),
            out["perplexity"].as_f64().unwrap_or(f64::NAN),
            out["tokens"]
        );
        if let Some(acc) = out.get("accuracy").and_then(|a| a.as_f64()) {
            outln!(
                "accuracy {:.1}% ({}/{})",
                100.0 * acc,
                out["correct"],
                out["total"]
            );
        }
    }
    Ok(Finished::Done)
}

struct GenerateJob<'a>(&'a GenerateArgs);

impl BackendJob for GenerateJob<'_> {
    type Output = ();

    fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>) -> Result<()> {
        let device = backend::single(devices);
        let args = self.0;
        let loaded = load_model::<B::InnerBackend>(
            model_path(&args.model)?,
            &overrides(&args.model),
            &device,
        )?;
        let (text, add_special) = if args.raw {
            (args.prompt.clone(), true)
        } else {
            let mut messages = Vec::new();
            if let Some(system) = &args.system {
                messages.push(gmt_data::Message::new("system", system.clone()));
            }
            messages.push(gmt_data::Message::new("user", args.prompt.clone()));
            (loaded.template.render(&messages, true)?, false)
        };
        let prompt = loaded
            .tokenizer
            .encode(text.as_str(), add_special)
            .map_err(|e| anyhow::anyhow!("cannot tokenize the prompt: {e}"))?
            .get_ids()
            .to_vec();
        let config = GenerationConfig {
            max_new_tokens: args.max_new_tokens,
            temperature: args.temperature,
            top_p: args.top_p,
            seed: args.seed,
            stop_tokens: Vec::new(),
        };
        // Decode the whole continuation each time and print what is new: tokens that are
        // parts of one character only print once the character is complete.
        let mut tokens = Vec::new();
        let mut printed = 0;
        let mut failure = None;
        generate(&loaded.model, &prompt, &config, |token| {
            tokens.push(token);
            match loaded.tokenizer.decode(&tokens, true) {
                Ok(text) if text.len() > printed && !text.ends_with('\u{fffd}') => {
                    out!("{}", &text[printed..]);
                    printed = text.len();
                }
                Ok(_) => {}
                Err(e) => failure = Some(e.to_string()),
            }
        })?;
        outln!();
        if let Some(e) = failure {
            anyhow::bail!("cannot decode the generated tokens: {e}");
        }
        Ok(())
    }
}

/// `gmt generate`
pub fn generate_text(args: &GenerateArgs) -> Result<Finished> {
    let selected = select(args.backend)?;
    run_job(&selected, GenerateJob(args))?;
    Ok(Finished::Done)
}

/// `gmt export`
pub fn export(args: &ExportArgs) -> Result<Finished> {
    if !args.force {
        crate::export::ensure_no_model(&args.output)?;
    }
    let source = &args.checkpoint;
    // A model file or directory converts as it is; anything else must hold a checkpoint.
    let is_model = source.is_file() || source.join("config.json").is_file();
    let checkpoint = if checkpoint::is_run_checkpoint(source) {
        Some(checkpoint::open(source)?)
    } else if is_model {
        None
    } else {
        Some(checkpoint::latest(source)?.with_context(|| {
            format!(
                "{} is neither a checkpoint, a run directory with checkpoints, a GGUF file \
                 nor a Hugging Face model directory",
                source.display()
            )
        })?)
    };
    let model_path = checkpoint.as_ref().map_or(source.as_path(), |c| c.dir());
    let dtype = match args.dtype {
        DtypeArg::F32 => ExportDtype::F32,
        DtypeArg::Bf16 => ExportDtype::Bf16,
    };
    let device = Default::default();
    let loaded = load_model::<burn::backend::Flex>(model_path, &Overrides::default(), &device)?;
    export_model(
        &loaded.model,
        &loaded.tokenizer,
        &loaded.template,
        &args.output,
        dtype,
    )?;
    outln!(
        "exported {} to {}",
        model_path.display(),
        args.output.display()
    );
    Ok(Finished::Done)
}

/// `gmt info`
pub fn info(args: &InfoArgs) -> Result<Finished> {
    outln!("backends:");
    for (name, what) in backend::describe_backends() {
        outln!("  {name:10} {what}");
    }
    if let Some(path) = &args.model {
        let device = Default::default();
        let loaded = load_model::<burn::backend::Flex>(path, &Overrides::default(), &device)?;
        let c = loaded.model.config();
        let params = burn::module::Module::num_params(&loaded.model);
        outln!("model {}:", path.display());
        outln!("  architecture  {:?}", c.architecture);
        outln!("  parameters    {params}");
        outln!(
            "  layers {}, hidden {}, heads {} (kv {}), head_dim {}, vocab {}",
            c.num_hidden_layers,
            c.hidden_size,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
            c.vocab_size
        );
        outln!("  tied embeddings {}", c.tie_word_embeddings);
        outln!(
            "  tokenizer vocab {}",
            loaded.tokenizer.get_vocab_size(true)
        );
    }
    Ok(Finished::Done)
}

/// `gmt make-data`
pub fn make_data(args: &MakeDataArgs) -> Result<Finished> {
    crate::arithmetic::write_dataset(
        &args.output,
        (args.train, args.test),
        args.seed,
        args.pairs,
        args.force,
    )?;
    outln!(
        "wrote {} training and {} test {} to {}",
        args.train,
        args.test,
        if args.pairs {
            "preference pairs"
        } else {
            "problems"
        },
        args.output.display()
    );
    Ok(Finished::Done)
}
