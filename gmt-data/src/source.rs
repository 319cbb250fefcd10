//! Raw JSON records from files: JSONL, plain-text lines and JSON arrays, each plain, gzip or
//! zstd compressed, and Parquet (Hugging Face datasets' own format; rows become JSON
//! objects); one file, a directory of shards or a glob pattern of shards; read lazily one
//! record at a time.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::reader::RowIter;
use serde_json::Value;

use crate::{DataError, RecordLocation};

/// The longest line (one JSONL record or text line) read, in bytes. Real records are far
/// shorter; without a bound, a file with no line breaks (`/dev/zero`) exhausts memory.
pub const MAX_LINE_BYTES: u64 = 64 << 20;
/// The largest `.json` array file read whole, in bytes (after decompression): larger
/// datasets belong in `.jsonl`, which is streamed.
pub const MAX_JSON_FILE_BYTES: u64 = 1 << 30;

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
            return open_parquet(path, file).map(Lines::Parquet);
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
            let mut text = Vec::new();
            reader
                .take(MAX_JSON_FILE_BYTES + 1)
                .read_to_end(&mut text)
                .map_err(|e| DataError::io(path, e))?;
            if text.len() as u64 > MAX_JSON_FILE_BYTES {
                return Err(DataError::TooLarge {
                    location: RecordLocation {
                        file: path.clone(),
                        line: 1,
                    },
                    what: "the JSON array (use .jsonl for large datasets)",
                    limit: MAX_JSON_FILE_BYTES,
                });
            }
            let values: Value =
                serde_json::from_slice(&text).map_err(|e| DataError::BadRecord {
                    location: RecordLocation {
                        file: path.clone(),
                        line: e.line() as u64,
                    },
                    field: None,
                    reason: format!("invalid JSON: {e}"),
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
        for line in 0..position.line {
            let more = match &mut reader {
                Lines::Jsonl(r) | Lines::Text(r) => {
                    read_line(r, &mut buf, &self.files[self.file], line + 1)? > 0
                }
                Lines::Array(items) => items.next().is_some(),
                Lines::Parquet(rows) => match next_row(rows, &self.files[self.file]) {
                    Some(Err(e)) => return Err(e),
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
                Lines::Parquet(rows) => match next_row(rows, &path) {
                    // A row that cannot be decoded means a damaged file, not a bad record:
                    // nothing after it can be trusted, so this stops the stream.
                    Some(Err(e)) => {
                        self.file = self.files.len();
                        return Some(Err(e));
                    }
                    Some(Ok(row)) => Some(Ok(row)),
                    None => None,
                },
                Lines::Jsonl(reader) | Lines::Text(reader) => {
                    match read_line(reader, &mut buf, &path, self.line + 1) {
                        // Nothing after an unreadable or endless line can be trusted.
                        Err(e) => {
                            self.file = self.files.len();
                            return Some(Err(e));
                        }
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

/// Reads one line (with its `\n`) into `buf`, at most [`MAX_LINE_BYTES`]; returns the bytes
/// read (0 at the end of the file).
fn read_line(
    reader: &mut Box<dyn BufRead + Send>,
    buf: &mut Vec<u8>,
    path: &Path,
    line: u64,
) -> Result<usize, DataError> {
    buf.clear();
    let n = reader
        .take(MAX_LINE_BYTES + 1)
        .read_until(b'\n', buf)
        .map_err(|e| DataError::io(path, e))?;
    if n as u64 > MAX_LINE_BYTES {
        return Err(DataError::TooLarge {
            location: RecordLocation {
                file: path.to_path_buf(),
                line,
            },
            what: "a line",
            limit: MAX_LINE_BYTES,
        });
    }
    Ok(n)
}

/// Opens a Parquet file, checking what its footer claims before the reader relies on it: the
/// parquet crate panics (by design) on a column chunk with a negative offset or size, which a
/// damaged footer produces.
fn open_parquet(path: &Path, file: File) -> Result<RowIter<'static>, DataError> {
    let damaged = |reason: String| DataError::Parquet {
        path: path.to_path_buf(),
        reason,
    };
    let len = file.metadata().map_err(|e| DataError::io(path, e))?.len();
    let reader = SerializedFileReader::new(file).map_err(|e| parquet_error(path, e))?;
    for (g, group) in reader.metadata().row_groups().iter().enumerate() {
        for column in group.columns() {
            let start = column
                .dictionary_page_offset()
                .unwrap_or(column.data_page_offset());
            let size = column.compressed_size();
            if start < 0 || size < 0 || (start as u64).saturating_add(size as u64) > len {
                return Err(damaged(format!(
                    "row group {g}: column chunk {} lies outside the file (damaged footer)",
                    column.column_path()
                )));
            }
        }
    }
    Ok(RowIter::from_file_into(Box::new(reader)))
}

/// The next Parquet row as a JSON value. The parquet crate still panics on some damaged pages
/// (unchecked lengths inside its decoders); such a panic is caught and becomes the error of
/// the damaged file it is, instead of taking the process down.
fn next_row(rows: &mut RowIter<'static>, path: &Path) -> Option<Result<Value, DataError>> {
    let next = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rows.next()));
    match next {
        Ok(None) => None,
        Ok(Some(Ok(row))) => Some(Ok(row.to_json_value())),
        Ok(Some(Err(e))) => Some(Err(parquet_error(path, e))),
        Err(_) => Some(Err(parquet_error(
            path,
            parquet::errors::ParquetError::General("its decoder failed on a damaged page".into()),
        ))),
    }
}

fn parquet_error(path: &Path, e: parquet::errors::ParquetError) -> DataError {
    DataError::Parquet {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}
