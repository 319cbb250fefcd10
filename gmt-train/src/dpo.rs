//! Direct Preference Optimization (Rafailov et al. 2023) as an [`Objective`]: the policy is
//! trained to prefer each pair's chosen response over its rejected one, more than a frozen
//! reference model does.
//!
//! With πc, πr the policy's and ρc, ρr the reference's log-probabilities of the chosen and
//! rejected responses given the prompt (summed over the response's tokens), and
//! h = (πc − πr) − (ρc − ρr):
//! - `sigmoid` (DPO; TRL's `loss_type="sigmoid"`): −(1 − ε)·log σ(β·h) − ε·log σ(−β·h), with ε
//!   the label smoothing (conservative DPO);
//! - `ipo` (Azar et al. 2023; TRL's `loss_type="ipo"`): (h − 1/(2β))², over log-probabilities
//!   averaged per response token instead of summed.
//!
//! The loss of a micro-batch is the mean over its pairs, and it weighs as many as its pairs, so
//! Γ is the gradient of the mean loss over the step's pairs. Reference log-probabilities come
//! with the batch ([`PreferenceBatch::reference`]): from a resident frozen model
//! ([`reference_log_probs`]) or from a pass over the data before training
//! ([`ReferenceLogProbs`]).

use std::collections::HashMap;
use std::path::Path;

use burn::tensor::activation::log_sigmoid;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use gmt_models::{IGNORE_INDEX, LlamaForCausalLm, TokenBatch, sequence_log_probs};
use serde::{Deserialize, Serialize};

use crate::objective::{MetricSums, real_tokens};
use crate::{MicroBatchLoss, Objective, TrainError};

/// The preference loss.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DpoLossType {
    /// The DPO loss: −log σ(β·h), with optional label smoothing.
    #[default]
    Sigmoid,
    /// The IPO loss: (h − 1/(2β))² over per-token mean log-probabilities.
    Ipo,
}

/// Settings of the [`Dpo`] objective.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DpoConfig {
    /// β: how far the policy may move from the reference (larger = closer). TRL's default 0.1.
    pub beta: f64,
    /// ε: the probability that a pair's preference label is wrong (sigmoid loss only), in
    /// `[0, 0.5)`.
    pub label_smoothing: f64,
    /// `sigmoid` (DPO) or `ipo`.
    pub loss_type: DpoLossType,
}

impl Default for DpoConfig {
    fn default() -> Self {
        Self {
            beta: 0.1,
            label_smoothing: 0.0,
            loss_type: DpoLossType::Sigmoid,
        }
    }
}

impl DpoConfig {
    /// Refuses settings that give no loss or a meaningless one.
    pub fn validate(&self) -> Result<(), TrainError> {
        let invalid =
            |key: &'static str, reason: String| Err(TrainError::InvalidConfig { key, reason });
        if !(self.beta > 0.0 && self.beta.is_finite()) {
            return invalid("beta", format!("{} is not a positive finite β", self.beta));
        }
        if !(0.0..0.5).contains(&self.label_smoothing) {
            return invalid(
                "label_smoothing",
                format!("{} is outside [0, 0.5)", self.label_smoothing),
            );
        }
        if self.label_smoothing > 0.0 && self.loss_type == DpoLossType::Ipo {
            return invalid(
                "label_smoothing",
                "label smoothing applies to the sigmoid loss only, not to ipo".into(),
            );
        }
        Ok(())
    }
}

/// Summed log-probabilities of one pair's two responses.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairLogProbs {
    /// log p(chosen | prompt).
    pub chosen: f32,
    /// log p(rejected | prompt).
    pub rejected: f32,
}

/// One micro-batch of preference pairs.
#[derive(Clone, Debug, PartialEq)]
pub struct PreferenceBatch {
    /// 2·P rows: the P chosen sequences, then the P rejected ones in the same pair order;
    /// each row is prompt + response, with labels on the response only (`-100` elsewhere).
    pub tokens: TokenBatch,
    /// The reference model's log-probabilities of each pair, in pair order; required by
    /// [`Dpo::loss`].
    pub reference: Option<Vec<PairLogProbs>>,
}

impl PreferenceBatch {
    /// Pairs in the batch.
    pub fn pairs(&self) -> usize {
        self.tokens.batch / 2
    }

    /// A key that identifies pair `i` by its token ids (both rows, padding excluded), for
    /// looking up precomputed reference log-probabilities.
    pub fn pair_key(&self, i: usize) -> u64 {
        let p = self.pairs();
        let mut hash = Fnv1a::default();
        for row in [i, p + i] {
            let s = self.tokens.seq_len;
            let ids = &self.tokens.input_ids[row * s..(row + 1) * s];
            let labels = self
                .tokens
                .labels
                .as_deref()
                .map(|l| &l[row * s..(row + 1) * s]);
            let mask = self
                .tokens
                .attention_mask
                .as_deref()
                .map(|m| &m[row * s..(row + 1) * s]);
            for t in 0..s {
                if mask.is_some_and(|m| !m[t]) {
                    continue;
                }
                // Whether a token is prompt or response is part of what the log-prob means.
                let response = labels.is_some_and(|l| l[t] != IGNORE_INDEX);
                hash.write(u64::from(ids[t]) << 1 | u64::from(response));
            }
            hash.write(u64::MAX);
        }
        hash.finish()
    }

