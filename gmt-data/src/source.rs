//! Raw JSON records from files: JSONL, plain-text lines and JSON arrays, each plain, gzip or
//! zstd compressed, and Parquet (Hugging Face datasets' own format; rows become JSON
//! objects); one file, a directory of shards or a glob pattern of shards; read lazily one
//! record at a time.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use parquet::file::reader::SerializedFileReader;
use parquet::record::reader::RowIter;
use serde_json::Value;

use crate::{DataError, RecordLocation};

/// The files of a dataset, in a fixed (sorted) order.
#[derive(Clone, Debug, PartialEq)]
pub struct DataSource {
    files: Vec<PathBuf>,
}

impl DataSource {
    /// A file; a directory whose data files are its shards; or a glob pattern over file
    /// names (`data/train-*.jsonl.gz`; wildcards in the last component only).
    ///
    /// Data files are `.jsonl` (one JSON record per line), `.json` (an array of records) and
    /// `.txt` (one plain-text record `{"text": line}` per non-empty line), each optionally
    /// compressed as `.gz` or `.zst`; and `.parquet` (one record per row, columns as fields,
    /// lists and structs as JSON arrays and objects; compressed inside with snappy, zstd,
    /// lz4 or gzip). Shards are read in sorted name order.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, DataError> {
        let path = path.as_ref();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.contains(['*', '?', '[']) {
            return Self::open_glob(path, name);
        }
        let meta = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
        if !meta.is_dir() {
            return Ok(Self {
                files: vec![path.to_path_buf()],
            });
        }
        Self::collect(
            path,
            is_data_file,
            "no data files (.jsonl, .json, .txt, optionally .gz or .zst; .parquet) in this directory",
        )
    }

    fn open_glob(pattern: &Path, name: &str) -> Result<Self, DataError> {
        let dir = match pattern.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let matcher = globset::Glob::new(name)
            .map_err(|e| DataError::InvalidConfig {
                key: "data",
                reason: format!("invalid glob pattern {}: {e}", pattern.display()),
            })?
            .compile_matcher();
        Self::collect(
            dir,
            |n| matcher.is_match(n),
            &format!("no file matches {name}"),
        )
    }

    fn collect(dir: &Path, keep: impl Fn(&str) -> bool, none: &str) -> Result<Self, DataError> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
            let file = entry.map_err(|e| DataError::io(dir, e))?.path();
            let name = file
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if file.is_file() && keep(name) {
                files.push(file);
            }
        }
        files.sort();
        if files.is_empty() {
            return Err(DataError::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, none.to_string()),
            ));
        }
        Ok(Self { files })
    }

    /// The shard files.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Records from `position` on.
    pub fn records(&self, position: SourcePosition) -> Result<RecordIter, DataError> {
        let mut iter = RecordIter {
            files: self.files.clone(),
            file: position.file,
            reader: None,
            line: 0,
        };
        iter.skip_to(position)?;
        Ok(iter)
    }
}

/// A place in a [`DataSource`]: the file index and the number of lines already consumed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourcePosition {
    /// Index into [`DataSource::files`].
    pub file: usize,
    /// Lines (array elements, Parquet rows) of that file already read.
    pub line: u64,
}

/// One record as read, before any interpretation.
#[derive(Clone, Debug, PartialEq)]
pub struct RawRecord {
    /// Where it came from.
    pub location: RecordLocation,
    /// The JSON value, or why the line is not JSON.
    pub value: Result<Value, String>,
    /// The position just after this record.
    pub next: SourcePosition,
}

/// Whether a file name is a data file a directory source picks up.
fn is_data_file(name: &str) -> bool {
    if name.ends_with(".parquet") {
        return true;
    }
    let base = name
        .strip_suffix(".gz")
        .or_else(|| name.strip_suffix(".zst"))
        .unwrap_or(name);
    [".jsonl", ".json", ".txt"]
        .iter()
        .any(|ext| base.ends_with(ext))
}

