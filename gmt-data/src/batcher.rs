//! Encoded examples → padded or packed [`TokenBatch`]es, optionally grouped by length.
//!
//! Preference pairs batch as `batch_size` pairs → 2·`batch_size` rows: every pair's prompt
//! with its chosen response, then, in the same order, with its rejected response. A pair
//! longer than `max_seq_len` (prompt + its longer response) is, under `truncate`, cut as TRL
//! cuts it: the prompt keeps its last `max_prompt_len` tokens, then both responses keep their
//! first `max_seq_len − prompt` tokens.

use std::collections::VecDeque;

use gmt_models::TokenBatch;

use crate::{DataError, Encoded, IGNORE};

/// The longest `max_seq_len` accepted: 2^20 tokens, beyond any model gmt trains; a larger
/// value is a typo that would otherwise surface as an allocation failure.
pub const MAX_SEQ_LEN: usize = 1 << 20;

/// What to do with an example longer than `max_seq_len`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Truncation {
    /// Keep the first `max_seq_len` tokens.
    #[default]
    Truncate,
    /// Leave the example out (counted in the report).
    Drop,
}

/// How batches are built.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BatchConfig {
    /// Rows per batch.
    pub batch_size: usize,
    /// Longest row, in tokens.
    pub max_seq_len: usize,
    /// Long examples are truncated or dropped.
    pub truncation: Truncation,
    /// Pack several examples into each row (block-diagonal attention, per-example positions)
    /// instead of one padded example per row.
    pub packing: bool,
    /// Token used for padding (never attended to, never trained on).
    pub pad_id: u32,
    /// Length-grouped batching: read this many batches' worth of examples at a time, sort
    /// them by length (longest first) and cut them into batches, so that rows of a batch
    /// have similar lengths and little padding. `0` (the default) batches in stream order.
    /// The stream's shuffle still decides which examples share a window; padding only.
    #[serde(default)]
    pub group_by_length: usize,
    /// Preference pairs only: the most prompt tokens kept when a pair is too long (its
    /// start is cut); `None` = half of `max_seq_len`. Below `max_seq_len`, so that every
    /// response keeps a token.
    #[serde(default)]
    pub max_prompt_len: Option<usize>,
}

impl BatchConfig {
    /// Checks the sizes.
    pub fn validate(&self) -> Result<(), DataError> {
        if self.batch_size == 0 {
            return Err(DataError::InvalidConfig {
                key: "batch_size",
                reason: "must be at least 1".into(),
            });
        }
        if !(2..=MAX_SEQ_LEN).contains(&self.max_seq_len) {
            return Err(DataError::InvalidConfig {
                key: "max_seq_len",
                reason: format!("{} is outside 2..={MAX_SEQ_LEN} tokens", self.max_seq_len),
            });
        }
        if let Some(m) = self.max_prompt_len
            && !(1..self.max_seq_len).contains(&m)
        {
            return Err(DataError::InvalidConfig {
                key: "max_prompt_len",
                reason: format!(
                    "{m} leaves no room for a response: it must be at least 1 and below max_seq_len ({})",
                    self.max_seq_len
                ),
            });
        }
        if self.packing && self.group_by_length > 0 {
            return Err(DataError::InvalidConfig {
                key: "group_by_length",
                reason: "packing leaves no padding to save; use one or the other".into(),
            });
        }
        Ok(())
    }

    /// Applies the truncation policy: `None` when the example is dropped.
    pub fn fit(&self, mut example: Encoded) -> Option<Encoded> {
        if example.is_pair() {
            return self.fit_pair(example);
        }
        if example.ids.len() <= self.max_seq_len {
            return Some(example);
        }
        match self.truncation {
            Truncation::Drop => None,
            Truncation::Truncate => {
                example.ids.truncate(self.max_seq_len);
                example.labels.truncate(self.max_seq_len);
                Some(example)
            }
        }
    }

    fn fit_pair(&self, example: Encoded) -> Option<Encoded> {
        if example.max_len() <= self.max_seq_len {
            return Some(example);
        }
        if self.truncation == Truncation::Drop {
            return None;
        }
        let prompt_len = example.prompt_len();
        let max_prompt = self.max_prompt_len.unwrap_or(self.max_seq_len / 2).max(1);
        let prompt = &example.ids[prompt_len.saturating_sub(max_prompt)..prompt_len];
        let room = self.max_seq_len - prompt.len();
        let cut = |response: &[u32]| response[..response.len().min(room)].to_vec();
        let chosen = cut(&example.ids[prompt_len..]);
        let rejected = cut(example.rejected.as_deref().unwrap_or_default());
        Some(Encoded {
            labels: std::iter::repeat_n(IGNORE, prompt.len())
                .chain(chosen.iter().map(|&t| t as i64))
                .collect(),
            ids: prompt.iter().copied().chain(chosen).collect(),
            rejected: Some(rejected),
        })
    }

