//! Helpers of the CLI tests: a copy of the tiny fixture Llama with a word-level tokenizer
//! that fits its 96-token vocabulary, small datasets, and running the `gmt` binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::json;

/// The repository's shared fixtures.
pub fn shared() -> PathBuf {
    gmt_tests::shared("")
}

/// A fresh temporary directory for one test, removed when the test ends.
pub fn temp_dir(name: &str) -> gmt_tests::TempDir {
    gmt_tests::TempDir::new(&format!("cli-{name}"))
}

const SPECIAL: [&str; 5] = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"];
const WORDS: [&str; 12] = [
    "user",
    "assistant",
    "system",
    "what",
    "is",
    "plus",
    "minus",
    "?",
    "+",
    "-",
    "=",
    "####",
];

/// A test's inputs: a fresh directory with the tiny Llama and `examples` summing problems.
pub struct TinyRun {
    /// The directory (removed when dropped).
    pub dir: gmt_tests::TempDir,
    /// The model directory.
    pub model: String,
    /// The training data.
    pub data: String,
}

/// [`TinyRun`] in `temp_dir(name)`.
pub fn tiny_run(name: &str, examples: usize) -> TinyRun {
    let dir = temp_dir(name);
    let model = tiny_model(&dir, "llama-tiny").to_str().unwrap().to_string();
    let data = sums(&dir, "train.jsonl", examples, 0)
        .to_str()
        .unwrap()
        .to_string();
    TinyRun { dir, model, data }
}

/// A WordLevel `tokenizer.json` with the special tokens, a few words and the numbers 0–40:
/// 5 + 12 + 41 = 58 tokens, inside the fixture model's 96.
pub fn word_tokenizer() -> serde_json::Value {
    let mut vocab = serde_json::Map::new();
    let words = SPECIAL
        .iter()
        .map(|s| s.to_string())
        .chain(WORDS.iter().map(|s| s.to_string()))
        .chain((0..=40).map(|n| n.to_string()));
    for (id, word) in words.enumerate() {
        vocab.insert(word, json!(id));
    }
    let added: Vec<_> = SPECIAL
        .iter()
        .enumerate()
        .map(|(id, s)| {
            json!({"id": id, "content": s, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    })
}

/// A copy of `hf/<name>` with the word tokenizer and a chatml template: a complete model
/// directory as a user would have.
pub fn tiny_model(dir: &Path, name: &str) -> PathBuf {
    let src = shared().join("fixtures/hf").join(name);
    let model = dir.join(name);
    std::fs::create_dir_all(&model).unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(file), model.join(file)).unwrap();
    }
    std::fs::write(
        model.join("tokenizer.json"),
        serde_json::to_string(&word_tokenizer()).unwrap(),
    )
    .unwrap();
    let chatml = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
    std::fs::write(
        model.join("tokenizer_config.json"),
        serde_json::to_string(&json!({
            "bos_token": "<s>", "eos_token": "</s>", "chat_template": chatml
        }))
        .unwrap(),
    )
    .unwrap();
    model
}

/// `n` question/answer records in the word vocabulary (GSM8K shape).
pub fn sums(dir: &Path, name: &str, n: usize, offset: usize) -> PathBuf {
    let path = dir.join(name);
    let lines: Vec<String> = (0..n)
        .map(|i| {
            let a = (i + offset) % 20;
            let b = (i * 7 + offset) % 20;
            json!({
                "question": format!("what is {a} plus {b} ?"),
                "answer": format!("{a} + {b} = {} #### {}", a + b, a + b),
            })
            .to_string()
        })
        .collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// Runs `gmt` with `args`.
pub fn gmt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gmt"))
        .args(args)
        .env("GMT_LOG", "warn")
        .output()
        .expect("the gmt binary runs")
}

/// Runs `gmt`, asserting success; returns stdout.
pub fn gmt_ok(args: &[&str]) -> String {
    let out = gmt(args);
    assert!(
        out.status.success(),
        "gmt {args:?} failed ({:?}):\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `gmt`, asserting it fails with `code`; returns stderr.
pub fn gmt_fails(args: &[&str], code: i32) -> String {
    let out = gmt(args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(code), "gmt {args:?}:\n{stderr}");
    assert!(
        !stderr.contains("panicked"),
        "a panic, not an error:\n{stderr}"
    );
    stderr
}

/// The `metrics.jsonl` of a run.
pub fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The `metrics.jsonl` of a run without its timings: what two runs of the same steps share.
pub fn metrics_without_timings(run: &Path) -> Vec<serde_json::Value> {
    metrics(run)
        .into_iter()
        .map(|mut m| {
            m.as_object_mut()
                .unwrap()
                .retain(|k, _| !["elapsed_secs", "tokens_per_sec"].contains(&k.as_str()));
            m
        })
        .collect()
}

/// `gmt train` on the CPU from `model` and `data` into `out`; callers add their settings.
pub fn train_command<'a>(model: &'a str, data: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--backend",
        "cpu",
        "--model",
        model,
        "--data",
        data,
        "--output",
        out,
    ]
}

/// A model's logits for eight fixed tokens (ids every test model's vocabulary holds).
pub fn logits(model: &gmt_models::LlamaForCausalLm<burn::backend::NdArray>) -> Vec<f32> {
    let batch = gmt_models::TokenBatch::new(vec![3, 7, 8, 20, 9, 25, 4, 10], 1, 8);
    model
        .forward(&batch)
        .unwrap()
        .logits
        .into_data()
        .to_vec()
        .unwrap()
}
