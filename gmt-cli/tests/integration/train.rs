//! `gmt train` end to end on the tiny fixture Llama: resume, export, accumulation, metrics,
//! plot.

use crate::common::*;
use std::path::Path;

use gmt_models::load_hf_dir;

type B = burn::backend::NdArray;

pub(crate) fn train_args<'a>(model: &'a str, data: &'a str, out: &'a str) -> Vec<&'a str> {
    let mut args = train_command(model, data, out);
    args.extend([
        "--max-seq-len",
        "32",
        "--micro-batch-size",
        "2",
        "--grad-accum",
        "2",
        "--max-steps",
        "4",
        "--lr",
        "1e-2",
        "--mask-ratio",
        "0.3",
        "--warmup-steps",
        "1",
        "--shuffle-buffer",
        "8",
        "--seed",
        "3",
    ]);
    args
}

/// [`train_args`] and `extra`.
pub(crate) fn args<'a>(
    model: &'a str,
    data: &'a str,
    out: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = train_args(model, data, out);
    args.extend_from_slice(extra);
    args
}

/// Asserts that `run` took the steps `reference` took (metrics but timings) and ended with
/// the same weights, to the bit.
pub(crate) fn assert_same_run(run: &str, reference: &str) {
    assert_eq!(
        metrics_without_timings(run.as_ref()),
        metrics_without_timings(reference.as_ref()),
        "{run}: the same steps"
    );
    assert!(
        final_weights(run.as_ref()) == final_weights(reference.as_ref()),
        "{run}: the same weights, to the bit"
    );
}

/// The exported final weights of a run.
pub(crate) fn final_weights(run: &Path) -> Vec<u8> {
    std::fs::read(run.join("final/model.safetensors")).unwrap()
}

