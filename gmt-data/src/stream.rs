//! The training stream: records → examples → tokens, shuffled through a seeded buffer,
//! with a position that can be saved and restored exactly.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{
    DataError, DataSource, Encoded, Encoder, ExampleReader, ReaderConfig, RecordFormat,
    SourcePosition,
};

/// Which part of a dataset a stream yields when a fraction is held out for evaluation.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Every record.
    #[default]
    All,
    /// Records not held out.
    Train {
        /// Fraction held out.
        eval_fraction: f64,
    },
    /// The held-out records.
    Eval {
        /// Fraction held out.
        eval_fraction: f64,
    },
}

impl Split {
    /// Checks the held-out fraction: it must lie in `[0, 1)`.
    pub fn validate(&self) -> Result<(), DataError> {
        match *self {
            Self::Train { eval_fraction } | Self::Eval { eval_fraction }
                if !(0.0..1.0).contains(&eval_fraction) =>
            {
                Err(DataError::InvalidConfig {
                    key: "eval_fraction",
                    reason: format!("{eval_fraction} is outside [0, 1)"),
                })
            }
            _ => Ok(()),
        }
    }
}

/// Settings of a [`DataStream`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StreamConfig {
    /// Record format; `None` detects it from the first record (and says so in the report).
    pub format: Option<RecordFormat>,
    /// Seed of the shuffle and of the eval split.
    pub seed: u64,
    /// Examples held in the shuffle buffer (1 = file order).
    pub shuffle_buffer: usize,
    /// Skip and count bad records instead of failing on the first.
    pub skip_bad_records: bool,
    /// Train/eval split by fraction.
    pub split: Split,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            format: None,
            seed: 0,
            shuffle_buffer: 1024,
            skip_bad_records: false,
            split: Split::All,
        }
    }
}

/// What the stream has seen so far.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DataReport {
    /// The format used, and whether it was detected.
    pub format: Option<String>,
    /// Records read (including skipped and held-out ones).
    pub records: u64,
    /// Examples yielded.
    pub examples: u64,
    /// Bad records skipped (with `skip_bad_records`), with their errors (the first 100).
    pub skipped: u64,
    /// The first errors of skipped records.
    pub skipped_errors: Vec<String>,
    /// Records in the other split.
    pub held_out: u64,
}

/// The saved position of a stream; restoring it yields exactly what the uninterrupted
/// stream would have yielded next.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StreamState {
    /// Next record to read.
    pub position: SourcePosition,
    /// Examples waiting in the shuffle buffer.
    pub buffer: Vec<Encoded>,
    /// Shuffle RNG: ChaCha8 word position (seed and stream come from the config).
    pub rng_word_pos: u128,
    /// Completed passes over the data.
    pub epoch: u64,
    /// Counters.
    pub report: DataReport,
    /// The format in use (detected or given).
    pub format: Option<RecordFormat>,
}

/// A deterministic, resumable stream of encoded examples over one pass of the data.
pub struct DataStream<'a> {
    examples: ExampleReader,
    encoder: &'a Encoder,
    config: StreamConfig,
    buffer: Vec<Encoded>,
    epoch: u64,
    rng: ChaCha8Rng,
    exhausted: bool,
}

impl<'a> DataStream<'a> {
    /// A stream from the start of `source`.
    pub fn new(
        source: DataSource,
        encoder: &'a Encoder,
        config: StreamConfig,
    ) -> Result<Self, DataError> {
        let state = StreamState {
            position: SourcePosition::default(),
            buffer: Vec::new(),
            rng_word_pos: 0,
            epoch: 0,
            report: DataReport::default(),
            format: config.format.clone(),
        };
        Self::resume(source, encoder, config, state)
    }

    /// A stream continuing from a saved [`StreamState`].
    pub fn resume(
        source: DataSource,
        encoder: &'a Encoder,
        config: StreamConfig,
        state: StreamState,
    ) -> Result<Self, DataError> {
        if config.shuffle_buffer == 0 {
            return Err(DataError::InvalidConfig {
                key: "shuffle_buffer",
                reason: "must be at least 1".into(),
            });
        }
        let reading = ReaderConfig {
            format: state.format,
            skip_bad_records: config.skip_bad_records,
            split: config.split,
            seed: config.seed,
        };
        let examples = ExampleReader::resume(source, reading, state.position, state.report)?;
        let mut rng = epoch_rng(config.seed, state.epoch);
        rng.set_word_pos(state.rng_word_pos);
        Ok(Self {
            examples,
            encoder,
            config,
            buffer: state.buffer,
            epoch: state.epoch,
            rng,
            exhausted: false,
        })
    }

    /// The position to save (call between examples).
    pub fn state(&self) -> StreamState {
        StreamState {
            position: self.examples.position(),
            buffer: self.buffer.clone(),
            rng_word_pos: self.rng.get_word_pos(),
            epoch: self.epoch,
            report: self.examples.report().clone(),
            format: self.examples.format().cloned(),
        }
    }

    /// Starts the next pass over the data, with a fresh shuffle order (ChaCha8 stream =
    /// epoch). Examples still in the shuffle buffer stay there and come first.
    pub fn next_epoch(&mut self) -> Result<(), DataError> {
        self.examples.restart()?;
        self.epoch += 1;
        self.rng = epoch_rng(self.config.seed, self.epoch);
        self.exhausted = false;
        Ok(())
    }

    /// Completed passes over the data.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Counters so far.
    pub fn report(&self) -> &DataReport {
        self.examples.report()
    }

    /// The dataset's files.
    pub fn source(&self) -> &DataSource {
        self.examples.source()
    }

    /// Reads the next usable record into an encoded example, or `None` at the end of the data.
    fn read_one(&mut self) -> Option<Result<Encoded, DataError>> {
        loop {
            let (location, example) = match self.examples.next()? {
                Ok(read) => read,
                Err(e) => return Some(Err(e)),
            };
            // Template errors depend on the record's content: report them at the record.
            let encoded = self.encoder.encode(&example).map_err(|e| match e {
                DataError::Template(reason) | DataError::Tokenizer(reason) => {
                    DataError::BadRecord {
                        location,
                        field: None,
                        reason,
                    }
                }
                other => other,
            });
            match encoded {
                Ok(encoded) => return Some(Ok(encoded)),
                Err(e) => {
                    if let Err(e) = self.examples.skip_or_fail(e) {
                        return Some(Err(e));
                    }
                }
            }
        }
    }
}

/// The shuffle RNG of one pass: each epoch has its own ChaCha8 stream of the seed.
fn epoch_rng(seed: u64, epoch: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch);
    rng
}

impl Iterator for DataStream<'_> {
    type Item = Result<Encoded, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.exhausted && self.buffer.len() < self.config.shuffle_buffer {
            match self.read_one() {
                Some(Ok(example)) => self.buffer.push(example),
                Some(Err(e)) => return Some(Err(e)),
                None => self.exhausted = true,
            }
        }
        if self.buffer.is_empty() {
            return None;
        }
        let index = self.rng.random_range(0..self.buffer.len());
        self.examples.count_example();
        Some(Ok(self.buffer.swap_remove(index)))
    }
}
