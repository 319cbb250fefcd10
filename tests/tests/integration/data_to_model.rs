//! The library crates together: GSM8K batches from gmt-data train a (small, random) Llama
//! from gmt-models with gmt-train's trainer (GMT from gmt-core), and the loss falls.

use burn::backend::{Autodiff, NdArray};
use gmt_core::GmtConfig;
use gmt_data::{
    BatchConfig, Batches, ChatTemplate, DataSource, DataStream, Encoder, FieldMapping,
    RecordFormat, StreamConfig, Truncation,
};
use gmt_models::{LlamaForCausalLm, WeightMap};
use gmt_train::{CausalLm, OptimConfig, ScheduleConfig, ScheduleKind, Trainer, TrainerConfig};
use tokenizers::Tokenizer;

use crate::small_llama_config;

type B = Autodiff<NdArray>;

fn small_llama(vocab: usize) -> LlamaForCausalLm<B> {
    let config = small_llama_config(vocab);
    LlamaForCausalLm::from_weights(&config, WeightMap::random(0), &Default::default()).unwrap()
}

#[test]
fn gsm8k_batches_train_a_llama_with_gmt() {
    let shared = gmt_tests::shared("");
    let tok_dir = shared.join("fixtures/smollm2-tokenizer");
    let tokenizer = Tokenizer::from_file(tok_dir.join("tokenizer.json")).unwrap();
    let vocab = tokenizer.get_vocab_size(true);
    let encoder = Encoder::new(
        tokenizer,
        ChatTemplate::from_hf_dir(&tok_dir).unwrap().unwrap(),
        false,
    );
    let config = StreamConfig {
        format: Some(RecordFormat::Fields(FieldMapping {
            system: None,
            user: "question".into(),
            assistant: "answer".into(),
        })),
        shuffle_buffer: 1,
        ..StreamConfig::default()
    };
    let stream = DataStream::new(
        DataSource::open(shared.join("data/gsm8k/test.jsonl")).unwrap(),
        &encoder,
        config,
    )
    .unwrap();
    let batching = BatchConfig {
        batch_size: 2,
        max_seq_len: 96,
        truncation: Truncation::Truncate,
        packing: true,
        pad_id: 2,
        group_by_length: 0,
        max_prompt_len: None,
    };
    let batches: Vec<_> = Batches::new(stream.take(4), batching)
        .unwrap()
        .map(Result::unwrap)
        .collect();

    let config = TrainerConfig {
        gmt: GmtConfig::new(0.2).with_exclude(vec!["*norm*".into()]),
        optim: OptimConfig {
            lr: 1e-2,
            ..OptimConfig::default()
        },
        schedule: ScheduleConfig {
            kind: ScheduleKind::Constant,
            ..ScheduleConfig::default()
        },
    };
    let mut trainer = Trainer::new(small_llama(vocab), CausalLm, &config, 10).unwrap();
    let before = trainer.evaluate(&batches).unwrap().loss;
    let mut last = None;
    while !trainer.is_done() {
        last = Some(trainer.step(batches.clone()).unwrap());
    }
    let after = trainer.evaluate(&batches).unwrap().loss;
    assert!(after < before * 0.8, "loss {before} -> {after}");
    let kept = last
        .unwrap()
        .mask
        .stats()
        .unwrap()
        .get("layers.0.mlp.up_proj.weight")
        .unwrap()
        .kept_fraction();
    assert!(
        (kept - 0.8).abs() < 1e-3,
        "20% of each masked tensor dropped: kept {kept}"
    );
}
