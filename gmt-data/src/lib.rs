//! # gmt-data: instruction and preference datasets → token batches
//!
//! Streams JSONL, JSON-array and plain-text datasets (plain, gzip or zstd) and Parquet —
//! one file, a directory of shards or a glob — through a record format (Alpaca, chat
//! messages, ShareGPT, prompt/completion, plain text or a field mapping), renders
//! conversations with the model's own chat template (Jinja, Hugging Face semantics, via
//! `minijinja`), tokenizes with a Hugging Face `tokenizers::Tokenizer`, puts the loss on
//! assistant turns only, and batches with padding or packing, optionally grouped by length.
//! Preference pairs (for DPO) stream the same way: a pair is encoded as its prompt and two
//! responses, and batched as chosen rows then rejected rows.
//! A seeded shuffle buffer makes the order deterministic, and the stream position can be
//! saved and restored exactly. Every bad record is an error naming file, line (or Parquet
//! row) and field — or, with `skip_bad_records`, is skipped and counted; nothing is dropped
//! silently.
//!
//! ## Map
//! - [`DataSource`], [`SourcePosition`], [`RawRecord`] — `source.rs`
//! - [`RecordFormat`], [`FieldMapping`], [`Example`], [`Message`] — `format.rs`
//! - [`PreferencePair`]: preference layouts (TRL, UltraFeedback, Anthropic-HH) — `preference.rs`
//! - [`ChatTemplate`], [`BUILTIN_TEMPLATES`] — `template.rs`
//! - [`ExampleReader`], [`ReaderConfig`]: records → examples in file order (detection,
//!   split, bad records) — `examples.rs`
//! - [`Encoder`], [`Encoded`]: rendering, tokenization, response-only labels — `encode.rs`
//! - [`BatchConfig`], [`Batches`], [`Truncation`]: padding and packing into `TokenBatch` — `batcher.rs`
//! - [`DataStream`], [`StreamConfig`], [`StreamState`], [`Split`], [`DataReport`] — `stream.rs`
//! - [`DataError`], [`RecordLocation`] — `error.rs`

#![warn(missing_docs)]

mod batcher;
mod encode;
mod error;
mod examples;
mod format;
mod preference;
mod source;
mod stream;
mod template;

pub use batcher::{BatchConfig, Batches, FitReport, MAX_SEQ_LEN, Truncation};
pub use encode::{Encoded, Encoder, IGNORE};
pub use error::{DataError, RecordLocation};
pub use examples::{ExampleReader, ReaderConfig};
pub use format::{Example, FieldError, FieldMapping, Message, RecordFormat};
pub use preference::PreferencePair;
pub use source::{
    DataSource, MAX_JSON_FILE_BYTES, MAX_LINE_BYTES, RawRecord, RecordIter, SourcePosition,
};
pub use stream::{DataReport, DataStream, Split, StreamConfig, StreamState};
pub use template::{BUILTIN_TEMPLATES, ChatTemplate};
