//! gmt-data end to end on small files the tests write, on the SmolLM2 tokenizer fixture and
//! on GSM8K.

use std::io::Write;
use std::path::{Path, PathBuf};

use gmt_data::{
    BatchConfig, Batches, ChatTemplate, DataError, DataSource, DataStream, Encoded, Encoder,
    Example, FieldMapping, IGNORE, Message, RecordFormat, Split, StreamConfig, Truncation,
};
use serde_json::{Value, json};
use tokenizers::Tokenizer;

#[path = "pipeline/preference.rs"]
mod preference;

#[path = "pipeline/hostile.rs"]
mod hostile;

fn shared(rel: &str) -> PathBuf {
    gmt_tests::shared(rel)
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_file(shared("fixtures/smollm2-tokenizer/tokenizer.json")).unwrap()
}

fn encoder(train_on_prompt: bool) -> Encoder {
    let template = ChatTemplate::from_hf_dir(&shared("fixtures/smollm2-tokenizer"))
        .unwrap()
        .unwrap();
    Encoder::new(tokenizer(), template, train_on_prompt)
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gmt-data-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn write_jsonl(name: &str, records: &[Value]) -> PathBuf {
    let path = temp(name);
    let mut f = std::fs::File::create(&path).unwrap();
    for r in records {
        writeln!(f, "{r}").unwrap();
    }
    path
}

fn collect(path: &Path, config: StreamConfig) -> Result<Vec<Encoded>, DataError> {
    let enc = encoder(false);
    let stream = DataStream::new(DataSource::open(path)?, &enc, config)?;
    stream.collect()
}

fn ordered() -> StreamConfig {
    StreamConfig {
        shuffle_buffer: 1,
        ..StreamConfig::default()
    }
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn tokenizer_and_template_reproduce_transformers() {
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(shared("fixtures/smollm2-tokenizer/encodings.json")).unwrap(),
    )
    .unwrap();
    let tok = tokenizer();
    for case in reference["texts"].as_array().unwrap() {
        let got = tok.encode(case["text"].as_str().unwrap(), false).unwrap();
        assert_eq!(got.get_ids(), ids(&case["ids"]).as_slice());
    }
    let enc = encoder(false);
    for chat in reference["chats"].as_array().unwrap() {
        let messages: Vec<Message> = serde_json::from_value(chat["messages"].clone()).unwrap();
        let rendered = enc
            .template()
            .render(&messages, chat["add_generation_prompt"].as_bool().unwrap())
            .unwrap();
        assert_eq!(rendered, chat["rendered"].as_str().unwrap());
        assert_eq!(
            tok.encode(rendered.as_str(), false).unwrap().get_ids(),
            ids(&chat["ids"]).as_slice()
        );
    }
}

#[test]
fn labels_cover_every_assistant_turn_and_pieces_rebuild_the_rendering() {
    let enc = encoder(false);
    let messages = vec![
        Message::new("system", "You are terse."),
        Message::new("user", "Name a prime."),
        Message::new("assistant", "7"),
        Message::new("user", "Another."),
        Message::new("assistant", "11"),
    ];
    let encoded = enc.encode(&Example::Chat(messages.clone())).unwrap();
    let (full, _) = enc.render_with_spans(&messages).unwrap();
    let tok = enc.tokenizer();
    let encoding = tok.encode(full.as_str(), false).unwrap();
    assert_eq!(encoding.get_ids(), encoded.ids.as_slice());
    let (mut trained, mut all) = (String::new(), String::new());
    for (i, &(a, b)) in encoding.get_offsets().iter().enumerate() {
        all.push_str(&full[a..b]);
        if encoded.labels[i] != IGNORE {
            assert_eq!(encoded.labels[i], encoded.ids[i] as i64);
            trained.push_str(&full[a..b]);
        }
    }
    assert_eq!(
        all, full,
        "masked and unmasked pieces put together are the full rendering"
    );
    assert_eq!(
        trained, "7<|im_end|>\n11<|im_end|>\n",
        "both assistant turns, end-of-turn included"
    );

    let everything = encoder(true).encode(&Example::Chat(messages)).unwrap();
    assert!(everything.labels.iter().all(|&l| l != IGNORE));
}

#[test]
fn every_format_is_read_and_detected() {
    let cases = [
        (
            "alpaca",
            json!({"instruction": "Add.", "input": "2 and 3", "output": "5"}),
            "Add.\n\n2 and 3",
            "5",
        ),
        (
            "messages",
            json!({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}),
            "Hi",
            "Hello",
        ),
        (
            "sharegpt",
            json!({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]}),
            "Hi",
            "Yo",
        ),
        (
            "prompt_completion",
            json!({"prompt": "1+1=", "completion": "2"}),
            "1+1=",
            "2",
        ),
    ];
    for (name, record, user, assistant) in cases {
        let format = RecordFormat::detect(&record).unwrap();
        assert_eq!(format.name(), name);
        let Example::Chat(messages) = format.parse(&record).unwrap() else {
            panic!("{name}: chat")
        };
        let last = messages.len() - 1;
        assert_eq!(
            (
                messages[last - 1].content.as_str(),
                messages[last].content.as_str()
            ),
            (user, assistant),
            "{name}"
        );

        let path = write_jsonl(&format!("{name}.jsonl"), &[record.clone(), record]);
        let enc = encoder(false);
        let mut stream =
            DataStream::new(DataSource::open(&path).unwrap(), &enc, ordered()).unwrap();
        let first = stream.next().unwrap().unwrap();
        let trained = trained_ids(&first);
        assert_eq!(
            enc.tokenizer().decode(&trained, false).unwrap(),
            format!("{assistant}<|im_end|>\n"),
            "{name}"
        );
        assert!(
            stream
                .report()
                .format
                .as_ref()
                .unwrap()
                .starts_with(&format!("{name} (detected from")),
            "{name}"
        );
    }
    // Plain text: loss on every token, only the tokenizer's own special tokens.
    let path = write_jsonl("text.jsonl", &[json!({"text": "Hello, world!"})]);
    let out = collect(&path, ordered()).unwrap();
    assert_eq!(out[0].ids, vec![19556, 28, 905, 17]);
    assert_eq!(out[0].labels, vec![19556, 28, 905, 17]);
}

