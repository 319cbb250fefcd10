//! `gmt sweep` on the tiny fixture Llama: a 2 × 2 grid (mask ratio × seed) stopped between runs
//! and in the middle of a run, then resumed, gives the results of an uninterrupted sweep.

use crate::common::*;
use std::path::Path;

/// A sweep file over `run`'s model and data: ratios 0 and 0.3, seeds 1 and 2, 3 steps each,
/// then loss and answer accuracy on `test`.
fn sweep_file(run: &TinyRun, test: &Path, out: &Path, axis: &str) -> String {
    format!(
        r#"output_dir = "{out}"
seeds = [1, 2]

[base.model]
path = "{model}"
[base.data]
train = "{data}"
max_seq_len = 32
shuffle_buffer = 8
[base.train]
backend = "cpu"
micro_batch_size = 2
max_steps = 3
[base.optim]
lr = 1e-2

[axes]
"{axis}" = [0.0, 0.3]

[eval]
data = "{test}"
task = "gsm8k"
max_new_tokens = 4
max_seq_len = 32
"#,
        out = out.display(),
        model = run.model,
        data = run.data,
        test = test.display(),
    )
}

/// `results.jsonl` without its timings, which differ from sitting to sitting.
fn results_without_timing(sweep: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(sweep.join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|line| {
            let mut row: serde_json::Value = serde_json::from_str(line).unwrap();
            row.as_object_mut().unwrap().remove("timing");
            row
        })
        .collect()
}

#[test]
fn a_sweep_stopped_and_rerun_gives_the_results_of_an_uninterrupted_one() {
    let run = tiny_run("sweep", 24);
    let test = sums(&run.dir, "test.jsonl", 6, 100);
    let write = |name: &str| {
        let out = run.dir.join(name);
        let file = run.dir.join(format!("{name}.toml"));
        std::fs::write(&file, sweep_file(&run, &test, &out, "gmt.mask_ratio")).unwrap();
        (file.to_str().unwrap().to_string(), out)
    };
    let (straight_file, straight) = write("straight");
    let (split_file, split) = write("split");

    let out = gmt_ok(&["sweep", "--config", &straight_file]);
    assert!(out.contains("all 4 runs done"), "{out}");

    // One run, then half of the next (stopped after its first step with a checkpoint), then
    // the rest.
    let out = gmt_ok(&["sweep", "--config", &split_file, "--max-runs", "1"]);
    assert!(out.contains("stopped after 1 runs"), "{out}");
    let out = gmt_ok(&["sweep", "--config", &split_file, "--stop-after", "1"]);
    assert!(out.contains("stopped during"), "{out}");
    let listed = gmt_ok(&["sweep", "--config", &split_file, "--list"]);
    let states: Vec<&str> = listed
        .lines()
        .map(|l| l.split_once("  ").unwrap().1)
        .collect();
    assert_eq!(
        states,
        [
            "done",
            "partial (resumes from its checkpoint)",
            "to do",
            "to do"
        ],
        "{listed}"
    );
    gmt_ok(&["sweep", "--config", &split_file]);

    let rows = results_without_timing(&straight);
    assert_eq!(rows.len(), 4);
    assert_eq!(rows, results_without_timing(&split));
    let configs: Vec<(&str, u64)> = rows
        .iter()
        .map(|r| (r["config"].as_str().unwrap(), r["seed"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        configs,
        [
            ("mask_ratio=0.0", 1),
            ("mask_ratio=0.3", 1),
            ("mask_ratio=0.0", 2),
            ("mask_ratio=0.3", 2)
        ]
    );
    for row in &rows {
        assert_eq!(row["steps"], 3);
        assert_eq!(row["eval"]["total"], 6, "{row}");
        let kept = row["mean_kept_fraction"].as_f64().unwrap();
        let ratio = row["changes"]["gmt.mask_ratio"].as_f64().unwrap();
        // At least 1 − ratio is kept: entries tied at the threshold (the zero gradients of
        // embedding rows no token used) are all kept.
        if ratio == 0.0 {
            assert_eq!(kept, 1.0, "{row}");
        } else {
            assert!(kept >= 1.0 - ratio - 1e-9 && kept < 0.8, "{row}");
        }
    }
    // Seeds change the data order, so the runs of one configuration differ.
    assert_ne!(rows[0]["train_loss"], rows[2]["train_loss"]);

    let summary = std::fs::read_to_string(split.join("summary.md")).unwrap();
    assert!(
        summary.contains("4 of 4 runs finished, over 2 configurations"),
        "{summary}"
    );
    assert!(
        summary.contains("`mask_ratio=0.0` (baseline) | 2 |"),
        "{summary}"
    );
    assert!(summary.contains("| `mask_ratio=0.3` | 2 |"), "{summary}");
    assert!(split.join("summary.svg").is_file());
    // A finished run keeps its final model, not the checkpoints it no longer needs.
    let first = split.join("runs/mask_ratio=0.0/seed-1");
    assert!(first.join("final/model.safetensors").is_file());
    assert!(!first.join("checkpoints").exists());

    // A rerun of a finished sweep trains nothing and reports the same.
    let again = gmt_ok(&["sweep", "--config", &split_file]);
    assert!(again.contains("all 4 runs done"), "{again}");
    assert_eq!(rows, results_without_timing(&split));
}

#[test]
fn a_bad_axis_name_is_an_error_before_any_run() {
    let run = tiny_run("sweep-bad-axis", 8);
    let test = sums(&run.dir, "test.jsonl", 2, 100);
    let out = run.dir.join("sweep");
    let file = run.dir.join("sweep.toml");
    std::fs::write(&file, sweep_file(&run, &test, &out, "gmt.mask_ratoi")).unwrap();
    let err = gmt_fails(&["sweep", "--config", file.to_str().unwrap()], 1);
    assert!(err.contains("sweep.toml"), "{err}");
    assert!(err.contains("mask_ratoi"), "{err}");
    assert!(err.contains("did you mean `mask_ratio`"), "{err}");
    assert!(!out.exists(), "nothing was created");
}

#[test]
fn a_sweep_file_changed_under_finished_runs_is_refused() {
    let run = tiny_run("sweep-changed", 8);
    let test = sums(&run.dir, "test.jsonl", 2, 100);
    let out = run.dir.join("sweep");
    let file = run.dir.join("sweep.toml");
    let text = sweep_file(&run, &test, &out, "gmt.mask_ratio");
    std::fs::write(&file, &text).unwrap();
    let file = file.to_str().unwrap();
    gmt_ok(&["sweep", "--config", file, "--max-runs", "1"]);
    std::fs::write(file, text.replace("lr = 1e-2", "lr = 2e-2")).unwrap();
    let err = gmt_fails(&["sweep", "--config", file], 1);
    assert!(err.contains("trained with other settings"), "{err}");
    assert!(err.contains("lr"), "{err}");
}