    /// Checks the shape: an even number of rows, labels, and a response token in every row.
    fn check(&self) -> Result<&[i64], TrainError> {
        let bad = |reason: String| Err(TrainError::InvalidBatch(reason));
        if self.tokens.batch == 0 || !self.tokens.batch.is_multiple_of(2) {
            return bad(format!(
                "a preference batch has chosen and rejected rows in equal numbers, not {} rows",
                self.tokens.batch
            ));
        }
        let Some(labels) = self.tokens.labels.as_deref() else {
            return bad("a preference batch needs labels that mark the responses".into());
        };
        Ok(labels)
    }
}

/// FNV-1a over 64-bit words. Written here rather than taken from a crate: keys must be stable
/// across Rust releases and platforms (std's `DefaultHasher` is not promised to be), and
/// this is the whole algorithm.
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    fn write(&mut self, word: u64) {
        for byte in word.to_le_bytes() {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The DPO objective (sigmoid or IPO loss) against reference log-probabilities that each
/// batch carries.
///
/// Besides the loss it reports, as means over pairs: `rewards/chosen` = β(πc − ρc),
/// `rewards/rejected` = β(πr − ρr), `rewards/accuracy` (chosen reward above rejected),
/// `rewards/margin` (their difference), `logps/chosen` = πc, `logps/rejected` = πr and
/// `logps/accuracy` (πc above πr: whether the policy itself prefers the chosen response,
/// whatever the reference does — meaningful before training too, where every reward is 0).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Dpo {
    config: DpoConfig,
}

impl Dpo {
    /// The objective with checked settings.
    pub fn new(config: DpoConfig) -> Result<Self, TrainError> {
        config.validate()?;
        Ok(Self { config })
    }

    /// Its settings.
    pub fn config(&self) -> &DpoConfig {
        &self.config
    }
}

impl Objective for Dpo {
    type Batch = PreferenceBatch;

    fn loss<B: Backend>(
        &self,
        model: &LlamaForCausalLm<B>,
        batch: &PreferenceBatch,
    ) -> Result<MicroBatchLoss<B>, TrainError> {
        let labels = batch.check()?;
        let p = batch.pairs();
        let reference = match &batch.reference {
            Some(r) if r.len() == p => r,
            Some(r) => {
                return Err(TrainError::InvalidBatch(format!(
                    "{} reference log-probabilities for {p} pairs",
                    r.len()
                )));
            }
            None => return Err(TrainError::MissingReference),
        };
        let logits = model.logits(&batch.tokens)?;
        let device = logits.device();
        let (logps, counts) = sequence_log_probs(logits, labels);
        if let Some(row) = counts.iter().position(|&c| c == 0) {
            let which = if row < p { "chosen" } else { "rejected" };
            return Err(TrainError::InvalidBatch(format!(
                "the {which} response of pair {} has no token (was it cut off?)",
                row % p
            )));
        }
        let (beta, eps) = (self.config.beta, self.config.label_smoothing);
        // IPO compares per-token means; dividing by the (constant) counts keeps the graph.
        let scale: Vec<f32> = match self.config.loss_type {
            DpoLossType::Sigmoid => vec![1.0; 2 * p],
            DpoLossType::Ipo => counts.iter().map(|&c| 1.0 / c as f32).collect(),
        };
        let logps =
            logps * Tensor::<B, 1>::from_data(TensorData::new(scale.clone(), [2 * p]), &device);
        let policy_chosen = logps.clone().narrow(0, 0, p);
        let policy_rejected = logps.clone().narrow(0, p, p);
        let reference_margin: Vec<f32> = reference
            .iter()
            .enumerate()
            .map(|(i, r)| r.chosen * scale[i] - r.rejected * scale[p + i])
            .collect();
        let reference_margin =
            Tensor::<B, 1>::from_data(TensorData::new(reference_margin, [p]), &device);
        let h = policy_chosen - policy_rejected - reference_margin;
        let losses = match self.config.loss_type {
            DpoLossType::Sigmoid => {
                let z = h.mul_scalar(beta);
                let mut losses = log_sigmoid(z.clone()).mul_scalar(-(1.0 - eps));
                if eps > 0.0 {
                    losses = losses - log_sigmoid(z.neg()).mul_scalar(eps);
                }
                losses
            }
            DpoLossType::Ipo => h.sub_scalar(1.0 / (2.0 * beta)).powi_scalar(2),
        };
        let loss = losses.mean();

        let host = to_host(logps)?;
        let metrics = pair_metrics(&host, reference, &scale, beta);
        let tokens = real_tokens(&batch.tokens);
        Ok(MicroBatchLoss {
            loss: Some(loss),
            weight: p as f64,
            tokens,
            metrics,
        })
    }
}

/// Sums over the pairs of the rewards, accuracy, margin and log-probabilities (`logps` holds
/// the policy's chosen then rejected values, already scaled for IPO).
fn pair_metrics(logps: &[f32], reference: &[PairLogProbs], scale: &[f32], beta: f64) -> MetricSums {
    let p = reference.len();
    let mut sums = MetricSums::default();
    for (i, r) in reference.iter().enumerate() {
        let (pc, pr) = (f64::from(logps[i]), f64::from(logps[p + i]));
        let rc = f64::from(r.chosen * scale[i]);
        let rr = f64::from(r.rejected * scale[p + i]);
        let (chosen, rejected) = (beta * (pc - rc), beta * (pr - rr));
        sums.add("rewards/chosen", chosen);
        sums.add("rewards/rejected", rejected);
        sums.add("rewards/accuracy", f64::from(u8::from(chosen > rejected)));
        sums.add("rewards/margin", chosen - rejected);
        sums.add("logps/chosen", pc);
        sums.add("logps/rejected", pr);
        sums.add("logps/accuracy", f64::from(u8::from(pc > pr)));
    }
    sums
}

/// The summed log-probabilities of each pair's responses under `reference`, a frozen model
/// (pass one on a plain backend, e.g. `model.valid()`, so that no graph is built).
pub fn reference_log_probs<B: Backend>(
    reference: &LlamaForCausalLm<B>,
    batch: &PreferenceBatch,
) -> Result<Vec<PairLogProbs>, TrainError> {
    let labels = batch.check()?;
    let logits = reference.logits(&batch.tokens)?;
    let (logps, _) = sequence_log_probs(logits, labels);
    let host = to_host(logps)?;
    let p = batch.pairs();
    Ok((0..p)
        .map(|i| PairLogProbs {
            chosen: host[i],
            rejected: host[p + i],
        })
        .collect())
}

/// Per-row log-probabilities on the host.
fn to_host<B: Backend>(logps: Tensor<B, 1>) -> Result<Vec<f32>, TrainError> {
    logps
        .into_data()
        .convert::<f32>()
        .into_vec()
        .map_err(|e| TrainError::InvalidBatch(format!("log-probabilities unreadable: {e:?}")))
}

/// Reference log-probabilities computed once, before training, for every pair of the data,
/// keyed by [`PreferenceBatch::pair_key`]: training then holds one model, and a resumed run
/// reads them back instead of recomputing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReferenceLogProbs {
    by_pair: HashMap<u64, PairLogProbs>,
}