/// The ids an example puts the loss on.
fn trained_ids(example: &Encoded) -> Vec<u32> {
    example
        .ids
        .iter()
        .zip(&example.labels)
        .filter(|(_, l)| **l != IGNORE)
        .map(|(i, _)| *i)
        .collect()
}

#[test]
fn gsm8k_through_a_field_mapping_trains_on_the_answer_only() {
    let mapping = RecordFormat::Fields(FieldMapping {
        system: None,
        user: "question".into(),
        assistant: "answer".into(),
    });
    let path = shared("data/gsm8k/test.jsonl");
    let enc = encoder(false);
    let config = StreamConfig {
        format: Some(mapping),
        ..ordered()
    };
    let mut stream = DataStream::new(DataSource::open(&path).unwrap(), &enc, config).unwrap();
    let first_record: Value = serde_json::from_str(
        std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let first = stream.next().unwrap().unwrap();
    let trained = trained_ids(&first);
    let answer = first_record["answer"].as_str().unwrap();
    assert_eq!(
        enc.tokenizer().decode(&trained, false).unwrap(),
        format!("{answer}<|im_end|>\n")
    );
    let rest = stream.count();
    assert_eq!(rest + 1, 1319, "every GSM8K test record");
}

#[test]
fn bad_records_name_file_line_and_field() {
    let good = json!({"prompt": "a", "completion": "b"});
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            b"{\"prompt\": \"a\", \"completion\": \"b\"\n".to_vec(),
            ":2: invalid JSON",
        ),
        (
            json!({"prompt": "a"}).to_string().into_bytes(),
            ":2: field `completion`: missing",
        ),
        (
            json!({"prompt": "a", "completion": 3})
                .to_string()
                .into_bytes(),
            ":2: field `completion`: expected a string, found a number",
        ),
        (
            b"{\"prompt\": \"\xff\", \"completion\": \"b\"}".to_vec(),
            ":2: invalid UTF-8",
        ),
    ];
    for (i, (bad, expected)) in cases.into_iter().enumerate() {
        let path = temp(&format!("bad{i}.jsonl"));
        let mut bytes = format!("{good}\n").into_bytes();
        bytes.extend(bad);
        bytes.extend(format!("\n{good}\n").into_bytes());
        std::fs::write(&path, bytes).unwrap();
        let config = StreamConfig {
            format: Some(RecordFormat::PromptCompletion),
            ..ordered()
        };
        let err = collect(&path, config.clone()).unwrap_err().to_string();
        assert!(
            err.starts_with(&path.display().to_string()) && err.contains(expected),
            "{err} / {expected}"
        );

        let skipping = StreamConfig {
            skip_bad_records: true,
            ..config
        };
        let enc = encoder(false);
        let mut stream = DataStream::new(DataSource::open(&path).unwrap(), &enc, skipping).unwrap();
        assert_eq!(stream.by_ref().count(), 2);
        assert_eq!(stream.report().skipped, 1);
        assert!(stream.report().skipped_errors[0].contains(expected));
    }
    let path = write_jsonl("empty.jsonl", &[json!({"messages": []})]);
    let err = collect(&path, ordered()).unwrap_err().to_string();
    assert!(
        err.ends_with(":1: field `messages`: empty conversation"),
        "{err}"
    );
    let path = write_jsonl(
        "role.jsonl",
        &[json!({"messages": [{"role": "robot", "content": "x"}]})],
    );
    let err = collect(&path, ordered()).unwrap_err().to_string();
    assert!(
        err.contains("field `messages[0].role`: unknown role \"robot\""),
        "{err}"
    );

    // A template error is reported at the record that triggered it.
    let template = ChatTemplate::new("{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system prompts') }}{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}", "", "").unwrap();
    let enc = Encoder::new(tokenizer(), template, false);
    let path = write_jsonl(
        "tmpl.jsonl",
        &[json!({"instruction": "x", "output": "y", "system": "s"})],
    );
    let err = DataStream::new(DataSource::open(&path).unwrap(), &enc, ordered())
        .unwrap()
        .next()
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tmpl.jsonl:1") && err.contains("no system prompts"),
        "{err}"
    );
}

