//! The training stream: records → examples → tokens, shuffled through a seeded buffer,
//! with a position that can be saved and restored exactly.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{
    DataError, DataSource, Encoded, Encoder, RecordFormat, RecordIter, RecordLocation,
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
    source: DataSource,
    encoder: &'a Encoder,
    config: StreamConfig,
    records: RecordIter,
    state: StreamState,
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
        if let Split::Train { eval_fraction } | Split::Eval { eval_fraction } = config.split
            && !(0.0..1.0).contains(&eval_fraction)
        {
            return Err(DataError::InvalidConfig {
                key: "eval_fraction",
                reason: format!("{eval_fraction} is outside [0, 1)"),
            });
        }
        let records = source.records(state.position)?;
        let mut rng = epoch_rng(config.seed, state.epoch);
        rng.set_word_pos(state.rng_word_pos);
        Ok(Self {
            source,
            encoder,
            config,
            records,
            state,
            rng,
            exhausted: false,
        })
    }

    /// The position to save (call between examples).
    pub fn state(&self) -> StreamState {
        let mut state = self.state.clone();
        state.rng_word_pos = self.rng.get_word_pos();
        state
    }

    /// Starts the next pass over the data, with a fresh shuffle order (ChaCha8 stream =
    /// epoch). Examples still in the shuffle buffer stay there and come first.
    pub fn next_epoch(&mut self) -> Result<(), DataError> {
        self.records = self.source.records(SourcePosition::default())?;
        self.state.position = SourcePosition::default();
        self.state.epoch += 1;
        self.rng = epoch_rng(self.config.seed, self.state.epoch);
        self.exhausted = false;
        Ok(())
    }

    /// Completed passes over the data.
    pub fn epoch(&self) -> u64 {
        self.state.epoch
    }

    /// Counters so far.
    pub fn report(&self) -> &DataReport {
        &self.state.report
    }

    /// The dataset's files.
    pub fn source(&self) -> &DataSource {
        &self.source
    }

    fn held_out(&self, location: &RecordLocation, file: usize) -> bool {
        let fraction = match self.config.split {
            Split::All => return false,
            Split::Train { eval_fraction } | Split::Eval { eval_fraction } => eval_fraction,
        };
        // A hash of (seed, file, line): stable whatever the order, shuffle or resumption.
        let mut x = self.config.seed
            ^ (file as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ location.line.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
        let in_eval = (x as f64 / u64::MAX as f64) < fraction;
        match self.config.split {
            Split::Eval { .. } => !in_eval,
            _ => in_eval,
        }
    }

    /// Reads the next usable record into an example, or `None` at the end of the data.
    fn read_one(&mut self) -> Option<Result<Encoded, DataError>> {
        loop {
            let raw = match self.records.next()? {
                Ok(raw) => raw,
                Err(e) => return Some(Err(e)),
            };
            let file = raw.next.file;
            self.state.position = raw.next;
            self.state.report.records += 1;
            if self.held_out(&raw.location, file) {
                self.state.report.held_out += 1;
                continue;
            }
            let result = self.interpret(raw.location, raw.value);
            match result {
                Ok(encoded) => return Some(Ok(encoded)),
                Err(e)
                    if self.config.skip_bad_records && matches!(e, DataError::BadRecord { .. }) =>
                {
                    self.state.report.skipped += 1;
                    if self.state.report.skipped_errors.len() < 100 {
                        self.state.report.skipped_errors.push(e.to_string());
                    }
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }

    fn interpret(
        &mut self,
        location: RecordLocation,
        value: Result<serde_json::Value, String>,
    ) -> Result<Encoded, DataError> {
        let bad = |field: Option<String>, reason: String| DataError::BadRecord {
            location: location.clone(),
            field,
            reason,
        };
        let value = value.map_err(|reason| bad(None, reason))?;
        if self.state.format.is_none() {
            let detected = RecordFormat::detect(&value).ok_or_else(|| {
                bad(None, "cannot detect the record format (no messages, conversations, instruction/output, prompt/completion or text field); name the format or a field mapping".into())
            })?;
            let name = match &detected {
                RecordFormat::Fields(m) => {
                    format!("fields {} → user, {} → assistant", m.user, m.assistant)
                }
                other => other.name().to_string(),
            };
            self.state.report.format = Some(format!("{name} (detected from {location})"));
            self.state.format = Some(detected);
        } else if self.state.report.format.is_none() {
            self.state.report.format = self.state.format.as_ref().map(|f| f.name().to_string());
        }
        let format = self.state.format.as_ref().expect("set above");
        let example = format.parse(&value).map_err(|e| bad(e.field, e.reason))?;
        // Template errors depend on the record's content: report them at the record.
        self.encoder.encode(&example).map_err(|e| match e {
            DataError::Template(reason) | DataError::Tokenizer(reason) => bad(None, reason),
            other => other,
        })
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
        while !self.exhausted && self.state.buffer.len() < self.config.shuffle_buffer {
            match self.read_one() {
                Some(Ok(example)) => self.state.buffer.push(example),
                Some(Err(e)) => return Some(Err(e)),
                None => self.exhausted = true,
            }
        }
        if self.state.buffer.is_empty() {
            return None;
        }
        let index = self.rng.random_range(0..self.state.buffer.len());
        self.state.report.examples += 1;
        Some(Ok(self.state.buffer.swap_remove(index)))
    }
}
