//! The data side of a run: encoder, training stream and evaluation batches, built from the
//! settings with gmt-data.

use std::path::Path;

use anyhow::{Context, Result};
use gmt_data::{
    BatchConfig, Batches, DataSource, DataStream, Encoder, RecordFormat, Split, StreamConfig,
    Truncation,
};
use gmt_models::{LlamaConfig, TokenBatch};

/// How a stream is read: format, order and split.
#[derive(Clone, Debug)]
pub struct StreamSettings {
    /// Record format, `None` to detect.
    pub format: Option<RecordFormat>,
    /// Shuffle and split seed.
    pub seed: u64,
    /// Shuffle buffer (1 = file order).
    pub shuffle_buffer: usize,
    /// Skip and count bad records.
    pub skip_bad_records: bool,
}

impl StreamSettings {
    /// The gmt-data stream configuration for `split`.
    pub fn config(&self, split: Split) -> StreamConfig {
        StreamConfig {
            format: self.format.clone(),
            seed: self.seed,
            shuffle_buffer: self.shuffle_buffer,
            skip_bad_records: self.skip_bad_records,
            split,
        }
    }
}

/// The padding token: the model's pad token, else its first EOS token (never trained on or
/// attended to either way).
pub fn pad_id(config: &LlamaConfig) -> u32 {
    config
        .pad_token_id
        .or_else(|| config.eos_token_ids.first().copied())
        .unwrap_or(0)
}

/// Batching of `batch_size` rows of at most `max_seq_len` tokens.
pub fn batch_config(
    config: &LlamaConfig,
    batch_size: usize,
    max_seq_len: usize,
    truncation: Truncation,
    packing: bool,
    group_by_length: usize,
) -> BatchConfig {
    BatchConfig {
        batch_size,
        max_seq_len,
        truncation,
        packing,
        pad_id: pad_id(config),
        group_by_length,
    }
}

/// Opens a data file or directory.
pub fn open_source(path: &Path) -> Result<DataSource> {
    DataSource::open(path).with_context(|| format!("opening data {}", path.display()))
}

/// Every batch of one pass over `path` (at most `max_examples` examples when not 0), for
/// evaluation: file order, no shuffling.
pub fn eval_batches(
    path: &Path,
    encoder: &Encoder,
    stream: &StreamSettings,
    split: Split,
    batching: BatchConfig,
    max_examples: usize,
) -> Result<Vec<TokenBatch>> {
    let settings = StreamSettings {
        shuffle_buffer: 1,
        ..stream.clone()
    };
    let examples = DataStream::new(open_source(path)?, encoder, settings.config(split))?;
    let limit = if max_examples == 0 {
        usize::MAX
    } else {
        max_examples
    };
    let batches = Batches::new(examples.take(limit), batching)?;
    let batches: Vec<TokenBatch> = batches
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading evaluation data {}", path.display()))?;
    if batches.is_empty() {
        anyhow::bail!("evaluation data {} yields no examples", path.display());
    }
    Ok(batches)
}

/// Optimizer steps in `epochs` passes over the training data: one dry pass through the
/// tokenizer and batcher, without the model.
pub fn count_steps(
    path: &Path,
    encoder: &Encoder,
    stream: &StreamConfig,
    batching: BatchConfig,
    grad_accum: usize,
    epochs: u64,
) -> Result<u64> {
    let examples = DataStream::new(open_source(path)?, encoder, stream.clone())?;
    let mut micro_batches = 0u64;
    for batch in Batches::new(examples, batching)? {
        batch.with_context(|| format!("reading training data {}", path.display()))?;
        micro_batches += 1;
    }
    if micro_batches == 0 {
        anyhow::bail!("training data {} yields no examples", path.display());
    }
    Ok((micro_batches * epochs).div_ceil(grad_accum as u64))
}