#[test]
fn a_byte_order_mark_and_crlf_line_ends_are_read() {
    let path = temp("bom-crlf.jsonl");
    let record = json!({"prompt": "a", "completion": "b"}).to_string();
    std::fs::write(&path, format!("\u{feff}{record}\r\n{record}\r\n")).unwrap();
    let examples = collect(&path, ordered()).unwrap();
    assert_eq!(examples.len(), 2);
    assert_eq!(examples[0], examples[1]);
}

#[test]
fn gzip_shards_and_json_arrays_stream_in_order() {
    let dir = temp("shards");
    std::fs::create_dir_all(&dir).unwrap();
    let gz = std::fs::File::create(dir.join("a.jsonl.gz")).unwrap();
    let mut enc = flate2::write::GzEncoder::new(gz, flate2::Compression::fast());
    writeln!(enc, "{}", json!({"text": "one"})).unwrap();
    enc.finish().unwrap();
    std::fs::write(
        dir.join("b.json"),
        json!([{"text": "two"}, {"text": "three"}]).to_string(),
    )
    .unwrap();
    let out = collect(&dir, ordered()).unwrap();
    let texts: Vec<String> = out
        .iter()
        .map(|e| tokenizer().decode(&e.ids, false).unwrap())
        .collect();
    assert_eq!(texts, ["one", "two", "three"]);
}

