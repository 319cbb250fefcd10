//! Preference pairs (for DPO): every published layout, bad pairs by file, line and field,
//! and batching with TRL's truncation rule.

use gmt_data::{
    BatchConfig, Batches, DataSource, DataStream, Encoded, IGNORE, RecordFormat, StreamConfig,
    Truncation,
};
use serde_json::{Value, json};

use super::{collect, encoder, ordered, write_jsonl};

fn user(text: &str) -> Value {
    json!({"role": "user", "content": text})
}

fn assistant(text: &str) -> Value {
    json!({"role": "assistant", "content": text})
}

#[test]
fn every_layout_gives_the_same_pair_and_labels_mark_the_response() {
    let (q, good, bad) = ("What is 2 + 3?", "2 + 3 = 5.", "2 + 3 = 6.");
    let layouts = [
        (
            "trl strings",
            json!({"prompt": q, "chosen": good, "rejected": bad}),
        ),
        (
            "trl conversational",
            json!({"prompt": [user(q)], "chosen": [assistant(good)], "rejected": [assistant(bad)]}),
        ),
        (
            "ultrafeedback",
            json!({"prompt": q, "prompt_id": "x", "score_chosen": 8.0,
                   "chosen": [user(q), assistant(good)], "rejected": [user(q), assistant(bad)]}),
        ),
        (
            "hh text",
            json!({"chosen": format!("\n\nHuman: {q}\n\nAssistant: {good}"),
                   "rejected": format!("\n\nHuman: {q}\n\nAssistant: {bad}")}),
        ),
        (
            "hh messages",
            json!({"chosen": [user(q), assistant(good)], "rejected": [user(q), assistant(bad)]}),
        ),
    ];
    let mut encoded = Vec::new();
    for (name, record) in &layouts {
        let path = write_jsonl(
            &format!("pairs-{}.jsonl", name.replace(' ', "-")),
            std::slice::from_ref(record),
        );
        let expected = if name.starts_with("hh") {
            "hh"
        } else {
            "preference"
        };
        let enc = encoder(false);
        let mut stream =
            DataStream::new(DataSource::open(&path).unwrap(), &enc, ordered()).unwrap();
        let pair = stream.next().unwrap().unwrap();
        assert_eq!(
            stream.state().format.map(|f| f.name()),
            Some(expected),
            "{name}"
        );
        encoded.push(pair);
    }
    assert!(encoded.windows(2).all(|w| w[0] == w[1]), "{encoded:#?}");

    // Prompt tokens carry no label; each response decodes to its turn of the rendering.
    let pair = &encoded[0];
    let enc = encoder(false);
    let prompt = pair.prompt_len();
    assert!(pair.labels[..prompt].iter().all(|&l| l == IGNORE));
    assert!(
        pair.labels[prompt..]
            .iter()
            .zip(&pair.ids[prompt..])
            .all(|(&l, &t)| l == t as i64)
    );
    let decode = |ids: &[u32]| enc.tokenizer().decode(ids, false).unwrap();
    let rendered = |answer: &str| {
        let messages = [
            gmt_data::Message::new("user", q),
            gmt_data::Message::new("assistant", answer),
        ];
        enc.template().render(&messages, false).unwrap()
    };
    assert_eq!(decode(&pair.ids), rendered(good));
    let rejected: Vec<u32> = pair.ids[..prompt]
        .iter()
        .chain(pair.rejected.as_ref().unwrap())
        .copied()
        .collect();
    assert_eq!(decode(&rejected), rendered(bad));
}

