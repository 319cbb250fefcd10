//! The model's input: token ids with padding, positions and packing, on the host.

use crate::ModelError;

/// A batch of token sequences of equal (padded) length, row-major `[batch, seq_len]`.
///
/// - `attention_mask`: `true` for real tokens; padded keys are never attended to.
/// - `position_ids`: per-token positions; default `0..seq_len` on every row.
/// - `segment_ids`: for packed sequences, tokens attend only within their own segment
///   (a block-diagonal mask); give per-example positions with them.
/// - `labels`: next-token targets, *not* shifted (position t's logits predict
///   `labels[t + 1]`, as in Transformers); `-100` carries no loss.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TokenBatch {
    /// Rows.
    pub batch: usize,
    /// Columns.
    pub seq_len: usize,
    /// Token ids.
    pub input_ids: Vec<u32>,
    /// Real (`true`) or padding (`false`) per token.
    pub attention_mask: Option<Vec<bool>>,
    /// Position of each token.
    pub position_ids: Option<Vec<usize>>,
    /// Packed-example index of each token.
    pub segment_ids: Option<Vec<u32>>,
    /// Targets, `-100` = ignored.
    pub labels: Option<Vec<i64>>,
}

impl TokenBatch {
    /// A batch of unpadded rows of equal length.
    pub fn new(input_ids: Vec<u32>, batch: usize, seq_len: usize) -> Self {
        Self {
            batch,
            seq_len,
            input_ids,
            ..Self::default()
        }
    }

    /// With labels.
    pub fn with_labels(mut self, labels: Vec<i64>) -> Self {
        self.labels = Some(labels);
        self
    }

    /// Checks that every field has `batch · seq_len` entries and ids fit the vocabulary.
    pub fn validate(&self, vocab_size: usize) -> Result<(), ModelError> {
        let n = self.batch * self.seq_len;
        if n == 0 {
            return Err(ModelError::InvalidInput("empty batch".into()));
        }
        let check = |name: &str, len: Option<usize>| match len {
            Some(len) if len != n => Err(ModelError::InvalidInput(format!(
                "{name} has {len} entries, expected batch {} × seq_len {} = {n}",
                self.batch, self.seq_len
            ))),
            _ => Ok(()),
        };
        check("input_ids", Some(self.input_ids.len()))?;
        check("attention_mask", self.attention_mask.as_ref().map(Vec::len))?;
        check("position_ids", self.position_ids.as_ref().map(Vec::len))?;
        check("segment_ids", self.segment_ids.as_ref().map(Vec::len))?;
        check("labels", self.labels.as_ref().map(Vec::len))?;
        if let Some((i, id)) = self
            .input_ids
            .iter()
            .enumerate()
            .find(|(_, id)| **id as usize >= vocab_size)
        {
            return Err(ModelError::InvalidInput(format!(
                "token id {id} at row {}, column {} is outside the vocabulary of {vocab_size}",
                i / self.seq_len,
                i % self.seq_len
            )));
        }
        if let Some((i, l)) = self
            .labels
            .iter()
            .flatten()
            .enumerate()
            .find(|(_, l)| **l != -100 && (**l < 0 || **l as usize >= vocab_size))
        {
            return Err(ModelError::InvalidInput(format!(
                "label {l} at row {}, column {} is neither -100 nor a token id below {vocab_size}",
                i / self.seq_len,
                i % self.seq_len
            )));
        }
        Ok(())
    }

    /// Positions of every token (explicit, or `0..seq_len` per row).
    pub fn positions(&self) -> Vec<usize> {
        match &self.position_ids {
            Some(p) => p.clone(),
            None => (0..self.batch).flat_map(|_| 0..self.seq_len).collect(),
        }
    }

    /// The attention mask `[batch, seq (queries), seq (keys)]`, `true` = may NOT attend:
    /// causal, within `sliding_window`, never to padding, and only within one segment.
    pub fn blocked(&self, sliding_window: Option<usize>) -> Vec<bool> {
        let (b, s) = (self.batch, self.seq_len);
        let mut out = vec![true; b * s * s];
        for row in 0..b {
            for i in 0..s {
                for j in 0..=i {
                    let real = self.attention_mask.as_ref().is_none_or(|m| m[row * s + j]);
                    let same = self
                        .segment_ids
                        .as_ref()
                        .is_none_or(|g| g[row * s + i] == g[row * s + j]);
                    let near = sliding_window.is_none_or(|w| i - j < w);
                    out[(row * s + i) * s + j] = !(real && same && near);
                }
            }
        }
        out
    }
}
