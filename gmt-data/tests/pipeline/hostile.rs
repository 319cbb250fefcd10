//! Input that is not what it claims to be: arbitrary and damaged bytes in every file format
//! give records or errors, never a panic or an unbounded allocation; examples that
//! truncation leaves with nothing to learn from are left out and counted.

use std::io::Write;

use gmt_data::{
    BatchConfig, Batches, DataError, DataSource, DataStream, Encoded, IGNORE, MAX_LINE_BYTES,
    StreamConfig, Truncation,
};
use proptest::prelude::*;
use serde_json::json;

use super::{column, encoder, ordered, temp, write_jsonl, write_parquet};

/// Valid files of every record layout, as the bytes a mutation starts from.
fn valid_records() -> Vec<String> {
    let records = [
        json!({"instruction": "Add.", "input": "2 3", "output": "5"}),
        json!({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}),
        json!({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hey"}]}),
        json!({"prompt": "2+2?", "completion": "4"}),
        json!({"prompt": "2+2?", "chosen": "4", "rejected": "5"}),
        json!({"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go"}),
        json!({"text": "plain words"}),
    ];
    records.iter().map(|r| format!("{r}\n{r}\n")).collect()
}

/// Reads `path` to its end through the whole pipeline (records, formats, template,
/// tokenizer, batching): every item is a batch or an error; the stream ends.
fn read_all(path: &std::path::Path) {
    static ENCODER: std::sync::OnceLock<gmt_data::Encoder> = std::sync::OnceLock::new();
    let enc = ENCODER.get_or_init(|| encoder(false));
    let config = StreamConfig {
        skip_bad_records: true,
        ..ordered()
    };
    let Ok(source) = DataSource::open(path) else {
        return;
    };
    let Ok(stream) = DataStream::new(source, enc, config) else {
        return;
    };
    let Ok(batches) = Batches::new(stream, batching(2, 64)) else {
        return;
    };
    // Every error ends a stream or is followed by more records; none repeats forever.
    assert!(batches.take(10_000).count() < 10_000, "the stream ends");
}

/// Padded batches of `batch_size` rows of at most `max_seq_len` tokens, truncating.
fn batching(batch_size: usize, max_seq_len: usize) -> BatchConfig {
    BatchConfig {
        batch_size,
        max_seq_len,
        truncation: Truncation::Truncate,
        packing: false,
        pad_id: 0,
        group_by_length: 0,
        max_prompt_len: None,
    }
}

fn write_as(name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = temp(name);
    let mut file = std::fs::File::create(&path).unwrap();
    if name.ends_with(".gz") {
        let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        gz.write_all(bytes).unwrap();
        gz.finish().unwrap();
    } else if name.ends_with(".zst") {
        file.write_all(&zstd::encode_all(bytes, 1).unwrap())
            .unwrap();
    } else {
        file.write_all(bytes).unwrap();
    }
    path
}

const NAMES: [&str; 6] = [
    "fuzz.jsonl",
    "fuzz.json",
    "fuzz.txt",
    "fuzz.jsonl.gz",
    "fuzz.jsonl.zst",
    "fuzz.parquet",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Arbitrary bytes under every data file name.
    #[test]
    fn arbitrary_bytes_are_records_or_errors(
        bytes in proptest::collection::vec(any::<u8>(), 0..1024),
        name in 0..NAMES.len(),
    ) {
        read_all(&write_as(NAMES[name], &bytes));
    }

    /// Valid files of every layout with a few bytes changed: the damage a disk, a transfer
    /// or an editor does.
    #[test]
    fn damaged_records_are_records_or_errors(
        which in 0..7usize,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        name in 0..5usize,
    ) {
        let mut bytes = valid_records()[which].clone().into_bytes();
        if NAMES[name].ends_with(".json") {
            bytes = format!("[{}]", String::from_utf8(bytes).unwrap().trim().replace('\n', ",")).into_bytes();
        }
        for (at, byte) in edits {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        read_all(&write_as(NAMES[name], &bytes));
    }
}

/// A real Parquet file with bytes flipped (page headers, footer, data) is an error, never a
/// panic inside the Parquet reader.
#[test]
fn damaged_parquet_files_are_errors() {
    let path = temp("intact.parquet");
    write_parquet(
        &path,
        "message schema { REQUIRED BYTE_ARRAY text (UTF8); }",
        parquet::basic::Compression::SNAPPY,
        vec![vec![column(
            &["one row", "another row", "a third"],
            None,
            None,
        )]],
    );
    let intact = std::fs::read(&path).unwrap();
    for i in 0..intact.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut bytes = intact.clone();
            bytes[i] ^= flip;
            read_all(&write_as("damaged.parquet", &bytes));
        }
    }
}

/// A file with no line break (`/dev/zero`, a binary) stops at the line limit with an error
/// naming the file and line, instead of growing one line until memory runs out.
#[cfg(unix)]
#[test]
fn an_endless_line_is_an_error_at_the_limit() {
    let source = DataSource::open("/dev/zero").unwrap();
    let mut records = source.records(Default::default()).unwrap();
    match records.next() {
        Some(Err(DataError::TooLarge {
            location, limit, ..
        })) => {
            assert_eq!(limit, MAX_LINE_BYTES);
            assert_eq!(location.to_string(), "/dev/zero:1");
        }
        other => panic!("expected a too-large error, got {other:?}"),
    }
    assert!(records.next().is_none(), "nothing is read after it");
}

/// An example whose response truncation cuts off entirely has no token to learn from: it is
/// left out and counted (`no_target`), never batched into a step with nothing to learn.
#[test]
fn truncation_that_leaves_nothing_to_learn_is_counted_not_batched() {
    let long_prompt = "word ".repeat(80);
    let path = write_jsonl(
        "no-target.jsonl",
        &[
            json!({"prompt": long_prompt, "completion": "the answer"}),
            json!({"prompt": "short?", "completion": "yes"}),
        ],
    );
    let enc = encoder(false);
    let stream = DataStream::new(DataSource::open(&path).unwrap(), &enc, ordered()).unwrap();
    let mut batches = Batches::new(stream, batching(4, 64)).unwrap();
    let all: Vec<_> = batches.by_ref().collect::<Result<_, _>>().unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].batch, 1, "only the short example is batched");
    let report = batches.report();
    assert_eq!((report.no_target, report.truncated), (1, 0), "{report:?}");

    // What counts as a target: a label after the first position; a pair needs one in both.
    let single = |labels: Vec<i64>| Encoded::new(vec![1; labels.len()], labels);
    assert!(!single(vec![5, IGNORE, IGNORE]).has_target());
    assert!(single(vec![IGNORE, 5]).has_target());
    let pair = |rejected: Vec<u32>| Encoded {
        rejected: Some(rejected),
        ..single(vec![IGNORE, 5])
    };
    assert!(pair(vec![7]).has_target());
    assert!(!pair(vec![]).has_target());
}
