//! The bad-input suite: one row per hostile-but-realistic input — damaged data, models,
//! settings, checkpoints and outputs in the way — each with the exit code it must give, a
//! part of the message that must name the problem, and the files it must leave untouched.
//! A row never panics (the runner checks), never exits 0, and never changes those files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::common::*;

/// One case's directory: a copy of the tiny model, a small dataset, and (on request) a copy
/// of a run stopped at a checkpoint.
struct Case {
    dir: gmt_tests::TempDir,
}

impl Case {
    fn new(name: &str) -> Self {
        let dir = temp_dir(&format!("bad-{name}"));
        tiny_model(&dir, "llama-tiny");
        sums(&dir, "train.jsonl", 8, 0);
        Self { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    fn arg(&self, rel: &str) -> String {
        self.path(rel).to_string_lossy().into_owned()
    }

    fn write(&self, rel: &str, bytes: impl AsRef<[u8]>) -> String {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        self.arg(rel)
    }

    /// `gmt train` on the tiny model and data into `run/`, one step; a flag in `extra`
    /// replaces the default one.
    fn train(&self, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = vec!["train".into()];
        let defaults = [
            ("--backend", "cpu".to_string()),
            ("--model", self.arg("llama-tiny")),
            ("--data", self.arg("train.jsonl")),
            ("--output", self.arg("run")),
            ("--max-steps", "2".to_string()),
        ];
        for (flag, value) in defaults {
            if !extra.contains(&flag) {
                args.extend([flag.to_string(), value]);
            }
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// A copy of the template run (2 steps, stopped after step 1: checkpoint
    /// `step-00000001`) in `run/`, its settings those of [`Case::train`] with no extra flags.
    fn stopped_run(&self) -> PathBuf {
        let template = TEMPLATE_RUN.get().expect("made before the rows run");
        let template_root = template.parent().unwrap().to_string_lossy().into_owned();
        let run = self.path("run");
        copy_dir(template, &run);
        // The copied settings name the template's files; point them at this case's. The
        // checkpoint's copy is covered by its manifest, so that is rewritten too.
        let here = self.dir.to_string_lossy().into_owned();
        let config = run.join("config.toml");
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(&config, text.replace(&template_root, &here)).unwrap();
        let checkpoint = run.join("checkpoints/step-00000001");
        std::fs::copy(&config, checkpoint.join("config.toml")).unwrap();
        rewrite_manifest(&checkpoint);
        run
    }
}

impl Case {
    /// The checkpoint of [`Case::stopped_run`].
    fn stopped_checkpoint(&self) -> PathBuf {
        self.stopped_run().join("checkpoints/step-00000001")
    }

    /// `gmt eval` of the stopped run's checkpoint (as `--model`) on the case's data.
    fn eval_checkpoint(&self) -> Vec<String> {
        let model = self.arg("run/checkpoints/step-00000001");
        strings(&[
            "eval",
            "--backend",
            "cpu",
            "--model",
            &model,
            "--data",
            &self.arg("train.jsonl"),
        ])
    }
}

/// The run that checkpoint rows copy: made once per test run.
static TEMPLATE_RUN: OnceLock<PathBuf> = OnceLock::new();

/// Makes the template run in `case`.
fn make_template_run(case: &Case) {
    let mut args = case.train(&[]);
    args.extend(["--stop-after".into(), "1".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    gmt_ok(&args);
    TEMPLATE_RUN.set(case.path("run")).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Recomputes a checkpoint's manifest after a test edited one of its files on purpose.
fn rewrite_manifest(checkpoint: &Path) {
    use sha2::{Digest, Sha256};
    let path = checkpoint.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for entry in manifest["files"].as_array_mut().unwrap() {
        let bytes = std::fs::read(checkpoint.join(entry["name"].as_str().unwrap())).unwrap();
        let hex: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        entry["bytes"] = bytes.len().into();
        entry["sha256"] = hex.into();
    }
    std::fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
}

/// Every file under `path` (or the file itself) with its bytes.
fn snapshot(path: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            files.extend(snapshot(&entry.unwrap().path()));
        }
    } else if path.exists() {
        files.insert(path.to_path_buf(), std::fs::read(path).unwrap());
    }
    files
}

fn flip_byte(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x20;
    std::fs::write(path, bytes).unwrap();
}

/// One row: its inputs (made in the case's directory, returning gmt's arguments), the exit
/// code, a part of the error message, and paths (relative to the case) left untouched.
struct Row {
    name: &'static str,
    setup: fn(&Case) -> Vec<String>,
    code: i32,
    message: &'static str,
    untouched: &'static [&'static str],
}

fn row(
    name: &'static str,
    setup: fn(&Case) -> Vec<String>,
    code: i32,
    message: &'static str,
    untouched: &'static [&'static str],
) -> Row {
    Row {
        name,
        setup,
        code,
        message,
        untouched,
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

// One row a line or two: rustfmt would spread each over a dozen and bury the table.
#[rustfmt::skip]
fn rows() -> Vec<Row> {
    let mut rows = vec![
        // --- data ---
        row("empty data file", |c| c.train(&["--data", &c.write("empty.jsonl", "")]), 1, "empty.jsonl", &[]),
        row("whitespace-only data file", |c| c.train(&["--data", &c.write("blank.jsonl", "\n  \n\t\n")]), 1, "blank.jsonl", &[]),
        row("malformed JSON line", |c| {
            let d = c.write("bad.jsonl", "{\"question\": \"what is 1 plus 1 ?\", \"answer\": \"2\"}\n{oops\n");
            c.train(&["--data", &d, "--shuffle-buffer", "4"])
        }, 1, "bad.jsonl:2", &["bad.jsonl"]),
        row("record missing its answer", |c| {
            let d = c.write("q.jsonl", "{\"question\": \"what is 1 plus 1 ?\"}\n");
            c.train(&["--data", &d, "--format", "fields", "--user-field", "question", "--assistant-field", "answer"])
        }, 1, "q.jsonl:1", &[]),
        row("invalid UTF-8", |c| c.train(&["--data", &c.write("latin1.jsonl", b"{\"text\": \"caf\xe9\"}\n")]), 1, "UTF-8", &[]),
        row("empty evaluation data", |c| c.train(&["--eval-data", &c.write("eval.jsonl", "\n")]), 1, "eval.jsonl", &[]),
        row("/dev/zero as data", |c| c.train(&["--data", "/dev/zero"]), 1, "longer than", &[]),
        row(".json that is not an array", |c| {
            c.train(&["--data", &c.write("obj.json", "{\"question\": \"a\", \"answer\": \"b\"}")])
        }, 1, "array", &[]),
        row("unknown format name", |c| c.train(&["--format", "yaml"]), 1, "yaml", &[]),
        row("directory without data files", |c| {
            c.write("empty-dir/readme.md", "no data here");
            c.train(&["--data", &c.arg("empty-dir")])
        }, 1, "no data files", &[]),
        row("glob matching nothing", |c| c.train(&["--data", &c.arg("shard-*.jsonl")]), 1, "no file matches", &[]),
        row(".gz that is not gzip", |c| {
            let d = c.write("plain.jsonl.gz", std::fs::read(c.path("train.jsonl")).unwrap());
            c.train(&["--data", &d])
        }, 1, "plain.jsonl.gz", &[]),
        row("garbage .parquet", |c| c.train(&["--data", &c.write("rows.parquet", b"PAR1 this is not parquet PAR1")]), 1, "Parquet", &[]),
        row("every record bad, skipped", |c| {
            let d = c.write("all-bad.jsonl", "{oops\n[1,2\n");
            c.train(&["--data", &d, "--skip-bad-records", "--max-steps", "0", "--epochs", "1"])
        }, 1, "no examples", &[]),
        row("responses cut off by max_seq_len", |c| {
            c.train(&["--max-seq-len", "6", "--max-steps", "0", "--epochs", "1"])
        }, 1, "no examples to train on", &[]),
        row("responses cut off, steps fixed", |c| c.train(&["--max-seq-len", "6"]), 1, "examples have no response token within max_seq_len", &[]),
        row("preference pairs trained as SFT", |c| {
            let d = c.write("pairs.jsonl", "{\"prompt\": \"what is 1 plus 1 ?\", \"chosen\": \"2\", \"rejected\": \"3\"}\n");
            c.train(&["--data", &d])
        }, 1, "preference", &[]),
        row("missing evaluation data", |c| c.train(&["--eval-data", "/no/such/eval.jsonl"]), 1, "/no/such/eval.jsonl", &[]),
        // --- models ---
        row("missing model", |c| c.train(&["--model", "/no/such/model"]), 1, "/no/such/model", &[]),
        row("model without config.json", |c| {
            std::fs::remove_file(c.path("llama-tiny/config.json")).unwrap();
            c.train(&[])
        }, 1, "config.json", &["llama-tiny"]),
        row("garbled config.json", |c| {
            c.write("llama-tiny/config.json", "{\"hidden_size\": ");
            c.train(&[])
        }, 1, "config.json", &["llama-tiny"]),
        row("truncated safetensors", |c| {
            let bytes = std::fs::read(c.path("llama-tiny/model.safetensors")).unwrap();
            c.write("llama-tiny/model.safetensors", &bytes[..bytes.len() / 2]);
            c.train(&[])
        }, 1, "safetensors", &["llama-tiny"]),
        row("garbage GGUF", |c| c.train(&["--model", &c.write("model.gguf", b"GGUF\x03\x00\x00\x00garbage")]), 1, "model.gguf", &["model.gguf"]),
        row("garbled tokenizer.json", |c| {
            c.write("llama-tiny/tokenizer.json", "{\"model\": 3}");
            c.train(&[])
        }, 1, "tokenizer", &["llama-tiny"]),
        row("tokenizer larger than the vocabulary", |c| {
            let big = shared().join("fixtures/smollm2-tokenizer/tokenizer.json");
            c.train(&["--tokenizer", big.to_str().unwrap()])
        }, 1, "vocabulary", &[]),
        row("missing chat template file", |c| c.train(&["--chat-template", "/no/such/template.jinja"]), 1, "template.jinja", &[]),
        row("chat template that does not parse", |c| {
            c.train(&["--chat-template", &c.write("broken.jinja", "{% for m in messages %}{{ m.content ")])
        }, 1, "template", &["broken.jinja"]),
        // --- settings ---
        row("grad_accum 0", |c| c.train(&["--grad-accum", "0"]), 1, "train.grad_accum", &[]),
        row("micro_batch_size 0", |c| c.train(&["--micro-batch-size", "0"]), 1, "train.micro_batch_size", &[]),
        row("mask ratio 1", |c| c.train(&["--mask-ratio", "1.0"]), 1, "gmt.mask_ratio", &[]),
        row("negative learning rate", |c| c.train(&["--lr=-0.001"]), 1, "optim.lr", &[]),
        row("beta2 above 1", |c| c.train(&["--beta2", "2"]), 1, "optim.beta2", &[]),
        row("negative eps", |c| c.train(&["--eps=-1"]), 1, "optim.eps", &[]),
        row("beta1 NaN", |c| c.train(&["--beta1", "nan"]), 1, "optim.beta1", &[]),
        row("weight decay NaN", |c| c.train(&["--weight-decay", "nan"]), 1, "optim.weight_decay", &[]),
        row("max_seq_len 1", |c| c.train(&["--max-seq-len", "1"]), 1, "data.max_seq_len", &[]),
        row("max_seq_len huge", |c| c.train(&["--max-seq-len", "18446744073709551615"]), 1, "data.max_seq_len", &[]),
        row("packing past the model's context", |c| c.train(&["--packing", "--max-seq-len", "100000"]), 1, "max_position_embeddings", &[]),
        row("eval fraction above 1", |c| c.train(&["--eval-fraction", "1.5"]), 1, "data.eval_fraction", &[]),
        row("DPO with packing", |c| c.train(&["--objective", "dpo", "--packing"]), 1, "data.packing", &[]),
        row("config file with a misspelt key", |c| {
            c.train(&["--config", &c.write("run.toml", "[optim]\nweight_decy = 0.1\n")])
        }, 1, "did you mean `weight_decay`", &["run.toml"]),
        row("config file that is not TOML", |c| c.train(&["--config", &c.write("run.toml", "[optim\nlr = \n")]), 1, "run.toml", &["run.toml"]),
        row("--force with --resume", |c| c.train(&["--force", "--resume"]), 2, "--force", &[]),
        // --- checkpoints ---
        row("flipped byte in the weights", |c| {
            flip_byte(&c.stopped_checkpoint().join("model.bin"), 100);
            c.train(&["--resume"])
        }, 1, "model.bin", &["run/checkpoints", "run/metrics.jsonl"]),
        row("truncated optimizer state", |c| {
            let file = c.stopped_checkpoint().join("optimizer.bin");
            let bytes = std::fs::read(&file).unwrap();
            std::fs::write(&file, &bytes[..bytes.len() - 10]).unwrap();
            c.train(&["--resume"])
        }, 1, "optimizer.bin", &["run/checkpoints"]),
        row("edited trainer.json", |c| {
            let file = c.stopped_checkpoint().join("trainer.json");
            let text = std::fs::read_to_string(&file).unwrap();
            std::fs::write(&file, text.replace("\"step\":1", "\"step\":0")).unwrap();
            c.train(&["--resume"])
        }, 1, "trainer.json", &["run/checkpoints"]),
        row("checkpoint without its manifest", |c| {
            std::fs::remove_file(c.stopped_checkpoint().join("manifest.json")).unwrap();
            c.train(&["--resume"])
        }, 1, "manifest.json missing", &["run/checkpoints"]),
        row("half-deleted checkpoint from a killed prune", |c| {
            let checkpoint = c.stopped_checkpoint();
            let pruned = checkpoint.with_file_name(".pruned-step-00000001");
            std::fs::rename(&checkpoint, &pruned).unwrap();
            std::fs::remove_file(pruned.join("model.bin")).unwrap();
            c.train(&["--resume"])
        }, 1, "no checkpoint", &[]),
        row("unreadable metrics history", |c| {
            let metrics = c.stopped_run().join("metrics.jsonl");
            let mut text = std::fs::read_to_string(&metrics).unwrap();
            text.push_str("{\"step\": 2, \"loss\": nul\n");
            std::fs::write(&metrics, text).unwrap();
            c.train(&["--resume"])
        }, 1, "metrics", &["run/metrics.jsonl", "run/checkpoints"]),
        row("resume with other settings", |c| {
            c.stopped_run();
            c.train(&["--resume", "--lr", "0.5"])
        }, 1, "settings differ", &["run/checkpoints"]),
        row("resume with no checkpoint", |c| c.train(&["--resume"]), 1, "no checkpoint", &[]),
        row("export of a damaged checkpoint", |c| {
            flip_byte(&c.stopped_checkpoint().join("model.bin"), 200);
            strings(&["export", "--checkpoint", &c.arg("run"), "--output", &c.arg("exported")])
        }, 1, "model.bin", &["run/checkpoints"]),
        row("eval of a damaged checkpoint", |c| {
            flip_byte(&c.stopped_checkpoint().join("optimizer.bin"), 50);
            c.eval_checkpoint()
        }, 1, "optimizer.bin", &["run/checkpoints"]),
        row("eval of a checkpoint without its manifest", |c| {
            std::fs::remove_file(c.stopped_checkpoint().join("manifest.json")).unwrap();
            c.eval_checkpoint()
        }, 1, "manifest.json missing", &["run/checkpoints"]),
        // --- outputs ---
        row("training over an earlier run", |c| {
            let run = c.stopped_run();
            std::fs::remove_dir_all(run.join("checkpoints")).unwrap();
            c.write("run/final/model.safetensors", "the earlier run's weights");
            c.train(&[])
        }, 1, "earlier run (final/, metrics.jsonl", &["run/final", "run/metrics.jsonl"]),
        row("training over earlier checkpoints", |c| {
            c.stopped_run();
            c.train(&[])
        }, 1, "--resume to continue it, --force to replace it", &["run/checkpoints", "run/metrics.jsonl"]),
        row("export over a model", |c| {
            c.stopped_run();
            strings(&["export", "--checkpoint", &c.arg("run"), "--output", &c.arg("llama-tiny")])
        }, 1, "already holds a model (config.json, model.safetensors", &["llama-tiny"]),
        row("make-data over data", |c| {
            sums(&c.dir, "test.jsonl", 3, 0);
            strings(&["make-data", "--output", &c.arg(""), "--train", "5", "--test", "2"])
        }, 1, "already holds test.jsonl, train.jsonl", &["train.jsonl", "test.jsonl"]),
        row("make-data of absurd size", |c| {
            strings(&["make-data", "--output", &c.arg("new"), "--train", "18446744073709551615"])
        }, 1, "at most", &[]),
        row("checkpoint that cannot be written", |c| {
            c.write("run/checkpoints", "not a directory");
            c.train(&[])
        }, 1, "checkpoint", &["run/checkpoints"]),
    ];
    // An unavailable backend exits with code 2 (where a GPU is expected, CUDA is there).
    if std::env::var_os("GMT_EXPECT_CUDA").is_none() {
        rows.push(row("unavailable backend", |c| c.train(&["--backend", "cuda"]), 2, "cuda", &[]));
    }
    rows
}

#[test]
fn every_bad_input_is_a_clear_error_that_leaves_the_files_alone() {
    let rows = rows();
    assert!(rows.len() >= 40, "the suite covers at least 40 cases");
    let template = Case::new("template");
    make_template_run(&template);
    let mut failures = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let case = Case::new(&format!("{i}"));
        let args = (r.setup)(&case);
        let before: Vec<_> = r
            .untouched
            .iter()
            .map(|p| snapshot(&case.path(p)))
            .collect();
        assert!(
            before
                .iter()
                .zip(r.untouched)
                .all(|(s, p)| !s.is_empty() || p.is_empty()),
            "{}: an untouched path does not exist",
            r.name
        );
        let had_final = case.path("run/final").exists();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = gmt(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        // `GMT_SHOW_ERRORS=1 cargo test … bad_input -- --nocapture` shows every message.
        if std::env::var_os("GMT_SHOW_ERRORS").is_some() {
            println!("--- {}: exit {:?}\n{stderr}", r.name, out.status.code());
        }
        let mut problems = Vec::new();
        if out.status.code() != Some(r.code) {
            problems.push(format!("exit {:?}, expected {}", out.status.code(), r.code));
        }
        if stderr.contains("panicked") {
            problems.push("panicked".into());
        }
        if !stderr.contains(r.message) {
            problems.push(format!("no `{}` in the message", r.message));
        }
        if case.path("run/final").exists() && !had_final {
            problems.push("a final model was written".into());
        }
        for (p, snap) in r.untouched.iter().zip(&before) {
            if &snapshot(&case.path(p)) != snap {
                problems.push(format!("{p} was changed"));
            }
        }
        if !problems.is_empty() {
            failures.push(format!("{}: {}\n{stderr}", r.name, problems.join("; ")));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// What the refusals above point to works: `--force` replaces an earlier run, export or
/// data set; settings given as relative paths are saved absolute, so a checkpoint is usable
/// from any working directory.
#[test]
fn force_replaces_outputs_and_checkpoints_name_absolute_paths() {
    let case = Case::new("force");
    let relative = [
        "train",
        "--backend",
        "cpu",
        "--model",
        "llama-tiny",
        "--data",
        "train.jsonl",
        "--output",
        "run",
        "--max-steps",
        "1",
    ];
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gmt"))
        .args(relative)
        .current_dir(&*case.dir)
        .env("GMT_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config: toml::Table =
        toml::from_str(&std::fs::read_to_string(case.path("run/config.toml")).unwrap()).unwrap();
    let model = config["model"]["path"].as_str().unwrap();
    assert_eq!(Path::new(model), case.path("llama-tiny"), "saved absolute");

    // From another working directory, the checkpoint still finds its base model.
    let checkpoint = case.arg("run/checkpoints/step-00000001");
    gmt_ok(&[
        "eval",
        "--backend",
        "cpu",
        "--model",
        &checkpoint,
        "--data",
        &case.arg("train.jsonl"),
    ]);

    let mut again = case.train(&["--max-steps", "1"]);
    let refused = gmt(&again.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(refused.status.code(), Some(1));
    again.push("--force".into());
    gmt_ok(&again.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(case.path("run/final/model.safetensors").is_file());

    let export = [
        "export",
        "--checkpoint",
        &case.arg("run"),
        "--output",
        &case.arg("llama-tiny"),
        "--force",
    ];
    gmt_ok(&export);
    let make = [
        "make-data",
        "--output",
        &case.arg(""),
        "--train",
        "5",
        "--test",
        "2",
        "--force",
    ];
    gmt_ok(&make);
    assert_eq!(
        std::fs::read_to_string(case.path("train.jsonl"))
            .unwrap()
            .lines()
            .count(),
        5
    );
}

/// Bad records at the end of the data are counted and named before training starts (the
/// pass that counts the steps reads every record), not lost because the last step is taken
/// before the stream reaches them.
#[test]
fn skipped_records_at_the_end_of_the_data_are_reported() {
    let case = Case::new("skip-at-end");
    let mut text = std::fs::read_to_string(case.path("train.jsonl")).unwrap();
    text.push_str("{oops\n{\"question\": \"what is 1 plus 1 ?\"}\n");
    let data = case.write("tail.jsonl", text);
    let args = case.train(&[
        "--data",
        &data,
        "--skip-bad-records",
        "--shuffle-buffer",
        "1",
        "--max-steps",
        "0",
        "--epochs",
        "1",
    ]);
    let out = gmt(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("tail.jsonl:9") && stderr.contains("tail.jsonl:10"),
        "{stderr}"
    );
}
