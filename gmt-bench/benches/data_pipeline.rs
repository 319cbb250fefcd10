//! The whole data pipeline on GSM8K (train, 7,473 records): read JSONL, map fields, render
//! the SmolLM2 chat template, tokenize, label, shuffle and batch (8 × 512, padded).
//! Throughput is reported in tokens; run with RAYON_NUM_THREADS=1 for the one-core figure.

use std::path::PathBuf;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gmt_data::{
    BatchConfig, Batches, ChatTemplate, DataSource, DataStream, Encoder, FieldMapping,
    RecordFormat, StreamConfig, Truncation,
};
use tokenizers::Tokenizer;

fn pipeline(c: &mut Criterion) {
    let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared");
    let tok_dir = shared.join("fixtures/smollm2-tokenizer");
    let tokenizer = Tokenizer::from_file(tok_dir.join("tokenizer.json")).unwrap();
    let template = ChatTemplate::from_hf_dir(&tok_dir).unwrap().unwrap();
    let encoder = Encoder::new(tokenizer, template, false);
    let data = shared.join("data/gsm8k/train.jsonl");
    let config = StreamConfig {
        format: Some(RecordFormat::Fields(FieldMapping {
            system: None,
            user: "question".into(),
            assistant: "answer".into(),
        })),
        seed: 1,
        ..StreamConfig::default()
    };
    let batch = BatchConfig {
        batch_size: 8,
        max_seq_len: 512,
        truncation: Truncation::Truncate,
        packing: false,
        pad_id: 2,
        group_by_length: 0,
        max_prompt_len: None,
    };
    let run = || {
        let stream =
            DataStream::new(DataSource::open(&data).unwrap(), &encoder, config.clone()).unwrap();
        Batches::new(stream, batch.clone())
            .unwrap()
            .map(|b| {
                b.unwrap()
                    .attention_mask
                    .unwrap()
                    .iter()
                    .filter(|m| **m)
                    .count()
            })
            .sum::<usize>()
    };
    let tokens = run();
    let mut group = c.benchmark_group("data_pipeline_gsm8k_train");
    group
        .sample_size(10)
        .throughput(Throughput::Elements(tokens as u64));
    group.bench_function("tokens", |b| b.iter(run));
    group.finish();
    eprintln!("GSM8K train: {tokens} real tokens per pass (7,473 examples)");
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
