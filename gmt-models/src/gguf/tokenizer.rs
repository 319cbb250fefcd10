//! The tokenizer and chat template stored in GGUF metadata.

use serde_json::{Map, Value, json};
use tokenizers::Tokenizer;

use super::{GgufFile, GgufValue};
use crate::ModelError;

/// llama.cpp token types (`tokenizer.ggml.token_type`).
const CONTROL: u64 = 3;
const USER_DEFINED: u64 = 4;

/// Llama 3's pre-tokenizer split (llama.cpp's `llama-bpe`).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Rebuilds the byte-level BPE tokenizer (`tokenizer.ggml.model = "gpt2"`) as a Hugging Face
/// [`Tokenizer`]: vocabulary and merges from the metadata, control and user-defined tokens
/// as added tokens, and the pre-tokenizer named by `tokenizer.ggml.pre`. No special tokens are
/// added on encoding unless `tokenizer.ggml.add_bos_token` says so.
pub fn gguf_tokenizer(file: &GgufFile) -> Result<Tokenizer, ModelError> {
    let source = file.source_name();
    let unsupported = |key: &str, value: &str, supported: &str| ModelError::Unsupported {
        source_name: source.into(),
        key: key.into(),
        value: format!("\"{value}\""),
        supported: supported.into(),
    };
    let strings = |key: &str| -> Result<Vec<String>, ModelError> {
        let items =
            file.get(key)
                .and_then(GgufValue::as_array)
                .ok_or_else(|| ModelError::MissingKey {
                    source_name: source.into(),
                    key: key.into(),
                })?;
        items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ModelError::InvalidValue {
                source_name: source.into(),
                key: key.into(),
                value: "(array)".into(),
                reason: "expected an array of strings".into(),
            })
    };

    let model = file
        .get("tokenizer.ggml.model")
        .and_then(GgufValue::as_str)
        .unwrap_or("(none)");
    if model != "gpt2" {
        return Err(unsupported(
            "tokenizer.ggml.model",
            model,
            "\"gpt2\" (byte-level BPE)",
        ));
    }
    let tokens = strings("tokenizer.ggml.tokens")?;
    let merges = strings("tokenizer.ggml.merges")?;
    let types: Vec<u64> = match file
        .get("tokenizer.ggml.token_type")
        .and_then(GgufValue::as_array)
    {
        Some(items) => items.iter().map(|v| v.as_u64().unwrap_or(1)).collect(),
        None => vec![1; tokens.len()],
    };

    let pre = file
        .get("tokenizer.ggml.pre")
        .and_then(GgufValue::as_str)
        .unwrap_or("default");
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let pre_tokenizer = match pre {
        "default" | "gpt2" | "gpt-2" | "smollm" | "starcoder" => byte_level(true),
        "llama-bpe" | "llama3" | "llama-v3" => json!({
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": false},
                byte_level(false),
            ]
        }),
        other => {
            return Err(unsupported(
                "tokenizer.ggml.pre",
                other,
                "\"gpt2\", \"smollm\", \"llama-bpe\"",
            ));
        }
    };

    let vocab: Map<String, Value> = tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.clone(), json!(id)))
        .collect();
    let merges: Vec<Value> = merges
        .iter()
        .map(|m| {
            let (a, b) = m.split_once(' ').unwrap_or((m, ""));
            json!([a, b])
        })
        .collect();
    let added: Vec<Value> = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter(|(_, (_, kind))| **kind == CONTROL || **kind == USER_DEFINED)
        .map(|(id, (content, kind))| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": *kind == CONTROL})
        })
        .collect();

    let add_bos = matches!(
        file.get("tokenizer.ggml.add_bos_token"),
        Some(GgufValue::Bool(true))
    );
    let bos = file
        .get("tokenizer.ggml.bos_token_id")
        .and_then(GgufValue::as_u64);
    let post_processor = match (add_bos, bos) {
        (true, Some(id)) => {
            let content = tokens.get(id as usize).cloned().unwrap_or_default();
            json!({"type": "TemplateProcessing",
                   "single": [{"SpecialToken": {"id": content, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                   "pair": [{"SpecialToken": {"id": content, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                            {"Sequence": {"id": "B", "type_id": 1}}],
                   "special_tokens": {content.clone(): {"id": content, "ids": [id], "tokens": [content]}}})
        }
        _ => Value::Null,
    };

    let spec = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges},
    });
    spec.to_string()
        .parse::<Tokenizer>()
        .map_err(|e| ModelError::Tokenizer(format!("{source}: cannot build the tokenizer: {e}")))
}

/// The Jinja chat template in `tokenizer.chat_template`, if the file has one.
pub fn gguf_chat_template(file: &GgufFile) -> Option<String> {
    file.get("tokenizer.chat_template")
        .and_then(GgufValue::as_str)
        .map(str::to_string)
}