#[test]
fn resume_restores_the_exact_state_and_continues_the_run() {
    let dir = temp_dir("resume");
    let model = tiny_model(&dir, "llama-tiny");
    let data = sums(&dir, "train.jsonl", 24, 0);
    let (model, data) = (model.to_str().unwrap(), data.to_str().unwrap());
    let straight = dir.join("straight");
    let split = dir.join("split");

    gmt_ok(&train_args(model, data, straight.to_str().unwrap()));

    let mut first = train_args(model, data, split.to_str().unwrap());
    first.extend(["--stop-after", "2"]);
    let out = gmt_ok(&first);
    assert!(out.contains("stopped at step 2"), "{out}");
    assert_eq!(metrics(&split).len(), 2);

    // Restoring is exact: resume and save again at once, and the weights, data position and
    // counters come back byte for byte. (The optimizer file holds the same AdamW moments,
    // but burn writes its map of parameters in hash order, so only its content is compared.)
    let checkpoint = split.join("checkpoints/step-00000002");
    let saved: Vec<Vec<u8>> = ["model.bin", "trainer.json", "optimizer.bin"]
        .iter()
        .map(|f| std::fs::read(checkpoint.join(f)).unwrap())
        .collect();
    let mut again = train_args(model, data, split.to_str().unwrap());
    again.extend(["--resume", "--stop-after", "0"]);
    gmt_ok(&again);
    for (i, file) in ["model.bin", "trainer.json", "optimizer.bin"]
        .iter()
        .enumerate()
    {
        let mut resaved = std::fs::read(checkpoint.join(file)).unwrap();
        let mut original = saved[i].clone();
        if *file == "optimizer.bin" {
            resaved.sort_unstable();
            original.sort_unstable();
        }
        assert!(
            resaved == original,
            "{file} changed through resume:\n{}\n{}",
            String::from_utf8_lossy(&original),
            String::from_utf8_lossy(&resaved)
        );
    }

    let mut second = train_args(model, data, split.to_str().unwrap());
    second.push("--resume");
    gmt_ok(&second);

    // 4 steps in one go ≡ 2 steps, stop, resume, 2 more: the same batches, learning rates,
    // masks and losses, and bit-identical weights.
    let ma = metrics(&straight);
    assert_eq!(ma.len(), 4);
    assert_eq!(
        metrics_without_timings(&straight),
        metrics_without_timings(&split)
    );
    let final_weights = |run: &Path| std::fs::read(run.join("final/model.safetensors")).unwrap();
    assert!(
        final_weights(&straight) == final_weights(&split),
        "the resumed run's weights differ from the uninterrupted run's"
    );
    let kept = ma[3]["kept_fraction"].as_f64().unwrap();
    assert!((kept - 0.7).abs() < 0.05, "30% masked: kept {kept}");
    // Throughput counts every token processed; the loss only the responses' tokens.
    for m in &ma {
        let (loss, processed) = (
            m["tokens"].as_u64().unwrap(),
            m["tokens_processed"].as_u64(),
        );
        assert!(processed.is_some_and(|p| p > loss && loss > 0), "{m}");
    }
    assert!(straight.join("plot.svg").is_file());
    assert!(straight.join("config.toml").is_file());

    // Export the newest checkpoint and load it as a Hugging Face model: same logits as the
    // final model the run wrote.
    let exported = dir.join("exported");
    gmt_ok(&[
        "export",
        "--checkpoint",
        split.to_str().unwrap(),
        "--output",
        exported.to_str().unwrap(),
    ]);
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(exported.join(file).is_file(), "{file} exported");
    }
    let device = Default::default();
    let from_export = load_hf_dir::<B>(&exported, &device).unwrap();
    let from_final = load_hf_dir::<B>(split.join("final"), &device).unwrap();
    let original = load_hf_dir::<B>(shared().join("fixtures/hf/llama-tiny"), &device).unwrap();
    assert_eq!(logits(&from_export), logits(&from_final));
    assert_ne!(
        logits(&from_export),
        logits(&original),
        "training changed the model"
    );

    // A finished run refuses to start over in the same directory.
    let again = gmt_fails(&train_args(model, data, split.to_str().unwrap()), 1);
    assert!(again.contains("--resume"), "{again}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn accumulating_four_micro_batches_of_one_equals_one_batch_of_four() {
    let dir = temp_dir("accum");
    let model = tiny_model(&dir, "llama-tiny");
    let data = sums(&dir, "train.jsonl", 4, 5);
    let (model, data) = (model.to_str().unwrap(), data.to_str().unwrap());
    let run = |name: &str, micro: &str, accum: &str| {
        let out = dir.join(name);
        let mut args = train_command(model, data, out.to_str().unwrap());
        args.extend([
            "--micro-batch-size",
            micro,
            "--grad-accum",
            accum,
            "--max-steps",
            "1",
            "--shuffle-buffer",
            "1",
            "--lr",
            "1e-3",
            "--mask-ratio",
            "0",
        ]);
        gmt_ok(&args);
        metrics(&out).remove(0)
    };
    let a = run("a", "1", "4");
    let b = run("b", "4", "1");
    // The loss is the same mean over the same 32 tokens, and Γ the same gradient, up to the
    // order in which the two batch shapes sum (measured: 5e-8 and 1e-8 relative).
    let close = |key: &str, tolerance: f64| {
        let (x, y) = (a[key].as_f64().unwrap(), b[key].as_f64().unwrap());
        assert!(
            (x - y).abs() <= tolerance * x.abs().max(1.0),
            "{key}: {x} vs {y}"
        );
    };
    close("loss", 1e-6);
    close("grad_norm", 1e-6);
    assert_eq!(a["tokens"], b["tokens"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn config_file_and_flags_combine_and_print() {
    let dir = temp_dir("config");
    let config = dir.join("run.toml");
    std::fs::write(
        &config,
        "[gmt]\nmask_ratio = 0.4\nscope = \"global\"\n[optim]\nlr = 2e-5\n[train]\nseed = 9\n",
    )
    .unwrap();
    let printed = gmt_ok(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--lr",
        "5e-5",
        "--print-config",
    ]);
    let settings: toml::Table = toml::from_str(&printed).unwrap();
    assert_eq!(settings["gmt"]["mask_ratio"].as_float(), Some(0.4));
    assert_eq!(settings["gmt"]["scope"].as_str(), Some("global"));
    assert_eq!(settings["optim"]["lr"].as_float(), Some(5e-5), "flags win");
    assert_eq!(settings["train"]["seed"].as_integer(), Some(9));

    std::fs::write(&config, "[optim]\nlearning_rate = 1e-4\n").unwrap();
    let err = gmt_fails(
        &[
            "train",
            "--config",
            config.to_str().unwrap(),
            "--print-config",
        ],
        1,
    );
    assert!(
        err.contains("learning_rate") && err.contains("run.toml"),
        "{err}"
    );
    std::fs::write(&config, "[optim]\nweight_decy = 0.1\n").unwrap();
    let err = gmt_fails(
        &[
            "train",
            "--config",
            config.to_str().unwrap(),
            "--print-config",
        ],
        1,
    );
    assert!(err.contains("did you mean `weight_decay`"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A resumed run continues the metrics history; a history it cannot read stops the resume
/// (naming the file and line) and is left as it was, never replaced by an empty one.
#[test]
fn resume_keeps_the_metrics_history_and_refuses_a_damaged_one() {
    let t = tiny_run("metrics-history", 24);
    let run = t.dir.join("run");
    let (model, data) = (t.model.as_str(), t.data.as_str());
    let mut first = train_args(model, data, run.to_str().unwrap());
    first.extend(["--stop-after", "2"]);
    gmt_ok(&first);

    let path = run.join("metrics.jsonl");
    let history = std::fs::read_to_string(&path).unwrap();
    let damaged = history.replacen("{\"step\":2", "{\"step\":2,", 1);
    std::fs::write(&path, &damaged).unwrap();
    let mut resume = train_args(model, data, run.to_str().unwrap());
    resume.push("--resume");
    let err = gmt_fails(&resume, 1);
    assert!(err.contains("metrics.jsonl:2"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        damaged,
        "left as it was"
    );

    std::fs::write(&path, &history).unwrap();
    gmt_ok(&resume);
    let steps: Vec<u64> = metrics(&run)
        .iter()
        .map(|m| m["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, vec![1, 2, 3, 4]);
}

/// SIGTERM (a scheduler's stop) ends a run as Ctrl-C does: the step finishes, a checkpoint
/// of it is saved, and the exit code is 130.
#[test]
fn sigterm_saves_a_checkpoint_to_resume_from() {
    let t = tiny_run("sigterm", 24);
    let run = t.dir.join("run");
    let mut args = train_args(&t.model, &t.data, run.to_str().unwrap());
    let at = args.iter().position(|&a| a == "--max-steps").unwrap();
    args[at + 1] = "100000"; // far more than the test waits for
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_gmt"))
        .args(&args)
        .env("GMT_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for a first step, so the signal arrives mid-run.
    let metrics_file = run.join("metrics.jsonl");
    let started = std::time::Instant::now();
    while std::fs::read_to_string(&metrics_file).map_or(true, |m| m.is_empty()) {
        assert!(
            started.elapsed().as_secs() < 120,
            "no step within 2 minutes"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("continue with --resume"), "{stdout}");
    let steps = metrics(&run).len();
    assert!(
        run.join(format!("checkpoints/step-{steps:08}")).is_dir(),
        "{stdout}"
    );
}