#[test]
fn zstd_text_lines_and_glob_patterns_are_sources() {
    let dir = temp("zst");
    std::fs::create_dir_all(&dir).unwrap();
    let zst = std::fs::File::create(dir.join("part-1.jsonl.zst")).unwrap();
    let mut enc = zstd::stream::write::Encoder::new(zst, 3).unwrap();
    writeln!(enc, "{}", json!({"text": "one"})).unwrap();
    enc.finish().unwrap();
    std::fs::write(dir.join("part-2.txt"), "two\n\nthree\n").unwrap();
    std::fs::write(
        dir.join("other.jsonl"),
        format!("{}\n", json!({"text": "never"})),
    )
    .unwrap();
    let texts = |path: &Path| -> Vec<String> {
        collect(path, ordered())
            .unwrap()
            .iter()
            .map(|e| tokenizer().decode(&e.ids, false).unwrap())
            .collect()
    };
    // The glob takes only the matching shards, in name order; blank text lines are skipped.
    assert_eq!(texts(&dir.join("part-*")), ["one", "two", "three"]);
    assert_eq!(texts(&dir).len(), 4, "a directory takes every data file");
    let err = DataSource::open(dir.join("nothing-*.jsonl")).unwrap_err();
    assert!(err.to_string().contains("nothing-*.jsonl"), "{err}");
}

#[test]
fn each_epoch_reads_everything_in_a_new_order() {
    let path = write_jsonl(
        "epochs.jsonl",
        &(0..12)
            .map(|i| json!({"text": format!("n{i}")}))
            .collect::<Vec<_>>(),
    );
    let enc = encoder(false);
    let config = StreamConfig {
        shuffle_buffer: 4,
        seed: 7,
        ..StreamConfig::default()
    };
    let mut stream =
        DataStream::new(DataSource::open(&path).unwrap(), &enc, config.clone()).unwrap();
    let first: Vec<Encoded> = stream.by_ref().map(Result::unwrap).collect();
    stream.next_epoch().unwrap();
    assert_eq!(stream.epoch(), 1);
    let state = stream.state();
    let second: Vec<Encoded> = stream.map(Result::unwrap).collect();
    assert_eq!(first.len(), 12);
    let sorted = |v: &[Encoded]| {
        let mut ids: Vec<Vec<u32>> = v.iter().map(|e| e.ids.clone()).collect();
        ids.sort();
        ids
    };
    assert_eq!(
        sorted(&first),
        sorted(&second),
        "every example once per epoch"
    );
    assert_ne!(first, second, "a new shuffle order");
    // Resuming inside the second epoch continues its order.
    let resumed =
        DataStream::resume(DataSource::open(&path).unwrap(), &enc, config, state).unwrap();
    assert_eq!(resumed.map(Result::unwrap).collect::<Vec<_>>(), second);
}

#[test]
fn a_resumed_stream_sees_exactly_what_the_uninterrupted_one_would() {
    let records: Vec<Value> = (0..300)
        .map(|i| json!({"prompt": format!("q{i}"), "completion": format!("a{i}")}))
        .collect();
    let path = write_jsonl("resume.jsonl", &records);
    let config = StreamConfig {
        seed: 9,
        shuffle_buffer: 37,
        split: Split::Train { eval_fraction: 0.1 },
        ..StreamConfig::default()
    };
    let enc = encoder(false);
    let whole: Vec<Encoded> =
        DataStream::new(DataSource::open(&path).unwrap(), &enc, config.clone())
            .unwrap()
            .map(Result::unwrap)
            .collect();

    let mut first =
        DataStream::new(DataSource::open(&path).unwrap(), &enc, config.clone()).unwrap();
    let mut seen: Vec<Encoded> = first.by_ref().take(100).map(Result::unwrap).collect();
    let saved = serde_json::to_string(&first.state()).unwrap();
    drop(first);
    let state = serde_json::from_str(&saved).unwrap();
    let resumed = DataStream::resume(
        DataSource::open(&path).unwrap(),
        &enc,
        config.clone(),
        state,
    )
    .unwrap();
    seen.extend(resumed.map(Result::unwrap));
    assert_eq!(seen, whole);

    // The eval split is the complement, and shuffling is seeded.
    let eval = StreamConfig {
        split: Split::Eval { eval_fraction: 0.1 },
        ..config.clone()
    };
    let held: Vec<Encoded> = DataStream::new(DataSource::open(&path).unwrap(), &enc, eval)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(held.len() + whole.len(), 300);
    assert!(
        held.len() > 10 && held.len() < 60,
        "about 10% held out: {}",
        held.len()
    );
    let reseeded: Vec<Encoded> = DataStream::new(
        DataSource::open(&path).unwrap(),
        &enc,
        StreamConfig { seed: 10, ..config },
    )
    .unwrap()
    .map(Result::unwrap)
    .collect();
    assert_ne!(reseeded, whole);
}

