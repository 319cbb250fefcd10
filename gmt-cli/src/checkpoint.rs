//! `gmt train`'s output directory and checkpoints. Checkpoints are gmt-train's (atomic,
//! pruned, exactly resumable); the CLI also puts the run's settings in each as
//! `config.toml`, so that a checkpoint names its base model and a resumed run can be checked
//! against its settings.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::backend::AutodiffBackend;
use gmt_data::Encoder;
use gmt_models::{ExportDtype, LlamaForCausalLm};
pub use gmt_train::Checkpoint;
use gmt_train::{DataParallel, DataPosition, Objective, Trainer};

use crate::distributed::Rank;
use crate::export::export_model;
use crate::metrics::read_metrics;
use crate::plot::plot_run;
use crate::settings::TrainSettings;

/// A run's output directory: `config.toml`, `checkpoints/`, `metrics.jsonl`, `plot.svg`
/// and, at the end, the exported model in `final/`.
pub struct RunDir {
    path: PathBuf,
    resume_from: Option<Checkpoint>,
    settings: TrainSettings,
    /// Whether this process writes the run's files (rank 0, or the only process).
    write: bool,
}

impl RunDir {
    /// Checks the settings, creates the directory and finds the checkpoint to resume: only
    /// with `resume`, only one written with the same settings. Without `resume`, an earlier
    /// run's files in the directory are an error naming them, unless `force` (they are then
    /// deleted). Writes `config.toml`.
    ///
    /// A process that does not `write` (rank 1… of a multi-process run) leaves the directory
    /// to rank 0 and only reads the checkpoint it resumes from.
    pub fn open(settings: &TrainSettings, resume: bool, force: bool, write: bool) -> Result<Self> {
        settings.validate()?;
        let path = settings.train.output_dir.clone().expect("validated");
        if write {
            std::fs::create_dir_all(&path)
                .with_context(|| format!("cannot create output directory {}", path.display()))?;
        }
        let resume_from = if resume {
            let Some(c) = latest(&path)? else {
                bail!(
                    "--resume: no checkpoint in {} to resume from{}",
                    checkpoints_dir(&path).display(),
                    if write {
                        ""
                    } else {
                        " (every rank reads it: put the output directory on a filesystem they share)"
                    }
                );
            };
            settings.ensure_same_run(&self::settings(&c)?)?;
            Some(c)
        } else if !write {
            None
        } else {
            let earlier = earlier_run_files(&path);
            if !earlier.is_empty() && !force {
                bail!(
                    "{} holds an earlier run ({}): pass --resume to continue it, --force to replace it, or choose another --output",
                    path.display(),
                    earlier.join(", ")
                );
            }
            for name in earlier {
                let old = path.join(name.trim_end_matches('/'));
                let removed = if old.is_dir() {
                    std::fs::remove_dir_all(&old)
                } else {
                    std::fs::remove_file(&old)
                };
                removed.with_context(|| format!("--force: cannot remove {}", old.display()))?;
            }
            None
        };
        if write {
            std::fs::write(path.join(SETTINGS_FILE), settings.to_toml())
                .with_context(|| format!("cannot write {}/{SETTINGS_FILE}", path.display()))?;
        }
        Ok(Self {
            path,
            resume_from,
            settings: settings.clone(),
            write,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the run continues from a checkpoint.
    pub fn is_resuming(&self) -> bool {
        self.resume_from.is_some()
    }

    /// The run on `devices`, one replica each: resumed from the checkpoint with its data
    /// position, or new for a run of `total_steps()` steps. `model` is on the first device;
    /// the other replicas are copies of it (or of the checkpoint) on theirs. As `rank` of a
    /// multi-process run (one device), this process's replica, checked to start where every
    /// other rank starts.
    pub fn start<B, O>(
        &self,
        model: LlamaForCausalLm<B>,
        objective: O,
        total_steps: impl FnOnce() -> Result<u64>,
        devices: &[B::Device],
        rank: Option<Rank>,
    ) -> Result<(DataParallel<B, O>, Option<DataPosition>)>
    where
        B: AutodiffBackend,
        O: Objective + Clone + Send + 'static,
        O::Batch: Send + 'static,
    {
        let config = self.settings.trainer_config();
        let precision = self.settings.train.precision;
        let copies = devices.iter().map(|device| model.clone().fork(device));
        let (replicas, position) = match &self.resume_from {
            None => {
                let total_steps = total_steps()?;
                let replicas = copies
                    .map(|model| {
                        Trainer::new(model, objective.clone(), &config, total_steps)?
                            .with_precision(precision)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                (replicas, None)
            }
            Some(checkpoint) => {
                let replicas = copies
                    .zip(devices)
                    .map(|(model, device)| {
                        Trainer::resume(model, objective.clone(), &config, checkpoint, device)?
                            .with_precision(precision)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let step = replicas[0].progress().step;
                tracing::info!("resuming {} at step {step}", checkpoint.dir().display());
                (replicas, Some(checkpoint.data_position()?))
            }
        };
        let Some(rank) = rank else {
            return Ok((DataParallel::new(replicas, devices.to_vec())?, position));
        };
        let counters = replicas[0].progress();
        rank.ensure_same(
            "the run's step, length and data position (checkpoint or training data)",
            &format!("{} {} {position:?}", counters.step, counters.total_steps),
        )?;
        let [trainer]: [Trainer<B, O>; 1] = replicas
            .try_into()
            .map_err(|_| anyhow::anyhow!("a rank of a multi-process run takes one device"))?;
        Ok((rank.data_parallel(trainer)?, position))
    }

    /// Saves a checkpoint of the run's current step with the data `position`, keeping the
    /// newest `keep_checkpoints`. The replicas are checked to hold the same weights first
    /// (on every rank of a multi-process run; then rank 0 writes).
    pub fn save<B, O>(
        &self,
        run: &mut DataParallel<B, O>,
        position: &DataPosition,
    ) -> Result<PathBuf>
    where
        B: AutodiffBackend,
        O: Objective + Send + 'static,
        O::Batch: Send + 'static,
    {
        run.check_in_sync()?;
        let dir = checkpoints_dir(&self.path);
        if !self.write {
            return Ok(dir.join(gmt_train::checkpoint::dir_name(
                run.primary().progress().step,
            )));
        }
        let toml = self.settings.to_toml();
        let extra: &[(&str, &[u8])] = &[(SETTINGS_FILE, toml.as_bytes())];
        let keep = self.settings.train.keep_checkpoints;
        // A save's memory peak is measured apart from the steps' (`gmt train`'s peak report).
        crate::fit::before_save();
        let saved = run.primary().save_checkpoint(&dir, position, extra, keep);
        crate::fit::after_save();
        Ok(saved?)
    }

    /// Exports the final model to `final/` (a Hugging Face directory) and draws `plot.svg`
    /// from `metrics.jsonl`. Returns the model's directory.
    pub fn write_final<B: AutodiffBackend>(
        &self,
        model: &LlamaForCausalLm<B>,
        encoder: &Encoder,
        metrics: &Path,
    ) -> Result<PathBuf> {
        let dir = self.path.join("final");
        let (tokenizer, template) = (encoder.tokenizer(), encoder.template());
        // The export's peak is a save's, not the steps' (`gmt train`'s peak report).
        crate::fit::before_save();
        let exported = export_model(model, tokenizer, template, &dir, ExportDtype::F32);
        crate::fit::after_save();
        exported?;
        if let Err(e) = plot_run(&read_metrics(metrics)?, &self.path.join("plot.svg")) {
            tracing::warn!("{e:#}");
        }
        Ok(dir)
    }
}

/// What a run leaves in its output directory, besides `config.toml` (which a run that
/// failed at its start leaves too): the files a new run must not silently replace.
fn earlier_run_files(dir: &Path) -> Vec<String> {
    let outputs = [
        "checkpoints/",
        "final/",
        "metrics.jsonl",
        "plot.svg",
        crate::objective::REFERENCE_FILE,
    ];
    outputs
        .into_iter()
        .filter(|name| match name.strip_suffix('/') {
            Some(sub) => std::fs::read_dir(dir.join(sub)).is_ok_and(|mut e| e.next().is_some()),
            None => dir.join(name).exists(),
        })
        .map(String::from)
        .collect()
}

/// The run's settings inside a checkpoint.
pub const SETTINGS_FILE: &str = "config.toml";

/// Where a run's checkpoints live inside its output directory.
pub fn checkpoints_dir(output_dir: &Path) -> PathBuf {
    output_dir.join("checkpoints")
}

/// Whether `path` is a checkpoint written by `gmt train` (complete or not: [`open`] says
/// what is wrong with one that is not, rather than it being taken for a model directory).
pub fn is_run_checkpoint(path: &Path) -> bool {
    path.join(gmt_train::checkpoint::TRAINER_FILE).is_file() && path.join(SETTINGS_FILE).is_file()
}

/// Opens a checkpoint written by `gmt train`.
pub fn open(path: &Path) -> Result<Checkpoint> {
    if !is_run_checkpoint(path) {
        bail!(
            "{} is not a gmt checkpoint (it needs {}, {}, {}, {} and {SETTINGS_FILE})",
            path.display(),
            gmt_train::checkpoint::MODEL_FILE,
            gmt_train::checkpoint::OPTIMIZER_FILE,
            gmt_train::checkpoint::TRAINER_FILE,
            gmt_train::checkpoint::MANIFEST_FILE,
        );
    }
    Ok(Checkpoint::open(path)?)
}

/// The newest checkpoint of a run's output directory.
pub fn latest(output_dir: &Path) -> Result<Option<Checkpoint>> {
    Ok(Checkpoint::latest(&checkpoints_dir(output_dir))?)
}

/// The settings of the run that wrote `checkpoint`.
pub fn settings(checkpoint: &Checkpoint) -> Result<TrainSettings> {
    TrainSettings::from_file(&checkpoint.file(SETTINGS_FILE))
        .with_context(|| format!("checkpoint {}", checkpoint.dir().display()))
}