/// The file layout of [`ReferenceLogProbs`]: sorted, so that equal tables write equal files.
#[derive(Serialize, Deserialize)]
struct ReferenceFile {
    pairs: Vec<(u64, PairLogProbs)>,
}

impl ReferenceLogProbs {
    /// Adds the log-probabilities of every pair of `batch` under `reference`.
    pub fn add_batch<B: Backend>(
        &mut self,
        reference: &LlamaForCausalLm<B>,
        batch: &PreferenceBatch,
    ) -> Result<(), TrainError> {
        let values = reference_log_probs(reference, batch)?;
        for (i, v) in values.into_iter().enumerate() {
            self.by_pair.insert(batch.pair_key(i), v);
        }
        Ok(())
    }

    /// Fills `batch.reference` from the table; an error names a pair it does not hold (data
    /// that changed since the table was computed).
    pub fn fill(&self, batch: &mut PreferenceBatch) -> Result<(), TrainError> {
        let values = (0..batch.pairs())
            .map(|i| {
                self.by_pair
                    .get(&batch.pair_key(i))
                    .copied()
                    .ok_or(TrainError::ReferenceNotFound { pair: i })
            })
            .collect::<Result<Vec<_>, _>>()?;
        batch.reference = Some(values);
        Ok(())
    }

    /// Pairs held.
    pub fn len(&self) -> usize {
        self.by_pair.len()
    }

    /// Whether no pair is held.
    pub fn is_empty(&self) -> bool {
        self.by_pair.is_empty()
    }

    /// Writes the table to `path` (JSON, atomically).
    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        let mut pairs: Vec<_> = self.by_pair.iter().map(|(&k, &v)| (k, v)).collect();
        pairs.sort_by_key(|(k, _)| *k);
        let json = serde_json::to_vec(&ReferenceFile { pairs })
            .map_err(|e| TrainError::io("cannot serialize", path, std::io::Error::other(e)))?;
        gmt_models::write_atomic(path, &json)
            .map_err(|e| TrainError::io("cannot write", path, std::io::Error::other(e)))
    }

    /// Reads a table written by [`save`](Self::save).
    pub fn load(path: &Path) -> Result<Self, TrainError> {
        let bytes = std::fs::read(path).map_err(|e| TrainError::io("cannot read", path, e))?;
        let file: ReferenceFile = serde_json::from_slice(&bytes).map_err(|e| {
            TrainError::io(
                "cannot parse",
                path,
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })?;
        Ok(Self {
            by_pair: file.pairs.into_iter().collect(),
        })
    }
}