#[test]
fn batches_pad_pack_truncate_and_drop() {
    let example = |n: usize| Encoded::new((1..=n as u32).collect(), (1..=n as i64).collect());
    let examples = vec![example(3), example(5), example(9), example(2)];
    let config = BatchConfig {
        batch_size: 2,
        max_seq_len: 6,
        truncation: Truncation::Truncate,
        packing: false,
        pad_id: 0,
        group_by_length: 0,
        max_prompt_len: None,
    };
    let mut batches = Batches::new(examples.clone().into_iter().map(Ok), config.clone()).unwrap();
    let first = batches.next().unwrap().unwrap();
    assert_eq!((first.batch, first.seq_len), (2, 5));
    assert_eq!(first.input_ids, vec![1, 2, 3, 0, 0, 1, 2, 3, 4, 5]);
    assert_eq!(first.labels.as_ref().unwrap()[3..5], [IGNORE, IGNORE]);
    assert_eq!(
        first.attention_mask.as_ref().unwrap()[..5],
        [true, true, true, false, false]
    );
    let second = batches.next().unwrap().unwrap();
    assert_eq!(second.seq_len, 6, "9 tokens truncated to 6");
    assert!(batches.next().is_none());
    assert_eq!(batches.report().truncated, 1);

    let dropping = BatchConfig {
        truncation: Truncation::Drop,
        ..config.clone()
    };
    let mut batches = Batches::new(examples.clone().into_iter().map(Ok), dropping).unwrap();
    let rows: usize = batches.by_ref().map(|b| b.unwrap().batch).sum();
    assert_eq!((rows, batches.report().dropped), (3, 1));

    let packing = BatchConfig {
        packing: true,
        batch_size: 2,
        ..config
    };
    let mut batches = Batches::new(examples.into_iter().map(Ok), packing).unwrap();
    let packed = batches.next().unwrap().unwrap();
    assert_eq!((packed.batch, packed.seq_len), (2, 6));
    // Row 0: [3 tokens][pad ×3] (5 does not fit after 3); row 1: [5 tokens][pad].
    assert_eq!(
        packed.segment_ids.as_ref().unwrap()[..4],
        [0, 0, 0, u32::MAX]
    );
    assert_eq!(
        packed.position_ids.as_ref().unwrap()[6..11],
        [0, 1, 2, 3, 4]
    );
    let rest: Vec<_> = batches.map(Result::unwrap).collect();
    assert_eq!(rest.len(), 1);
    assert_eq!(
        rest[0].segment_ids.as_ref().unwrap()[..6],
        [0, 0, 0, 0, 0, 0],
        "truncated 9 → 6 fills a row"
    );
    assert_eq!(
        rest[0].segment_ids.as_ref().unwrap()[6..8],
        [0, 0],
        "the 2-token example starts the next row"
    );
}

