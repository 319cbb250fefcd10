//! The objective of a `gmt train` run, as the loop needs it: gmt-train's objective, and its
//! micro-batches made from gmt-data's token batches. For DPO that means the reference model's
//! log-probabilities, from a table computed before training or from a resident reference.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use gmt_data::{Batches, DataStream, Encoder};
use gmt_models::{LlamaForCausalLm, TokenBatch};
use gmt_train::{
    CausalLm, Dpo, LossReport, Objective, PreferenceBatch, ReferenceLogProbs, reference_log_probs,
};

use crate::dataset::{RunData, open_source};
use crate::model_source::load_model;
use crate::settings::{ReferenceLogps, TrainSettings};

/// A gmt-train objective with the preparation of its micro-batches.
pub trait RunObjective {
    /// The objective the trainer steps.
    type Objective: Objective + Clone;

    /// The objective.
    fn objective(&self) -> Self::Objective;

    /// A micro-batch of the objective from a batch of gmt-data.
    fn batch(&self, tokens: TokenBatch) -> Result<<Self::Objective as Objective>::Batch>;

    /// Micro-batches of the objective from batches of gmt-data.
    fn batches(
        &self,
        tokens: Vec<TokenBatch>,
    ) -> Result<Vec<<Self::Objective as Objective>::Batch>> {
        tokens.into_iter().map(|t| self.batch(t)).collect()
    }

    /// One line for an evaluation's report.
    fn describe_eval(&self, report: &LossReport) -> String;
}

/// Supervised fine-tuning: the token batches as they are.
pub struct Sft;

impl RunObjective for Sft {
    type Objective = CausalLm;

    fn objective(&self) -> CausalLm {
        CausalLm
    }

    fn batch(&self, tokens: TokenBatch) -> Result<TokenBatch> {
        Ok(tokens)
    }

    fn describe_eval(&self, report: &LossReport) -> String {
        format!(
            "eval loss {:.4} (perplexity {:.2}, {} tokens)",
            report.loss, report.perplexity, report.tokens
        )
    }
}

/// Where a DPO run's reference log-probabilities come from.
pub enum Reference<B: Backend> {
    /// Computed before training, looked up per pair.
    Table(ReferenceLogProbs),
    /// A frozen model run on every micro-batch.
    Resident(Box<LlamaForCausalLm<B>>),
}

/// DPO: pairs with their reference log-probabilities.
pub struct DpoRun<B: Backend> {
    /// The loss.
    pub dpo: Dpo,
    /// The reference's log-probabilities.
    pub reference: Reference<B>,
}

impl<B: Backend> RunObjective for DpoRun<B> {
    type Objective = Dpo;

    fn objective(&self) -> Dpo {
        self.dpo
    }

    fn batch(&self, tokens: TokenBatch) -> Result<PreferenceBatch> {
        let mut batch = PreferenceBatch {
            tokens,
            reference: None,
        };
        match &self.reference {
            Reference::Table(table) => table.fill(&mut batch)?,
            Reference::Resident(model) => {
                batch.reference = Some(reference_log_probs(model, &batch)?);
            }
        }
        Ok(batch)
    }

    fn describe_eval(&self, report: &LossReport) -> String {
        let metric = |k: &str| report.metrics.get(k).copied().unwrap_or(f64::NAN);
        format!(
            "eval DPO loss {:.4}, reward accuracy {:.1}%, margin {:.3} ({} pairs)",
            report.loss,
            100.0 * metric("rewards/accuracy"),
            metric("rewards/margin"),
            report.tokens
        )
    }
}

/// The file in a run's output directory that holds precomputed reference log-probabilities.
pub const REFERENCE_FILE: &str = "reference_logps.json";

impl<B: Backend> DpoRun<B> {
    /// The DPO objective of a run. With `precompute`, reads the run's table, or computes it
    /// (over the training and evaluation data) with the reference model — `start`, the
    /// starting model of a new run, unless the settings name another — and saves it if
    /// `writes` (rank 0 of a multi-process run; the other ranks compute their own, the same,
    /// and read the saved one when resuming); otherwise loads the reference to keep resident.
    pub fn new<AB: AutodiffBackend<InnerBackend = B>>(
        settings: &TrainSettings,
        run_dir: &Path,
        start: Option<&LlamaForCausalLm<AB>>,
        data: &RunData,
        encoder: &Encoder,
        device: &B::Device,
        writes: bool,
    ) -> Result<Self> {
        let dpo = Dpo::new(settings.dpo)?;
        let load_reference = || -> Result<LlamaForCausalLm<B>> {
            let path = settings
                .train
                .reference
                .as_deref()
                .unwrap_or(settings.model_path()?);
            let loaded = load_model::<B>(path, &settings.overrides(), device)
                .with_context(|| format!("loading the reference model {}", path.display()))?;
            Ok(loaded.model)
        };
        let reference = match settings.train.reference_logps {
            ReferenceLogps::Resident => Reference::Resident(Box::new(load_reference()?)),
            ReferenceLogps::Precompute => {
                let file = run_dir.join(REFERENCE_FILE);
                // A rank that does not write cannot tell rank 0's table of this run from an
                // earlier run's that rank 0 is about to replace: it reads only when resuming.
                let saved = if writes {
                    file.exists()
                } else {
                    start.is_none()
                };
                if saved {
                    Reference::Table(ReferenceLogProbs::load(&file)?)
                } else {
                    let model = match (start, &settings.train.reference) {
                        (Some(start), None) => start.valid(),
                        _ => load_reference()?,
                    };
                    let table = precompute(&model, data, encoder)?;
                    if writes {
                        table.save(&file)?;
                    }
                    Reference::Table(table)
                }
            }
        };
        Ok(Self { dpo, reference })
    }
}

/// The reference log-probabilities of every pair of the training and evaluation data.
fn precompute<B: Backend>(
    reference: &LlamaForCausalLm<B>,
    data: &RunData,
    encoder: &Encoder,
) -> Result<ReferenceLogProbs> {
    let started = Instant::now();
    let mut table = ReferenceLogProbs::default();
    for (path, config) in data.every_stream() {
        let stream = DataStream::new(open_source(&path)?, encoder, config)?;
        for tokens in Batches::new(stream, data.batching())? {
            let tokens = tokens.with_context(|| format!("reading {}", path.display()))?;
            let batch = PreferenceBatch {
                tokens,
                reference: None,
            };
            table.add_batch(reference, &batch)?;
        }
    }
    tracing::info!(
        "reference log-probabilities of {} pairs computed in {:.1} s",
        table.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(table)
}
