//! `gmt eval`, `generate`, `info`, `make-data`, and the errors users meet.

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
fn bad_input_gives_clear_errors_and_no_checkpoint() {
    let dir = temp_dir("errors");
    let model = tiny_model(&dir, "llama-tiny");
    let data = sums(&dir, "train.jsonl", 4, 0);
    let (m, d) = (model.to_str().unwrap(), data.to_str().unwrap());
    let out = dir.join("run");
    let o = out.to_str().unwrap();
    // The run's arguments with `extra` added; a flag in `extra` replaces the default one.
    let base = |extra: &[&'static str]| -> Vec<String> {
        let mut args: Vec<String> = vec!["train".into()];
        for (flag, value) in [
            ("--backend", "cpu"),
            ("--model", m),
            ("--data", d),
            ("--output", o),
            ("--max-steps", "1"),
        ] {
            if !extra.contains(&flag) {
                args.extend([flag.to_string(), value.to_string()]);
            }
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let fails = |extra: &[&'static str], expect: &str| {
        let args = base(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let err = gmt_fails(&args, 1);
        assert!(err.contains(expect), "expected `{expect}` in:\n{err}");
    };
    fails(&["--grad-accum", "0"], "train.grad_accum");
    fails(&["--mask-ratio", "1.0"], "gmt.mask_ratio");
    fails(&["--lr=-0.001"], "optim.lr");
    fails(&["--model", "/no/such/model"], "/no/such/model");
    fails(&["--data", "/no/such/data.jsonl"], "/no/such/data.jsonl");
    // A tokenizer whose ids exceed the model's vocabulary.
    let big = shared().join("fixtures/smollm2-tokenizer/tokenizer.json");
    let big = Box::leak(big.to_string_lossy().to_string().into_boxed_str());
    fails(&["--tokenizer", big], "vocabulary");
    // A malformed record names file and line.
    let bad = dir.join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"question\": \"what is 1 plus 1 ?\", \"answer\": \"2\"}\n{oops\n",
    )
    .unwrap();
    let bad = Box::leak(bad.to_string_lossy().to_string().into_boxed_str());
    fails(&["--data", bad, "--shuffle-buffer", "4"], "bad.jsonl:2");
    // A checkpoint that cannot be written is an error, and nothing looks like a checkpoint.
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("checkpoints"), "not a directory").unwrap();
    fails(&[], "checkpoint");
    assert!(out.join("checkpoints").is_file());
    assert!(
        !out.join("final").exists(),
        "no final model after a failed save"
    );

    // An unavailable backend exits with code 2, never a panic.
    if std::env::var_os("GMT_EXPECT_CUDA").is_none() {
        let args = base(&["--backend", "cuda"]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let err = gmt_fails(&args, 2);
        assert!(err.contains("cuda"), "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
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
