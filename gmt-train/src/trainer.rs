//! [`Trainer`]: one fine-tuning run — model, GMT around AdamW, schedule and counters — stepped
//! one optimizer step at a time.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{AutodiffModule, Module};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, GradientsParams, Optimizer};
use burn::record::Record;
use burn::tensor::ElementConversion;
use burn::tensor::backend::AutodiffBackend;
use gmt_core::{
    FusedAdamW, GmtConfig, GmtOptimizer, GmtRecord, GmtRecordItem, GradientMean, MaskStats,
    MaskTarget, StepReport,
};
use gmt_models::LlamaForCausalLm;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{
    FileContent, MODEL_FILE, OPTIMIZER_FILE, TRAINER_FILE, write_checkpoint_streamed,
};
use crate::memory::Precision;
use crate::mixed_precision::{forward_format, trained_weights, working_copy};
use crate::record_file::{ItemsOneByOne, Settings, write_item};
use crate::{
    Checkpoint, GradientAllReduce, LossReport, LrSchedule, Objective, OptimConfig, ReplicaStep,
    ScheduleConfig, SingleReplica, StepTotals, TrainError, evaluate,
};

/// The optimizer record of checkpoints written before `FusedAdamW` kept its own state.
type LegacyRecord<B> = GmtRecord<
    <OptimizerAdaptor<AdamW, LlamaForCausalLm<B>, B> as Optimizer<LlamaForCausalLm<B>, B>>::Record,
>;

/// GMT around AdamW ([`FusedAdamW`]: burn's, bit for bit, fused on the CPU; with Kahan
/// compensation for bf16 weights), for a Llama-family model: the optimizer a [`Trainer`]
/// steps. It resumes from its own records and from those of GMT around burn's AdamW.
pub type GmtAdamW<B> =
    GmtOptimizer<OptimizerAdaptor<FusedAdamW, LlamaForCausalLm<B>, B>, LlamaForCausalLm<B>, B>;

/// How a run optimizes: the mask, the learning rate and AdamW's hyper-parameters, and the
/// schedule's shape — the `[gmt]`, `[optim]` and `[schedule]` sections of `gmt train`'s config
/// file, which deserializes into these types (unknown keys refused, absent ones defaulted).
///
/// ```
/// use gmt_train::TrainerConfig;
///
/// let config: TrainerConfig = toml::from_str("[gmt]\nmask_ratio = 0.3\n[optim]\nlr = 2e-5\n")?;
/// assert_eq!((config.gmt.mask_ratio, config.optim.lr), (0.3, 2e-5));
/// assert_eq!(config.gmt.max_grad_norm, Some(1.0)); // GmtConfig's defaults
/// config.validate()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainerConfig {
    /// Gradient-Mask Tuning (ratio, scope, target, strategy, exclusions, clipping, seed).
    pub gmt: GmtConfig,
    /// The peak learning rate and AdamW's β, ε and weight decay.
    pub optim: OptimConfig,
    /// Warmup and decay of the learning rate.
    pub schedule: ScheduleConfig,
}

impl TrainerConfig {
    /// Checks every section. Errors name the key: `optim.lr`, `schedule.min_lr_ratio`, or
    /// gmt-core's own ([`TrainError::Gmt`], keys without the `gmt.` section).
    pub fn validate(&self) -> Result<(), TrainError> {
        self.gmt.validate()?;
        self.optim.validate()?;
        self.schedule.validate()
    }
}

/// The counters of a run, saved in checkpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainProgress {
    /// Optimizer steps completed.
    pub step: u64,
    /// Steps of the whole run (fixes the schedule).
    pub total_steps: u64,
    /// Σ of the steps' weights: tokens that carried loss, for the causal-LM objective.
    pub tokens_seen: u64,
    /// Seconds spent in steps (evaluation and checkpoints excluded).
    pub elapsed_secs: f64,
}

/// What one optimizer step did.
#[derive(Clone, Debug, PartialEq)]
pub struct StepSummary {
    /// Steps completed, this one included (1-based).
    pub step: u64,
    /// The learning rate it used.
    pub lr: f64,
    /// Its loss, weight, tokens and micro-batches (over every replica).
    pub totals: StepTotals,
    /// What GMT did: mask statistics, clipping, or why the step was skipped.
    pub mask: StepReport,
    /// Wall-clock seconds of the step.
    pub secs: f64,
}