#[test]
fn length_grouping_sorts_each_window_and_resumes_mid_window() {
    let example = |n: usize| Encoded::new(vec![7; n], vec![1; n]);
    let lengths = [3, 9, 12, 6, 4, 8, 2, 7, 5, 10, 11];
    let examples: Vec<Encoded> = lengths.iter().map(|&n| example(n)).collect();
    let config = BatchConfig {
        batch_size: 2,
        max_seq_len: 16,
        truncation: Truncation::Truncate,
        packing: false,
        pad_id: 0,
        group_by_length: 2,
        max_prompt_len: None,
    };
    let rows = |batch: &gmt_models::TokenBatch| -> Vec<usize> {
        let mask = batch.attention_mask.as_ref().unwrap();
        mask.chunks(batch.seq_len)
            .map(|row| row.iter().filter(|&&m| m).count())
            .collect()
    };
    let all: Vec<Vec<usize>> = Batches::new(examples.clone().into_iter().map(Ok), config.clone())
        .unwrap()
        .map(|b| rows(&b.unwrap()))
        .collect();
    // Windows of 2 batches × 2 rows: each sorted longest first; the last window is partial.
    assert_eq!(
        all,
        vec![
            vec![12, 9],
            vec![6, 3],
            vec![8, 7],
            vec![4, 2],
            vec![11, 10],
            vec![5],
        ]
    );

    // Stop after the first batch, save what the batcher holds, resume: same batches.
    let mut batches = Batches::new(examples.clone().into_iter().map(Ok), config.clone()).unwrap();
    batches.next().unwrap().unwrap();
    let pending: Vec<Encoded> = batches.pending().cloned().collect();
    assert_eq!(pending.len(), 2, "the window's second batch waits");
    let consumed = 4; // the stream read the whole first window
    let rest = examples[consumed..].iter().cloned().map(Ok);
    let resumed: Vec<Vec<usize>> = Batches::resume(rest, config.clone(), pending, batches.report())
        .unwrap()
        .map(|b| rows(&b.unwrap()))
        .collect();
    assert_eq!(resumed, all[1..]);

    let both = BatchConfig {
        packing: true,
        ..config
    };
    let err = Batches::new(examples.into_iter().map(Ok), both)
        .err()
        .unwrap();
    assert!(err.to_string().contains("group_by_length"), "{err}");
}

/// One leaf column of a Parquet row group: its non-null values with their definition and
/// repetition levels (`None` where the schema needs none).
struct ParquetColumn {
    values: Vec<&'static str>,
    def: Option<Vec<i16>>,
    rep: Option<Vec<i16>>,
}