enum Lines {
    Jsonl(Box<dyn BufRead + Send>),
    /// Plain text: each non-empty line is the record `{"text": line}`.
    Text(Box<dyn BufRead + Send>),
    /// JSON arrays are parsed whole; their elements are then handed out one by one.
    Array(std::vec::IntoIter<Value>),
    /// Parquet rows, decoded one row group at a time.
    Parquet(RowIter<'static>),
}

/// Iterator over [`RawRecord`]s; blank lines are skipped (but counted).
pub struct RecordIter {
    files: Vec<PathBuf>,
    file: usize,
    reader: Option<Lines>,
    line: u64,
}

impl RecordIter {
    fn open(&self) -> Result<Lines, DataError> {
        let path = &self.files[self.file];
        let file = File::open(path).map_err(|e| DataError::io(path, e))?;
        let full = path.to_string_lossy();
        if full.ends_with(".parquet") {
            let reader = SerializedFileReader::new(file).map_err(|e| DataError::Parquet {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            return Ok(Lines::Parquet(RowIter::from_file_into(Box::new(reader))));
        }
        let (name, reader): (&str, Box<dyn Read + Send>) = if let Some(n) = full.strip_suffix(".gz")
        {
            (n, Box::new(flate2::read::MultiGzDecoder::new(file)))
        } else if let Some(n) = full.strip_suffix(".zst") {
            let decoder =
                zstd::stream::read::Decoder::new(file).map_err(|e| DataError::io(path, e))?;
            (n, Box::new(decoder))
        } else {
            (&full, Box::new(file))
        };
        if name.ends_with(".txt") {
            return Ok(Lines::Text(Box::new(BufReader::with_capacity(
                1 << 16,
                reader,
            ))));
        }
        if name.ends_with(".json") {
            let values: Value = serde_json::from_reader(BufReader::new(reader)).map_err(|e| {
                DataError::BadRecord {
                    location: RecordLocation {
                        file: path.clone(),
                        line: e.line() as u64,
                    },
                    field: None,
                    reason: format!("invalid JSON: {e}"),
                }
            })?;
            match values {
                Value::Array(items) => Ok(Lines::Array(items.into_iter())),
                _ => Err(DataError::BadRecord {
                    location: RecordLocation { file: path.clone(), line: 1 },
                    field: None,
                    reason: "a .json dataset must be an array of records (use .jsonl for one record per line)".into(),
                }),
            }
        } else {
            Ok(Lines::Jsonl(Box::new(BufReader::with_capacity(
                1 << 16,
                reader,
            ))))
        }
    }

    fn skip_to(&mut self, position: SourcePosition) -> Result<(), DataError> {
        if position.file > self.files.len()
            || (position.file == self.files.len() && position.line > 0)
        {
            return Err(DataError::Resume(format!(
                "position is in file {} but the dataset has {} files",
                position.file,
                self.files.len()
            )));
        }
        if position.file == self.files.len() {
            return Ok(());
        }
        let mut reader = self.open()?;
        let mut buf = Vec::new();
        for _ in 0..position.line {
            let more = match &mut reader {
                Lines::Jsonl(r) | Lines::Text(r) => {
                    buf.clear();
                    r.read_until(b'\n', &mut buf)
                        .map_err(|e| DataError::io(&self.files[self.file], e))?
                        > 0
                }
                Lines::Array(items) => items.next().is_some(),
                Lines::Parquet(rows) => match rows.next() {
                    Some(Err(e)) => return Err(parquet_error(&self.files[self.file], e)),
                    row => row.is_some(),
                },
            };
            if !more {
                return Err(DataError::Resume(format!(
                    "{} has fewer than {} records",
                    self.files[self.file].display(),
                    position.line
                )));
            }
        }
        self.reader = Some(reader);
        self.line = position.line;
        Ok(())
    }
}

impl Iterator for RecordIter {
    type Item = Result<RawRecord, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut buf = Vec::new();
        loop {
            if self.file >= self.files.len() {
                return None;
            }
            if self.reader.is_none() {
                match self.open() {
                    Ok(r) => self.reader = Some(r),
                    Err(e) => {
                        self.file = self.files.len();
                        return Some(Err(e));
                    }
                }
            }
            let path = self.files[self.file].clone();
            let mut text_line = false;
            let item = match self.reader.as_mut().expect("opened above") {
                Lines::Array(items) => items.next().map(Ok),
                Lines::Parquet(rows) => match rows.next() {
                    // A row that cannot be decoded means a damaged file, not a bad record:
                    // nothing after it can be trusted, so this stops the stream.
                    Some(Err(e)) => {
                        self.file = self.files.len();
                        return Some(Err(parquet_error(&path, e)));
                    }
                    Some(Ok(row)) => Some(Ok(row.to_json_value())),
                    None => None,
                },
                Lines::Jsonl(reader) | Lines::Text(reader) => {
                    buf.clear();
                    match reader.read_until(b'\n', &mut buf) {
                        Err(e) => return Some(Err(DataError::io(&path, e))),
                        Ok(0) => None,
                        Ok(_) => Some(Err(())),
                    }
                }
            };
            if let Some(Lines::Text(_)) = &self.reader {
                text_line = true;
            }
            match item {
                None => {
                    self.file += 1;
                    self.line = 0;
                    self.reader = None;
                }
                Some(parsed) => {
                    self.line += 1;
                    let location = RecordLocation {
                        file: path,
                        line: self.line,
                    };
                    let next = SourcePosition {
                        file: self.file,
                        line: self.line,
                    };
                    let value = match parsed {
                        Ok(value) => Ok(value),
                        Err(()) => {
                            let text = match std::str::from_utf8(&buf) {
                                // A byte-order mark (as some Windows editors write) is not
                                // part of the record; `trim` also takes CRLF's `\r`.
                                Ok(text) => text.trim_start_matches('\u{feff}').trim(),
                                Err(e) => {
                                    let reason = format!(
                                        "invalid UTF-8 at byte {} of the line",
                                        e.valid_up_to()
                                    );
                                    return Some(Ok(RawRecord {
                                        location,
                                        value: Err(reason),
                                        next,
                                    }));
                                }
                            };
                            if text.is_empty() {
                                continue;
                            }
                            if text_line {
                                let line = std::str::from_utf8(&buf)
                                    .unwrap_or_default()
                                    .trim_start_matches('\u{feff}');
                                Ok(
                                    serde_json::json!({ "text": line.trim_end_matches(['\n', '\r']) }),
                                )
                            } else {
                                serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))
                            }
                        }
                    };
                    return Some(Ok(RawRecord {
                        location,
                        value,
                        next,
                    }));
                }
            }
        }
    }
}

fn parquet_error(path: &Path, e: parquet::errors::ParquetError) -> DataError {
    DataError::Parquet {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}
