//! SmolLM2-135M-Instruct from its GGUF file: the rebuilt tokenizer reproduces Transformers'
//! ids, and the model answers the reference chat exactly as Transformers does.
//!
//! Needs the file from `scripts/fetch-smollm2.sh` (CI runs it). Without it the tests say so
//! and pass locally, but fail under CI=true so CI can never skip them silently.

use burn::backend::NdArray;
use gmt_models::gguf::{GgufFile, gguf_chat_template, gguf_config, gguf_tokenizer, gguf_weights};
use gmt_models::{GenerationConfig, LlamaForCausalLm, generate};
use serde_json::Value;

fn gguf() -> Option<GgufFile> {
    let path = gmt_tests::smollm2_or_skip("SmolLM2 tests")?;
    Some(GgufFile::read(&path).unwrap())
}

fn encodings() -> Value {
    let path = crate::shared("fixtures/smollm2-tokenizer/encodings.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn gguf_tokenizer_reproduces_transformers_ids() {
    let Some(file) = gguf() else { return };
    let tokenizer = gguf_tokenizer(&file).unwrap();
    let reference = encodings();
    for case in reference["texts"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let encoding = tokenizer.encode(text, false).unwrap();
        assert_eq!(encoding.get_ids(), ids(&case["ids"]).as_slice(), "{text:?}");
    }
    for chat in reference["chats"].as_array().unwrap() {
        let rendered = chat["rendered"].as_str().unwrap();
        let encoding = tokenizer.encode(rendered, false).unwrap();
        assert_eq!(
            encoding.get_ids(),
            ids(&chat["ids"]).as_slice(),
            "{rendered:?}"
        );
    }
    let template = gguf_chat_template(&file).unwrap();
    assert!(
        template.contains("<|im_start|>"),
        "chat template comes from the GGUF metadata"
    );
}

#[test]
fn smollm2_answers_like_transformers() {
    let Some(file) = gguf() else { return };
    let config = gguf_config(&file).unwrap();
    assert_eq!(
        (
            config.num_hidden_layers,
            config.num_key_value_heads,
            config.tie_word_embeddings
        ),
        (30, 3, true)
    );
    let weights = gguf_weights(&file, &config).unwrap();
    let model =
        LlamaForCausalLm::<NdArray>::from_weights(&config, weights, &Default::default()).unwrap();
    let tokenizer = gguf_tokenizer(&file).unwrap();

    let chat = &encodings()["chats"][0];
    assert_eq!(chat["messages"][0]["content"], "What is 12 plus 30?");
    let prompt = ids(&chat["ids"]);
    let config = GenerationConfig {
        max_new_tokens: 24,
        ..GenerationConfig::default()
    };
    let out = generate(&model, &prompt, &config, |_| {}).unwrap();
    let text = tokenizer.decode(&out.tokens, false).unwrap();
    // The real (wrong) answer Transformers gives with this model.
    assert_eq!(text, "12 + 30 = 32.<|im_end|>");
    assert!(out.stopped);
}
