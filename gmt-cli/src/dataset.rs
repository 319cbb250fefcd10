//! The data side of a run: encoder, training stream and evaluation batches, built from the
//! settings with gmt-data.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use gmt_data::{
    BatchConfig, Batches, DataReport, DataSource, DataStream, Encoder, FitReport, RecordFormat,
    Split, StreamConfig, Truncation,
};
use gmt_models::{LlamaConfig, TokenBatch};
use gmt_train::{DataPosition, TrainingBatches};

use crate::settings::TrainSettings;

/// The data of a `gmt train` run: where training and evaluation examples come from and how
/// they are batched.
pub struct RunData {
    train: PathBuf,
    train_split: Split,
    eval: Option<(PathBuf, Split)>,
    eval_max_examples: usize,
    streams: StreamSettings,
    batching: BatchConfig,
    grad_accum: usize,
    max_steps: u64,
    epochs: u64,
}

impl RunData {
    /// The data named by validated `settings`, batched for a model of `config`.
    pub fn new(settings: &TrainSettings, config: &LlamaConfig) -> Result<Self> {
        let (data, t) = (&settings.data, &settings.train);
        let train = data.train.clone().context("no training data given")?;
        if data.packing && data.max_seq_len > config.max_position_embeddings {
            anyhow::bail!(
                "invalid setting `data.max_seq_len`: packed rows are {} tokens long, past the model's context of {} (max_position_embeddings)",
                data.max_seq_len,
                config.max_position_embeddings
            );
        }
        let (train_split, eval) = match (&data.eval, data.eval_fraction) {
            (Some(eval), _) => (Split::All, Some((eval.clone(), Split::All))),
            (None, f) if f > 0.0 => (
                Split::Train { eval_fraction: f },
                Some((train.clone(), Split::Eval { eval_fraction: f })),
            ),
            (None, _) => (Split::All, None),
        };
        Ok(Self {
            train,
            train_split,
            eval,
            eval_max_examples: data.eval_max_examples,
            streams: StreamSettings {
                format: settings.record_format()?,
                seed: t.seed,
                shuffle_buffer: data.shuffle_buffer,
                skip_bad_records: data.skip_bad_records,
            },
            batching: batch_config(
                config,
                t.micro_batch_size,
                data.max_seq_len,
                data.truncation,
                data.packing,
                data.group_by_length,
                data.max_prompt_len,
            ),
            grad_accum: t.grad_accum,
            max_steps: t.max_steps,
            epochs: t.epochs,
        })
    }

    /// The evaluation batches, if the run has evaluation data.
    pub fn eval_batches(&self, encoder: &Encoder) -> Result<Option<Vec<TokenBatch>>> {
        let Some((path, split)) = &self.eval else {
            return Ok(None);
        };
        // Evaluation order does not matter; packing would change what the model sees.
        let batching = BatchConfig {
            packing: false,
            group_by_length: 0,
            ..self.batching.clone()
        };
        let batches = eval_batches(
            path,
            encoder,
            &self.streams,
            *split,
            batching,
            self.eval_max_examples,
        )?;
        Ok(Some(batches))
    }

    /// Optimizer steps of the run: `max_steps`, or those of `epochs` passes over the data.
    pub fn total_steps(&self, encoder: &Encoder) -> Result<u64> {
        if self.max_steps > 0 {
            return Ok(self.max_steps);
        }
        count_steps(
            &self.train,
            encoder,
            &self.streams.config(self.train_split),
            self.batching.clone(),
            self.grad_accum,
            self.epochs,
        )
    }