    /// One batch from examples that already fit. Without packing, each example is a row,
    /// right-padded to the longest; with packing, examples fill rows greedily in order
    /// (the caller passes what fits in `batch_size` rows, see [`BatchConfig::rows_needed`]).
    pub fn collate(&self, examples: &[Encoded]) -> TokenBatch {
        if examples.iter().any(Encoded::is_pair) {
            return self.collate(&pair_rows(examples));
        }
        let rows: Vec<Vec<(usize, &Encoded)>> = if self.packing {
            self.pack(examples)
        } else {
            examples.iter().map(|e| vec![(0, e)]).collect()
        };
        let seq_len = if self.packing {
            self.max_seq_len
        } else {
            examples
                .iter()
                .map(|e| e.ids.len())
                .max()
                .unwrap_or(1)
                .max(1)
        };
        let n = rows.len() * seq_len;
        let mut batch = TokenBatch {
            batch: rows.len(),
            seq_len,
            input_ids: Vec::with_capacity(n),
            attention_mask: Some(Vec::with_capacity(n)),
            position_ids: self.packing.then(|| Vec::with_capacity(n)),
            segment_ids: self.packing.then(|| Vec::with_capacity(n)),
            labels: Some(Vec::with_capacity(n)),
        };
        for row in rows {
            let mut used = 0;
            for (segment, example) in row {
                batch.input_ids.extend(&example.ids);
                batch.labels.as_mut().expect("set").extend(&example.labels);
                batch
                    .attention_mask
                    .as_mut()
                    .expect("set")
                    .extend(std::iter::repeat_n(true, example.ids.len()));
                if let Some(p) = batch.position_ids.as_mut() {
                    p.extend(0..example.ids.len());
                }
                if let Some(s) = batch.segment_ids.as_mut() {
                    s.extend(std::iter::repeat_n(segment as u32, example.ids.len()));
                }
                used += example.ids.len();
            }
            let pad = seq_len - used;
            batch
                .input_ids
                .extend(std::iter::repeat_n(self.pad_id, pad));
            batch
                .labels
                .as_mut()
                .expect("set")
                .extend(std::iter::repeat_n(IGNORE, pad));
            batch
                .attention_mask
                .as_mut()
                .expect("set")
                .extend(std::iter::repeat_n(false, pad));
            if let Some(p) = batch.position_ids.as_mut() {
                p.extend(0..pad);
            }
            if let Some(s) = batch.segment_ids.as_mut() {
                s.extend(std::iter::repeat_n(u32::MAX, pad));
            }
        }
        batch
    }

    fn pack<'a>(&self, examples: &'a [Encoded]) -> Vec<Vec<(usize, &'a Encoded)>> {
        let mut rows: Vec<Vec<(usize, &Encoded)>> = Vec::new();
        let mut used = 0;
        for example in examples {
            if rows.is_empty() || used + example.ids.len() > self.max_seq_len {
                rows.push(Vec::new());
                used = 0;
            }
            let row = rows.last_mut().expect("pushed above");
            row.push((row.len(), example));
            used += example.ids.len();
        }
        rows
    }

    /// Rows that `examples` take when packed.
    pub fn rows_needed(&self, examples: &[Encoded]) -> usize {
        if self.packing {
            self.pack(examples).len()
        } else {
            examples.len()
        }
    }
}

/// A pair's two rows as examples: every prompt + chosen, then every prompt + rejected.
fn pair_rows(pairs: &[Encoded]) -> Vec<Encoded> {
    let chosen = pairs
        .iter()
        .map(|p| Encoded::new(p.ids.clone(), p.labels.clone()));
    let rejected = pairs.iter().map(|p| {
        let prompt = &p.ids[..p.prompt_len()];
        let response = p.rejected.as_deref().unwrap_or_default();
        Encoded::new(
            prompt.iter().chain(response).copied().collect(),
            std::iter::repeat_n(IGNORE, prompt.len())
                .chain(response.iter().map(|&t| t as i64))
                .collect(),
        )
    });
    chosen.chain(rejected).collect()
}

/// Counts of examples that did not fit `max_seq_len`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FitReport {
    /// Examples cut to `max_seq_len`.
    pub truncated: u64,
    /// Examples left out ([`Truncation::Drop`]).
    pub dropped: u64,
    /// Examples left out because no token of theirs carries loss once fitted: truncation cut
    /// off every response token (a long prompt, a short `max_seq_len`). A batch of them
    /// would make a step with nothing to learn from.
    #[serde(default)]
    pub no_target: u64,
}