impl StepSummary {
    /// The step's mean loss over its counted tokens (or pairs).
    pub fn loss(&self) -> f64 {
        self.totals.loss()
    }

    /// Global L2 norm of the masked gradient before clipping; NaN for a skipped step.
    pub fn grad_norm(&self) -> f64 {
        self.mask.grad_norm().unwrap_or(f64::NAN)
    }

    /// Tokens processed per second (padding excluded).
    pub fn tokens_per_sec(&self) -> f64 {
        self.totals.tokens as f64 / self.secs
    }

    /// Kept fraction of each decoder layer's gradient entries (parameters `layers.<i>.…`);
    /// zeros for a skipped step.
    pub fn layer_kept_fractions(&self, layers: usize) -> Vec<f64> {
        match self.mask.stats() {
            Some(stats) => layer_kept_fractions(stats, layers),
            None => vec![0.0; layers],
        }
    }
}

/// One fine-tuning run.
///
/// Each [`step`](Self::step) takes that step's micro-batches: for each, the objective's loss
/// and its backward pass; Γ = the weighted mean of their gradients (combined over replicas by
/// the [`GradientAllReduce`]); then GMT masks Γ, clips it and AdamW applies it at the
/// schedule's rate.
pub struct Trainer<B: AutodiffBackend, O: Objective> {
    /// `None` only inside a step, while the optimizer owns the model.
    model: Option<LlamaForCausalLm<B>>,
    optim: GmtAdamW<B>,
    objective: O,
    schedule: LrSchedule,
    progress: TrainProgress,
    all_reduce: Box<dyn GradientAllReduce<B> + Send>,
    precision: Precision,
}

impl<B: AutodiffBackend, O: Objective> Trainer<B, O> {
    /// A run from step 0 that will take `total_steps` optimizer steps (the schedule's
    /// length). The config is validated first.
    pub fn new(
        model: LlamaForCausalLm<B>,
        objective: O,
        config: &TrainerConfig,
        total_steps: u64,
    ) -> Result<Self, TrainError> {
        config.validate()?;
        let optim = config.gmt.init(config.optim.adamw().init(), &model)?;
        Ok(Self {
            model: Some(model),
            optim,
            objective,
            schedule: config.schedule.over(config.optim.lr, total_steps),
            progress: TrainProgress {
                total_steps,
                ..TrainProgress::default()
            },
            all_reduce: Box::new(SingleReplica),
            precision: Precision::Fp32,
        })
    }

    /// Trains in `precision` (fp32 by default; README "Precision modes"). `bf16-mixed`: each
    /// step's forward and backward passes run on a bf16 working copy of the fp32 master
    /// weights, made once per step; Γ, the mask, clipping, AdamW's moments and the weights
    /// it updates stay fp32. `bf16`: the weights themselves become bf16 (exactly, if they
    /// were bf16 values, as a resumed `bf16` run's are), and so are Γ and AdamW's moments;
    /// the update is applied with Kahan compensation ([`FusedAdamW`]). An error if the
    /// model's backend cannot compute in bf16 (burn-ndarray and WGPU cannot), and for `bf16`
    /// with GMT's update target.
    pub fn with_precision(mut self, precision: Precision) -> Result<Self, TrainError> {
        precision.check_backend::<B>(&self.model().devices()[0])?;
        let config = self.optim.config();
        if precision == Precision::Bf16
            && config.target == MaskTarget::Update
            && !config.is_identity()
        {
            // The update target puts masked weights back, but their compensation is AdamW's
            // state: it would carry the masked updates and apply them later.
            return Err(TrainError::InvalidConfig {
                key: "gmt.target",
                reason: "the update target keeps masked weights exactly, which --precision \
                         bf16 cannot (its Kahan compensation would apply the masked updates \
                         later); use target gradient, or bf16-mixed"
                    .into(),
            });
        }
        self.precision = precision;
        let model = self
            .model
            .take()
            .expect("the trainer holds its model between steps");
        self.model = Some(trained_weights(model, precision));
        Ok(self)
    }

