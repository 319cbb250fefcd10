//! Streaming a large generated file keeps memory bounded: the stream holds its shuffle
//! buffer, not the file. (Alone in its own test binary, so the process's peak is its own.)

use std::io::Write;
use std::path::PathBuf;

use gmt_data::{ChatTemplate, DataSource, DataStream, Encoder, StreamConfig};
use tokenizers::Tokenizer;

fn rss_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn two_hundred_thousand_records_stream_in_bounded_memory() {
    let shared =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/smollm2-tokenizer");
    let tokenizer = Tokenizer::from_file(shared.join("tokenizer.json")).unwrap();
    let template = ChatTemplate::from_hf_dir(&shared).unwrap().unwrap();
    let encoder = Encoder::new(tokenizer, template, false);

    let path = std::env::temp_dir().join(format!("gmt-data-big-{}.jsonl", std::process::id()));
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        // Most of each record's bytes are in a field the format does not use: every byte is
        // still read and parsed, but tokenizing it all would be this test's whole run time
        // (a minute in CI's debug build) without telling more about memory.
        let filler = "lorem ipsum dolor sit amet ".repeat(12);
        for i in 0..200_000 {
            writeln!(
                f,
                r#"{{"prompt": "Question {i}: lorem ipsum", "completion": "Answer {i}.", "source": "{filler}"}}"#
            )
            .unwrap();
        }
    }
    let file_mib = std::fs::metadata(&path).unwrap().len() as f64 / (1 << 20) as f64;
    let before = rss_kib("VmRSS:");
    let config = StreamConfig {
        shuffle_buffer: 1024,
        ..StreamConfig::default()
    };
    let stream = DataStream::new(DataSource::open(&path).unwrap(), &encoder, config).unwrap();
    let (mut examples, mut tokens) = (0usize, 0usize);
    for example in stream {
        let example = example.unwrap();
        examples += 1;
        tokens += example.ids.len();
    }
    let grown_mib = (rss_kib("VmHWM:").saturating_sub(before)) as f64 / 1024.0;
    std::fs::remove_file(&path).ok();
    eprintln!(
        "{examples} examples, {tokens} tokens from {file_mib:.0} MiB; peak RSS grew {grown_mib:.1} MiB"
    );
    assert_eq!(examples, 200_000);
    assert!(
        file_mib > 60.0,
        "the file must be larger than the bound to prove anything"
    );
    assert!(
        grown_mib < 40.0,
        "streaming grew RSS by {grown_mib:.1} MiB for a {file_mib:.0} MiB file"
    );
}