/// Groups a stream of examples into batches.
pub struct Batches<I> {
    examples: I,
    config: BatchConfig,
    /// Examples read (and fitted) but not yet batched, in the order they will be used.
    pending: VecDeque<Encoded>,
    report: FitReport,
}

impl<I: Iterator<Item = Result<Encoded, DataError>>> Batches<I> {
    /// Batches of `config` over `examples`.
    pub fn new(examples: I, config: BatchConfig) -> Result<Self, DataError> {
        config.validate()?;
        Ok(Self {
            examples,
            config,
            pending: VecDeque::new(),
            report: FitReport::default(),
        })
    }

    /// Continues batching where saved [`Batches::pending`] examples and
    /// [`Batches::report`] left off, over a resumed example stream.
    pub fn resume(
        examples: I,
        config: BatchConfig,
        pending: Vec<Encoded>,
        report: FitReport,
    ) -> Result<Self, DataError> {
        let mut batches = Self::new(examples, config)?;
        batches.pending = pending.into();
        batches.report = report;
        Ok(batches)
    }

    /// Truncated and dropped counts so far.
    pub fn report(&self) -> FitReport {
        self.report
    }

    /// The underlying example stream (e.g. to save its state between batches). Examples
    /// already read from it may wait for later batches; see [`Batches::pending`].
    pub fn examples(&self) -> &I {
        &self.examples
    }

    /// The underlying example stream, mutably (e.g. to start its next epoch).
    pub fn examples_mut(&mut self) -> &mut I {
        &mut self.examples
    }

    /// Examples read but not yet batched, in the order they will be used: with packing,
    /// the one that did not fit the last batch; with length grouping, the rest of the window.
    /// Saving them with the stream's state makes a resumed run batch exactly the same.
    pub fn pending(&self) -> impl ExactSizeIterator<Item = &Encoded> {
        self.pending.iter()
    }

    fn next_fitting(&mut self) -> Option<Result<Encoded, DataError>> {
        if self.pending.is_empty()
            && self.config.group_by_length > 0
            && let Err(e) = self.fill_window()
        {
            return Some(Err(e));
        }
        if let Some(e) = self.pending.pop_front() {
            return Some(Ok(e));
        }
        self.read_fitting()
    }

    /// Reads the next length-grouping window, longest examples first. The sort is stable,
    /// so equal lengths keep the stream's (seeded) order.
    fn fill_window(&mut self) -> Result<(), DataError> {
        let window = self.config.group_by_length * self.config.batch_size;
        let mut examples = Vec::with_capacity(window);
        let mut result = Ok(());
        while examples.len() < window {
            match self.read_fitting() {
                Some(Ok(example)) => examples.push(example),
                Some(Err(e)) => {
                    result = Err(e);
                    break;
                }
                None => break,
            }
        }
        examples.sort_by_key(|e| std::cmp::Reverse(e.max_len()));
        // Even after an error, what was read stays queued rather than lost.
        self.pending.extend(examples);
        result
    }

    /// The next example of the stream that fits `max_seq_len` after truncation.
    fn read_fitting(&mut self) -> Option<Result<Encoded, DataError>> {
        loop {
            let example = match self.examples.next()? {
                Ok(e) => e,
                Err(e) => return Some(Err(e)),
            };
            if example.is_pair() && self.config.packing {
                return Some(Err(DataError::InvalidConfig {
                    key: "packing",
                    reason: "preference pairs are not packed: each response's log-probability is summed over its own row".into(),
                }));
            }
            let long = example.max_len() > self.config.max_seq_len;
            match self.config.fit(example) {
                Some(e) if !e.has_target() => self.report.no_target += 1,
                Some(e) => {
                    self.report.truncated += long as u64;
                    return Some(Ok(e));
                }
                None => self.report.dropped += 1,
            }
        }
    }
}

impl<I: Iterator<Item = Result<Encoded, DataError>>> Iterator for Batches<I> {
    type Item = Result<TokenBatch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut chosen: Vec<Encoded> = Vec::new();
        while let Some(next) = self.next_fitting() {
            let example = match next {
                Ok(e) => e,
                Err(e) => return Some(Err(e)),
            };
            chosen.push(example);
            if self.config.rows_needed(&chosen) > self.config.batch_size {
                let unused = chosen.pop().expect("just pushed");
                self.pending.push_front(unused);
                break;
            }
            if !self.config.packing && chosen.len() == self.config.batch_size {
                break;
            }
        }
        (!chosen.is_empty()).then(|| Ok(self.config.collate(&chosen)))
    }
}