    /// The format of the forward and backward passes.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The run saved in `checkpoint`, continued: `model` (built as for [`new`](Self::new))
    /// receives the saved weights, the optimizer its saved state, and the counters and the
    /// schedule's length are the saved ones.
    pub fn resume(
        model: LlamaForCausalLm<B>,
        objective: O,
        config: &TrainerConfig,
        checkpoint: &Checkpoint,
        device: &B::Device,
    ) -> Result<Self, TrainError> {
        let weights = checkpoint.record(MODEL_FILE, device)?;
        let progress = checkpoint.progress()?;
        let mut trainer = Self::new(
            model.load_record(weights),
            objective,
            config,
            progress.total_steps,
        )?;
        let record = match checkpoint.record(OPTIMIZER_FILE, device) {
            Ok(record) => record,
            // Written by gmt before bf16 training, with burn's AdamW state: converted.
            Err(error) => match checkpoint.record::<B, LegacyRecord<B>>(OPTIMIZER_FILE, device) {
                Ok(old) => GmtRecord {
                    inner: (old.inner.into_iter())
                        .map(|(id, r)| (id, FusedAdamW::record_from_adamw(r)))
                        .collect(),
                    state: old.state,
                },
                Err(_) => return Err(error),
            },
        };
        trainer.optim = trainer.optim.load_record(record);
        trainer.progress = progress;
        Ok(trainer)
    }

    /// Combines each step's Γ with other replicas' through `all_reduce` (data-parallel runs).
    /// It must be `Send`, so that a trainer can be moved to the thread that drives its device.
    pub fn with_all_reduce(
        mut self,
        all_reduce: impl GradientAllReduce<B> + Send + 'static,
    ) -> Self {
        self.all_reduce = Box::new(all_reduce);
        self
    }

    /// One optimizer step over `micro_batches`.
    ///
    /// Micro-batches with nothing to learn from (weight 0) are counted and passed over; a step
    /// in which every one is so is an error, as is a non-finite gradient (under GMT's default
    /// policy). After an error the model and optimizer are as before the step.
    pub fn step(
        &mut self,
        micro_batches: impl IntoIterator<Item = O::Batch>,
    ) -> Result<StepSummary, TrainError> {
        let started = Instant::now();
        let lr = self.lr();
        let model = self
            .model
            .as_ref()
            .expect("the trainer holds its model between steps");
        let working = working_copy(model, self.precision);
        let local = local_step(&self.objective, model, working, micro_batches);
        let ReplicaStep { grad_sum, totals } = self.all_reduce.all_reduce(model, local)?;
        if totals.weight <= 0.0 {
            return Err(TrainError::NothingToLearn {
                step: self.progress.step + 1,
                micro_batches: totals.micro_batches,
            });
        }
        let gamma = GradientMean::mean_of(model, grad_sum, totals.weight)?;

        let model = self
            .model
            .take()
            .expect("the trainer holds its model between steps");
        let mask = match self.optim.try_step(lr, model, gamma) {
            Ok((model, report)) => {
                self.model = Some(model);
                report
            }
            Err(failure) => {
                self.model = Some(failure.module);
                return Err(failure.error.into());
            }
        };
        let secs = started.elapsed().as_secs_f64();
        self.progress.step += 1;
        self.progress.tokens_seen += totals.weight as u64;
        self.progress.elapsed_secs += secs;
        Ok(StepSummary {
            step: self.progress.step,
            lr,
            totals,
            mask,
            secs,
        })
    }

    /// The weighted mean loss of the current model over `batches`, without gradients.
    pub fn evaluate(&self, batches: &[O::Batch]) -> Result<LossReport, TrainError> {
        let model = forward_format(self.model().valid(), self.precision);
        evaluate(&model, &self.objective, batches)
    }

