//! Records read as examples, in file order: the one place where a record's format is
//! detected, a record is parsed, held out or skipped, and a bad record is reported by its
//! `file:line`. [`DataStream`](crate::DataStream) encodes and shuffles what it yields; tools
//! that need the examples themselves (evaluation by generation) read them here.

use crate::{
    DataError, DataReport, DataSource, Example, RecordFormat, RecordIter, RecordLocation,
    SourcePosition, Split,
};

/// How an [`ExampleReader`] reads.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReaderConfig {
    /// Record format; `None` detects it from the first record (and says so in the report).
    pub format: Option<RecordFormat>,
    /// Skip and count bad records instead of failing on the first.
    pub skip_bad_records: bool,
    /// Train/eval split by fraction (a seeded hash of file and line decides).
    pub split: Split,
    /// Seed of the split.
    pub seed: u64,
}

/// The examples of a [`DataSource`], one record at a time, with a position to resume from.
///
/// ```no_run
/// use gmt_data::{DataSource, ExampleReader, ReaderConfig};
///
/// let mut reader = ExampleReader::new(DataSource::open("train.jsonl")?, ReaderConfig::default())?;
/// for example in reader.by_ref().take(10) {
///     let (location, example) = example?;   // location: `train.jsonl:3`
/// }
/// println!("{:?}", reader.report());
/// # Ok::<(), gmt_data::DataError>(())
/// ```
pub struct ExampleReader {
    source: DataSource,
    records: RecordIter,
    config: ReaderConfig,
    position: SourcePosition,
    report: DataReport,
}

impl ExampleReader {
    /// A reader from the start of `source`.
    pub fn new(source: DataSource, config: ReaderConfig) -> Result<Self, DataError> {
        Self::resume(
            source,
            config,
            SourcePosition::default(),
            DataReport::default(),
        )
    }

    /// A reader continuing at `position` with the counters of `report` (the format, once
    /// detected, is the config's).
    pub fn resume(
        source: DataSource,
        config: ReaderConfig,
        position: SourcePosition,
        report: DataReport,
    ) -> Result<Self, DataError> {
        config.split.validate()?;
        let records = source.records(position)?;
        Ok(Self {
            source,
            records,
            config,
            position,
            report,
        })
    }

    /// Starts again from the first record (the next epoch); counters and format stay.
    pub fn restart(&mut self) -> Result<(), DataError> {
        self.position = SourcePosition::default();
        self.records = self.source.records(self.position)?;
        Ok(())
    }

    /// The next record to read.
    pub fn position(&self) -> SourcePosition {
        self.position
    }

    /// Counters so far.
    pub fn report(&self) -> &DataReport {
        &self.report
    }

    /// The format in use: the config's, or the one detected from the first record.
    pub fn format(&self) -> Option<&RecordFormat> {
        self.config.format.as_ref()
    }

    /// The dataset's files.
    pub fn source(&self) -> &DataSource {
        &self.source
    }

    /// Counts an example handed on (the report's `examples`: what reached training).
    pub fn count_example(&mut self) {
        self.report.examples += 1;
    }

    /// Counts a record found bad after it was read (e.g. by the chat template) as skipped,
    /// when bad records are skipped; otherwise hands the error back to be returned.
    pub fn skip_or_fail(&mut self, error: DataError) -> Result<(), DataError> {
        if !(self.config.skip_bad_records && matches!(error, DataError::BadRecord { .. })) {
            return Err(error);
        }
        self.report.skipped += 1;
        if self.report.skipped_errors.len() < 100 {
            self.report.skipped_errors.push(error.to_string());
        }
        Ok(())
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

    fn parse(
        &mut self,
        location: &RecordLocation,
        value: Result<serde_json::Value, String>,
    ) -> Result<Example, DataError> {
        let bad = |field: Option<String>, reason: String| DataError::BadRecord {
            location: location.clone(),
            field,
            reason,
        };
        let value = value.map_err(|reason| bad(None, reason))?;
        if self.config.format.is_none() {
            let detected = RecordFormat::detect(&value).ok_or_else(|| {
                bad(None, "cannot detect the record format (no messages, conversations, instruction/output, prompt/completion or text field); name the format or a field mapping".into())
            })?;
            let name = match &detected {
                RecordFormat::Fields(m) => {
                    format!("fields {} → user, {} → assistant", m.user, m.assistant)
                }
                other => other.name().to_string(),
            };
            self.report.format = Some(format!("{name} (detected from {location})"));
            self.config.format = Some(detected);
        } else if self.report.format.is_none() {
            self.report.format = self.config.format.as_ref().map(|f| f.name().to_string());
        }
        let format = self.config.format.as_ref().expect("set above");
        format.parse(&value).map_err(|e| bad(e.field, e.reason))
    }
}

impl Iterator for ExampleReader {
    type Item = Result<(RecordLocation, Example), DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let raw = match self.records.next()? {
                Ok(raw) => raw,
                Err(e) => return Some(Err(e)),
            };
            let file = raw.next.file;
            self.position = raw.next;
            self.report.records += 1;
            if self.held_out(&raw.location, file) {
                self.report.held_out += 1;
                continue;
            }
            match self.parse(&raw.location, raw.value) {
                Ok(example) => return Some(Ok((raw.location, example))),
                Err(e) => {
                    if let Err(e) = self.skip_or_fail(e) {
                        return Some(Err(e));
                    }
                }
            }
        }
    }
}