fn column(values: &[&'static str], def: Option<&[i16]>, rep: Option<&[i16]>) -> ParquetColumn {
    ParquetColumn {
        values: values.to_vec(),
        def: def.map(<[i16]>::to_vec),
        rep: rep.map(<[i16]>::to_vec),
    }
}

/// Writes a Parquet file as `pyarrow` would for a Hugging Face dataset: one row group per
/// entry of `row_groups`, string columns.
fn write_parquet(
    path: &Path,
    schema: &str,
    compression: parquet::basic::Compression,
    row_groups: Vec<Vec<ParquetColumn>>,
) {
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    let schema = std::sync::Arc::new(parquet::schema::parser::parse_message_type(schema).unwrap());
    let props = std::sync::Arc::new(
        WriterProperties::builder()
            .set_compression(compression)
            .build(),
    );
    let file = std::fs::File::create(path).unwrap();
    let mut writer = SerializedFileWriter::new(file, schema, props).unwrap();
    for columns in row_groups {
        let mut group = writer.next_row_group().unwrap();
        let mut columns = columns.into_iter();
        while let Some(mut out) = group.next_column().unwrap() {
            let c = columns
                .next()
                .expect("a column for every leaf of the schema");
            let values: Vec<ByteArray> = c.values.iter().map(|v| ByteArray::from(*v)).collect();
            out.typed::<ByteArrayType>()
                .write_batch(&values, c.def.as_deref(), c.rep.as_deref())
                .unwrap();
            out.close().unwrap();
        }
        group.close().unwrap();
    }
    writer.close().unwrap();
}

#[test]
fn parquet_rows_are_records_with_nested_lists_row_numbers_and_resume() {
    use parquet::basic::{Compression, ZstdLevel};
    let dir = temp("parquet");
    std::fs::create_dir_all(&dir).unwrap();

    // Alpaca in two row groups (snappy, pyarrow's default), `input` null in row 2 and
    // `output` null in row 3.
    let alpaca = dir.join("alpaca.parquet");
    write_parquet(
        &alpaca,
        "message schema {
            REQUIRED BYTE_ARRAY instruction (UTF8);
            OPTIONAL BYTE_ARRAY input (UTF8);
            OPTIONAL BYTE_ARRAY output (UTF8);
        }",
        Compression::SNAPPY,
        vec![
            vec![
                column(&["Add the numbers.", "Name a colour."], None, None),
                column(&["2 3"], Some(&[1, 0]), None),
                column(&["5", "Blue."], Some(&[1, 1]), None),
            ],
            vec![
                column(&["Say hi."], None, None),
                column(&[""], Some(&[1]), None),
                column(&[], Some(&[0]), None),
            ],
        ],
    );
    let source = DataSource::open(&alpaca).unwrap();
    let records: Vec<_> = source
        .records(Default::default())
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(records.len(), 3);
    assert_eq!(
        records[0].value.as_ref().unwrap(),
        &json!({"instruction": "Add the numbers.", "input": "2 3", "output": "5"})
    );
    assert_eq!(records[1].value.as_ref().unwrap()["input"], Value::Null);
    // Resuming inside the second row group starts at row 3.
    let resumed = source
        .records(records[1].next)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(resumed.value.as_ref().unwrap()["instruction"], "Say hi.");
    // Rows 1–2 train; row 3's null output is an error naming the row and the field.
    let err = collect(&alpaca, ordered()).unwrap_err().to_string();
    assert!(err.contains("alpaca.parquet row 3"), "{err}");
    assert!(err.contains("`output`"), "{err}");
    let skipping = StreamConfig {
        skip_bad_records: true,
        ..ordered()
    };
    assert_eq!(collect(&alpaca, skipping).unwrap().len(), 2);

    // Chat messages as Hugging Face stores them: a LIST of role/content structs (zstd).
    let chat = dir.join("chat.parquet");
    write_parquet(
        &chat,
        "message schema {
            REQUIRED GROUP messages (LIST) {
                REPEATED GROUP list {
                    REQUIRED GROUP element {
                        REQUIRED BYTE_ARRAY role (UTF8);
                        REQUIRED BYTE_ARRAY content (UTF8);
                    }
                }
            }
        }",
        Compression::ZSTD(ZstdLevel::default()),
        vec![vec![
            column(
                &["user", "assistant", "user", "assistant"],
                Some(&[1, 1, 1, 1]),
                Some(&[0, 1, 0, 1]),
            ),
            column(
                &["What is 2+3?", "5", "And 4+4?", "8"],
                Some(&[1, 1, 1, 1]),
                Some(&[0, 1, 0, 1]),
            ),
        ]],
    );
    let first = DataSource::open(&chat)
        .unwrap()
        .records(Default::default())
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(
        first.value.unwrap(),
        json!({"messages": [
            {"role": "user", "content": "What is 2+3?"},
            {"role": "assistant", "content": "5"},
        ]})
    );
    let enc = encoder(false);
    let mut stream = DataStream::new(DataSource::open(&chat).unwrap(), &enc, ordered()).unwrap();
    let examples: Vec<Encoded> = stream.by_ref().map(|e| e.unwrap()).collect();
    assert_eq!(examples.len(), 2);
    let answer = trained_ids(&examples[1]);
    assert!(
        tokenizer().decode(&answer, false).unwrap().starts_with('8'),
        "loss on the assistant turn only"
    );
    assert!(
        stream
            .report()
            .format
            .as_deref()
            .unwrap()
            .starts_with("messages")
    );

    // A file that is not Parquet says so, naming it.
    let fake = dir.join("fake.parquet");
    std::fs::write(&fake, "instruction,output\n").unwrap();
    let err = collect(&fake, ordered()).unwrap_err().to_string();
    assert!(
        err.contains("fake.parquet: not a readable Parquet file"),
        "{err}"
    );
}