    /// Saves model, optimizer, counters and `data` (the caller's data position) as the
    /// checkpoint of the current step under `root`, with `extra` files beside them, and keeps
    /// the newest `keep` checkpoints. Returns the checkpoint's directory.
    pub fn save_checkpoint<D: Serialize>(
        &self,
        root: &Path,
        data: &D,
        extra: &[(&str, &[u8])],
        keep: usize,
    ) -> Result<PathBuf, TrainError> {
        let trainer = serde_json::to_vec(&TrainerFile {
            progress: &self.progress,
            data,
        })
        .map_err(|e| TrainError::Checkpoint {
            dir: root.to_path_buf(),
            reason: format!("cannot serialize {TRAINER_FILE}: {e}"),
        })?;
        // Each record is converted as its file is written: the weights' host copies exist
        // only while model.bin is written, and AdamW's one parameter at a time.
        let model = |out: &mut dyn std::io::Write| {
            let item = self.model().clone().into_record().into_item::<Settings>();
            write_item::<B, _>(item, out)
        };
        let optim = |out: &mut dyn std::io::Write| {
            let record = Optimizer::<LlamaForCausalLm<B>, B>::to_record(&self.optim);
            let inner = ItemsOneByOne::<_, B>::new(record.inner);
            write_item::<B, _>(GmtRecordItem::new(inner, record.state), out)
        };
        let mut files = vec![
            (MODEL_FILE, FileContent::Written(Box::new(model))),
            (OPTIMIZER_FILE, FileContent::Written(Box::new(optim))),
            (TRAINER_FILE, FileContent::Bytes(&trainer)),
        ];
        files.extend(
            extra
                .iter()
                .map(|&(name, bytes)| (name, FileContent::Bytes(bytes))),
        );
        write_checkpoint_streamed(root, self.progress.step, files, keep)
    }

    /// Ends the run at the current step (the data ran out, or every step ran): a checkpoint
    /// saved after this continues with no further step.
    pub fn finish_here(&mut self) {
        self.progress.total_steps = self.progress.step;
    }

    /// Whether every step of the run has been taken.
    pub fn is_done(&self) -> bool {
        self.progress.step >= self.progress.total_steps
    }

    /// The learning rate of the next step.
    pub fn lr(&self) -> f64 {
        self.schedule.at(self.progress.step)
    }

    /// The model.
    pub fn model(&self) -> &LlamaForCausalLm<B> {
        self.model
            .as_ref()
            .expect("the trainer holds its model between steps")
    }

    /// The model, ending the run.
    pub fn into_model(mut self) -> LlamaForCausalLm<B> {
        self.model
            .take()
            .expect("the trainer holds its model between steps")
    }

    /// The GMT optimizer (its config, state and last report).
    pub fn optimizer(&self) -> &GmtAdamW<B> {
        &self.optim
    }

    /// The objective.
    pub fn objective(&self) -> &O {
        &self.objective
    }

    /// The run's counters.
    pub fn progress(&self) -> &TrainProgress {
        &self.progress
    }

    /// The learning-rate schedule.
    pub fn schedule(&self) -> &LrSchedule {
        &self.schedule
    }
}

/// This replica's share of a step: each micro-batch's loss and backward pass, their
/// gradients summed with their weights. The passes run on `working` (a mixed-precision
/// step's copy) if given, else on `master`.
fn local_step<B: AutodiffBackend, O: Objective>(
    objective: &O,
    master: &LlamaForCausalLm<B>,
    mut working: Option<LlamaForCausalLm<B>>,
    micro_batches: impl IntoIterator<Item = O::Batch>,
) -> Result<ReplicaStep, TrainError> {
    let mut sum = GradientMean::new();
    let mut totals = StepTotals::default();
    let mut micro_batches = micro_batches.into_iter().peekable();
    while let Some(batch) = micro_batches.next() {
        let model = working.as_ref().unwrap_or(master);
        totals.micro_batches += 1;
        let out = objective.loss(model, &batch)?;
        totals.tokens += out.tokens;
        let Some(loss) = out.loss else {
            totals.empty_micro_batches += 1;
            continue;
        };
        let value: f32 = loss.clone().into_scalar().elem();
        totals.loss_sum += value as f64 * out.weight;
        totals.weight += out.weight;
        totals.metrics.merge(&out.metrics);
        let grads = GradientsParams::from_grads(loss.backward(), model);
        if micro_batches.peek().is_none() {
            // The copy's last use: freed before its gradients are widened into fp32 Γ, so
            // the two are never held at once (README "Fitting a 7B model").
            working = None;
        }
        sum.add_weighted(master, grads, out.weight)?;
    }
    let (grad_sum, _) = sum.take_sum();
    Ok(ReplicaStep { grad_sum, totals })
}

/// `trainer.json`: the counters, and the caller's data position under `data`.
#[derive(Serialize)]
struct TrainerFile<'a, D> {
    #[serde(flatten)]
    progress: &'a TrainProgress,
    data: &'a D,
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
