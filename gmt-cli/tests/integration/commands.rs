//! `gmt eval`, `generate`, `info` and `make-data` (the errors users meet: `bad_input.rs`).

use crate::common::*;

/// `gmt eval --json` of `model` on `data` with `extra` flags, parsed.
fn eval_json(model: &std::path::Path, data: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "eval",
        "--backend",
        "cpu",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    serde_json::from_str(gmt_ok(&args).trim()).unwrap()
}

#[test]
fn eval_reports_loss_perplexity_and_tokens_as_json() {
    let dir = temp_dir("eval");
    let model = tiny_model(&dir, "llama-tiny");
    let data = sums(&dir, "test.jsonl", 6, 0);
    let v = eval_json(&model, &data, &[]);
    let (loss, ppl) = (
        v["loss"].as_f64().unwrap(),
        v["perplexity"].as_f64().unwrap(),
    );
    assert!(loss > 0.0 && (ppl - loss.exp()).abs() < 1e-6 * ppl, "{v}");
    assert!(v["tokens"].as_u64().unwrap() > 0);

    // Plain text: every next token of each line is scored (no template around it).
    let text = dir.join("lines.txt");
    std::fs::write(&text, "what is 2 plus 3 ?\n\n1 + 2 = 3\n").unwrap();
    let v = eval_json(&model, &text, &["--format", "text"]);
    // 6 + 5 tokens, each line scoring all but its first token.
    assert_eq!(v["tokens"].as_u64(), Some(5 + 4), "{v}");

    // GSM8K-style accuracy by generation (the untrained tiny model gets them wrong, but
    // every problem is tried and counted).
    let v = eval_json(&model, &data, &["--task", "gsm8k", "--max-new-tokens", "8"]);
    assert_eq!(v["total"].as_u64(), Some(6), "{v}");
    assert!(v["accuracy"].as_f64().unwrap() <= 1.0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn generate_streams_a_completion() {
    let dir = temp_dir("generate");
    let model = tiny_model(&dir, "llama-tiny");
    let out = gmt_ok(&[
        "generate",
        "--backend",
        "cpu",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "what is 2 plus 3 ?",
        "--max-new-tokens",
        "5",
    ]);
    assert!(!out.trim().is_empty(), "some words are printed");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--keep-freed-memory` changes how the allocator recycles memory, nothing that is computed:
/// greedy decoding prints the same tokens with and without it.
#[test]
fn keeping_freed_memory_changes_no_output() {
    let dir = temp_dir("keep-freed-memory");
    let model = tiny_model(&dir, "llama-tiny");
    let args = |keep: bool| {
        let mut args = vec![
            "generate",
            "--backend",
            "cpu",
            "--model",
            model.to_str().unwrap(),
        ];
        args.extend(["--prompt", "what is 2 plus 3 ?", "--max-new-tokens", "8"]);
        if keep {
            args.push("--keep-freed-memory");
        }
        gmt_ok(&args)
    };
    assert_eq!(args(true), args(false));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn info_lists_backends_and_describes_a_model() {
    let dir = temp_dir("info");
    let model = tiny_model(&dir, "llama-tiny");
    let out = gmt_ok(&["info", "--model", model.to_str().unwrap()]);
    assert!(
        out.contains("cpu") && out.contains("cuda") && out.contains("wgpu"),
        "{out}"
    );
    assert!(out.contains("vocab 96"), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_reader_that_stops_early_is_not_a_panic() {
    // `gmt info | head -0`: the pipe's reading end is closed before gmt writes a line.
    let dir = temp_dir("closed-pipe");
    let model = tiny_model(&dir, "llama-tiny");
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gmt"))
        .args(["info", "--model", model.to_str().unwrap()])
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

#[test]
fn make_data_writes_disjoint_gsm8k_style_sets() {
    let dir = temp_dir("make-data");
    gmt_ok(&[
        "make-data",
        "--output",
        dir.to_str().unwrap(),
        "--train",
        "50",
        "--test",
        "10",
    ]);
    let lines = |n: &str| {
        std::fs::read_to_string(dir.join(n))
            .unwrap()
            .lines()
            .count()
    };
    assert_eq!((lines("train.jsonl"), lines("test.jsonl")), (50, 10));
    std::fs::remove_dir_all(&dir).unwrap();
}