    /// The training batches, from the start or from a checkpoint's `position`.
    pub fn training_batches<'e>(
        &self,
        encoder: &'e Encoder,
        position: Option<DataPosition>,
    ) -> Result<TrainingBatches<'e>> {
        let source = open_source(&self.train)?;
        let config = self.streams.config(self.train_split);
        let stream = match &position {
            Some(p) => DataStream::resume(source, encoder, config, p.stream.clone())?,
            None => DataStream::new(source, encoder, config)?,
        };
        if let Some(format) = &stream.report().format {
            tracing::info!("training data: {} ({format})", self.train.display());
        }
        let epochs = (self.max_steps == 0).then_some(self.epochs);
        Ok(TrainingBatches::new(
            stream,
            self.batching.clone(),
            epochs,
            position,
        )?)
    }

    /// Micro-batches per optimizer step.
    pub fn grad_accum(&self) -> usize {
        self.grad_accum
    }

    /// How batches are built.
    pub fn batching(&self) -> BatchConfig {
        self.batching.clone()
    }

    /// Every example the run sees, training and evaluation, in file order: each file with
    /// its stream configuration.
    pub fn every_stream(&self) -> Vec<(PathBuf, StreamConfig)> {
        let in_order = StreamSettings {
            shuffle_buffer: 1,
            ..self.streams.clone()
        };
        let mut streams = vec![(self.train.clone(), in_order.config(self.train_split))];
        if let Some((path, split)) = &self.eval {
            streams.push((path.clone(), in_order.config(*split)));
        }
        streams
    }

    /// Refuses training data of the wrong kind for the objective (read from its first
    /// record when the format is detected).
    pub fn check_format(&self, encoder: &Encoder, settings: &TrainSettings) -> Result<()> {
        if self.streams.format.is_some() {
            return Ok(()); // named in the settings, checked with them
        }
        let (path, config) = self.every_stream().swap_remove(0);
        match detect_format(&path, encoder, config)? {
            Some(format) => settings.check_format(&format),
            None => Ok(()),
        }
    }
}

/// Logs what the training data held and what batching did to it: at the end of a run, and
/// after the counting pass before it (which reads every record, so that bad records near the
/// end of the data are reported before hours of training, not after).
pub fn report_data(report: &DataReport, fit: &FitReport) {
    tracing::info!(
        "data: {} records read, {} examples, {} held out, {} bad records skipped, {} truncated, {} dropped as too long, {} left out with no token to learn from (max_seq_len cut off their responses)",
        report.records,
        report.examples,
        report.held_out,
        report.skipped,
        fit.truncated,
        fit.dropped,
        fit.no_target
    );
    for error in &report.skipped_errors {
        tracing::warn!("skipped: {error}");
    }
    if fit.no_target > 0 && fit.no_target * 10 >= report.examples {
        tracing::warn!(
            "{} of {} examples have no response token within max_seq_len: raise max_seq_len or shorten the prompts",
            fit.no_target,
            report.examples
        );
    }
}

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

/// The format of `path` as its stream detects it from the first record (`None` for data
/// without records).
pub fn detect_format(
    path: &Path,
    encoder: &Encoder,
    config: StreamConfig,
) -> Result<Option<RecordFormat>> {
    let mut stream = DataStream::new(open_source(path)?, encoder, config)?;
    if let Some(Err(e)) = stream.next() {
        return Err(e).with_context(|| format!("reading {}", path.display()));
    }
    Ok(stream.state().format)
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
    max_prompt_len: Option<usize>,
) -> BatchConfig {
    BatchConfig {
        batch_size,
        max_seq_len,
        truncation,
        packing,
        pad_id: pad_id(config),
        group_by_length,
        max_prompt_len,
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
    let mut batches = Batches::new(examples, batching)?;
    let mut micro_batches = 0u64;
    for batch in batches.by_ref() {
        batch.with_context(|| format!("reading training data {}", path.display()))?;
        micro_batches += 1;
    }
    report_data(batches.examples().report(), &batches.report());
    if micro_batches == 0 {
        anyhow::bail!(
            "training data {} yields no examples to train on (see the counts above)",
            path.display()
        );
    }
    Ok((micro_batches * epochs).div_ceil(grad_accum as u64))
}