#[test]
fn bad_pairs_name_file_line_and_field_or_are_skipped_and_counted() {
    let good = json!({"prompt": "q", "chosen": "a", "rejected": "b"});
    let cases = [
        (
            json!({"prompt": "q", "chosen": "a"}),
            "field `rejected`: missing",
        ),
        (
            json!({"prompt": "q", "chosen": "", "rejected": "b"}),
            "field `chosen`: empty response",
        ),
        (
            json!({"prompt": "q", "chosen": "a", "rejected": "a"}),
            "field `rejected`: identical to chosen",
        ),
        (
            json!({"prompt": "q", "chosen": 3, "rejected": "b"}),
            "field `chosen`: expected a string or a list of messages, found a number",
        ),
        (
            json!({"prompt": "q", "chosen": [user("other"), assistant("a")], "rejected": "b"}),
            "field `chosen`: the conversation does not begin with the record's prompt",
        ),
        (
            json!({"prompt": [assistant("q")], "chosen": "a", "rejected": "b"}),
            "field `prompt`: a prompt must end with a user turn",
        ),
        (
            json!({"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: p\n\nAssistant: b"}),
            "field `rejected`: chosen and rejected do not share their prompt: they differ at turn 0",
        ),
        (
            json!({"chosen": "Human: q Assistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"}),
            "field `chosen`: expected Anthropic-HH text",
        ),
    ];
    for (i, (bad, expected)) in cases.iter().enumerate() {
        let format = if bad.get("prompt").is_some() {
            RecordFormat::Preference
        } else {
            RecordFormat::Hh
        };
        let good = if format == RecordFormat::Hh {
            json!({"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"})
        } else {
            good.clone()
        };
        let path = write_jsonl(
            &format!("bad-pair{i}.jsonl"),
            &[good.clone(), bad.clone(), good.clone()],
        );
        let config = StreamConfig {
            format: Some(format),
            ..ordered()
        };
        let err = collect(&path, config.clone()).unwrap_err().to_string();
        assert!(
            err.contains(&format!("bad-pair{i}.jsonl:2: {expected}")),
            "{err}\nexpected: {expected}"
        );

        let enc = encoder(false);
        let skipping = StreamConfig {
            skip_bad_records: true,
            ..config
        };
        let mut stream = DataStream::new(DataSource::open(&path).unwrap(), &enc, skipping).unwrap();
        assert_eq!(stream.by_ref().count(), 2, "{expected}");
        assert_eq!(stream.report().skipped, 1);
    }
}

/// A pair of a `prompt`-token prompt and responses of the given lengths.
fn pair(prompt: u32, chosen: u32, rejected: u32) -> Encoded {
    let ids: Vec<u32> = (1..=prompt).chain(101..101 + chosen).collect();
    let labels = ids
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            if i < prompt as usize {
                IGNORE
            } else {
                t as i64
            }
        })
        .collect();
    Encoded {
        ids,
        labels,
        rejected: Some((201..201 + rejected).collect()),
    }
}

#[test]
fn pairs_batch_as_chosen_then_rejected_rows_and_truncate_as_trl_does() {
    let config = BatchConfig {
        batch_size: 2,
        max_seq_len: 8,
        truncation: Truncation::Truncate,
        packing: false,
        pad_id: 0,
        group_by_length: 0,
        max_prompt_len: Some(3),
    };
    let pairs = vec![pair(2, 3, 1), pair(6, 2, 5)];
    let mut batches = Batches::new(pairs.clone().into_iter().map(Ok), config.clone()).unwrap();
    let batch = batches.next().unwrap().unwrap();
    assert!(batches.next().is_none());
    assert_eq!((batch.batch, batch.seq_len), (4, 8));
    let row = |r: usize| &batch.input_ids[r * 8..(r + 1) * 8];
    let labels = |r: usize| &batch.labels.as_ref().unwrap()[r * 8..(r + 1) * 8];
    // Pair 0 fits: prompt + chosen, then (row 2) prompt + rejected, right-padded.
    assert_eq!(row(0), [1, 2, 101, 102, 103, 0, 0, 0]);
    assert_eq!(row(2), [1, 2, 201, 0, 0, 0, 0, 0]);
    assert_eq!(
        labels(2),
        [IGNORE, IGNORE, 201, IGNORE, IGNORE, IGNORE, IGNORE, IGNORE]
    );
    // Pair 1 (6 + 5 > 8): the prompt keeps its last 3 tokens, responses their first 5.
    assert_eq!(row(1), [4, 5, 6, 101, 102, 0, 0, 0]);
    assert_eq!(row(3), [4, 5, 6, 201, 202, 203, 204, 205]);
    assert_eq!(labels(3)[..3], [IGNORE; 3]);
    assert_eq!(batches.report().truncated, 1);

    let dropping = BatchConfig {
        truncation: Truncation::Drop,
        ..config.clone()
    };
    let mut batches = Batches::new(pairs.clone().into_iter().map(Ok), dropping).unwrap();
    assert_eq!(
        batches.next().unwrap().unwrap().batch,
        2,
        "one pair left, two rows"
    );
    assert_eq!(batches.report().dropped, 1);

    let packing = BatchConfig {
        packing: true,
        ..config.clone()
    };
    let err = Batches::new(pairs.into_iter().map(Ok), packing)
        .unwrap()
        .next()
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("packing"), "{err}");

    let no_room = BatchConfig {
        max_prompt_len: Some(8),
        ..config
    };
    let err = no_room.validate().unwrap_err();
    assert!(err.to_string().contains("max_prompt_len"), "{err}");
}
