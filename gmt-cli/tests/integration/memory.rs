//! Memory: `gmt plan`, the check `gmt train` makes before loading, and `--checkpointing`.

use crate::common::*;
use crate::train::{args, assert_same_run};

/// The plan of a Mistral-7B-shaped config (nothing downloaded: only its `config.json`).
#[test]
fn plan_prints_the_budget_and_what_fits() {
    let dir = temp_dir("plan");
    let config = dir.join("config.json");
    std::fs::write(
        &config,
        serde_json::json!({
            "model_type": "mistral", "vocab_size": 32000, "hidden_size": 4096,
            "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 8, "max_position_embeddings": 32768,
        })
        .to_string(),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let plan = |extra: &[&str]| {
        gmt_ok(&[&["plan", "--model", config, "--max-seq-len", "1024"], extra].concat())
    };
    let out = plan(&["--device-memory", "80GiB"]);
    assert!(out.contains("7241732096 parameters"), "{out}");
    for part in [
        "weights",
        "gradients",
        "Γ",
        "optimizer",
        "activations",
        "workspace",
    ] {
        assert!(out.contains(part), "{part}: {out}");
    }
    // fp32: 16 bytes per parameter before activations, 108 GiB: no 80 GB card holds it;
    // pure bf16 (10 bytes) does, and is what the planner suggests.
    assert!(out.contains("does not fit"), "{out}");
    assert!(
        out.contains("suggested: --precision bf16 --checkpointing none"),
        "{out}"
    );
    // A 1 TB machine holds fp32, and a device given is taken for a GPU, where every mode
    // trains.
    let out = plan(&["--device-memory", "1TB"]);
    assert!(out.contains("fits: "), "{out}");
    assert!(!out.contains("not trainable"), "{out}");
    // 100 GiB: neither fp32 nor bf16-mixed, only bf16.
    let out = plan(&["--device-memory", "100GiB"]);
    for line in out
        .lines()
        .filter(|l| l.trim_start().starts_with("--precision"))
    {
        let fits = line.trim_end().ends_with("fits");
        assert_eq!(fits, line.contains("--precision bf16 "), "{out}");
    }
    let err = gmt_fails(&["plan", "--model", config, "--device-memory", "lots"], 2);
    assert!(err.contains("lots"), "{err}");
    let err = gmt_fails(&["plan", "--model", "/nonexistent/model"], 1);
    assert!(err.contains("/nonexistent/model"), "{err}");
}

/// A run whose estimate exceeds the device's memory is refused before loading, with the
/// numbers and what would fit; `--force` trains anyway.
#[test]
fn train_refuses_a_run_that_will_not_fit_unless_forced() {
    let run = tiny_run("fit", 12);
    let out = run.dir.join("out");
    let out = out.to_str().unwrap();
    let err = gmt_fails(
        &args(&run.model, &run.data, out, &["--device-memory", "1KiB"]),
        1,
    );
    assert!(err.contains("will not fit"), "{err}");
    assert!(err.contains("--force"), "{err}");
    assert!(!std::path::Path::new(out).join("metrics.jsonl").exists());
    gmt_ok(&args(
        &run.model,
        &run.data,
        out,
        &["--device-memory", "1KiB", "--force"],
    ));
    assert_eq!(metrics(out.as_ref()).len(), 4);
}

/// `--checkpointing balanced` recomputes instead of keeping, and trains the same run to the
/// bit; a run may be resumed with the other setting.
#[test]
fn balanced_checkpointing_trains_the_same_run() {
    let run = tiny_run("checkpointing", 12);
    let path = |name: &str| run.dir.join(name).to_str().unwrap().to_string();
    let (kept, recomputed, switched) = (path("kept"), path("recomputed"), path("switched"));
    gmt_ok(&args(&run.model, &run.data, &kept, &[]));
    gmt_ok(&args(
        &run.model,
        &run.data,
        &recomputed,
        &["--checkpointing", "balanced"],
    ));
    gmt_ok(&args(
        &run.model,
        &run.data,
        &switched,
        &["--checkpointing", "balanced", "--stop-after", "2"],
    ));
    gmt_ok(&args(&run.model, &run.data, &switched, &["--resume"]));
    assert_same_run(&recomputed, &kept);
    assert_same_run(&switched, &kept);
    let err = gmt_fails(
        &args(
            &run.model,
            &run.data,
            &path("bad"),
            &["--checkpointing", "all"],
        ),
        2,
    );
    assert!(err.contains("all"), "{err}");
}

/// Both bf16 modes train on the CPU (burn's Flex computes in bf16): their losses follow
/// fp32's closely, and a stopped run resumes to the same weights, to the bit (`bf16-mixed`'s
/// checkpoint holds the fp32 master weights and moments, the bf16 copy is made anew each
/// step; `bf16`'s holds the bf16 weights, moments and Kahan compensation).
#[test]
fn the_bf16_modes_train_on_the_cpu_and_resume_exactly() {
    let run = tiny_run("bf16", 12);
    let path = |name: &str| run.dir.join(name).to_str().unwrap().to_string();
    let losses = |run: &str| -> Vec<f64> {
        metrics(run.as_ref())
            .iter()
            .map(|m| m["loss"].as_f64().unwrap())
            .collect()
    };
    let fp32 = path("fp32");
    gmt_ok(&args(&run.model, &run.data, &fp32, &[]));
    let full = losses(&fp32);
    for mode in ["bf16-mixed", "bf16"] {
        let (straight, resumed) = (path(mode), path(&format!("{mode}-resumed")));
        let precision = ["--precision", mode];
        gmt_ok(&args(&run.model, &run.data, &straight, &precision));
        gmt_ok(&args(
            &run.model,
            &run.data,
            &resumed,
            &[&precision[..], &["--stop-after", "2"]].concat(),
        ));
        gmt_ok(&args(
            &run.model,
            &run.data,
            &resumed,
            &[&precision[..], &["--resume"]].concat(),
        ));
        assert_same_run(&resumed, &straight);
        let half = losses(&straight);
        assert_eq!(full.len(), half.len());
        for (step, (a, b)) in full.iter().zip(&half).enumerate() {
            // bf16 keeps 8 bits of mantissa: the forward pass rounds at ~0.4% per operation.
            assert!(
                (a - b).abs() <= 0.05 * a.abs(),
                "step {}: fp32 loss {a}, {mode} {b}",
                step + 1
            );
        }
        assert_ne!(full, half, "{mode} computes in bf16, not fp32");
    }
}

/// `--precision bf16-mixed` where the backend has no bf16 arithmetic (WGPU) is refused before
/// any step, naming the backend; a precision that does not exist is a usage error.
#[test]
fn bf16_mixed_is_refused_where_the_backend_has_no_bf16() {
    let run = tiny_run("precision", 12);
    let out = run.dir.join("mixed");
    let out = out.to_str().unwrap();
    let mut on_wgpu = args(&run.model, &run.data, out, &["--precision", "bf16-mixed"]);
    let backend = on_wgpu.iter().position(|a| *a == "cpu").unwrap();
    on_wgpu[backend] = "wgpu";
    let output = gmt(&on_wgpu);
    let err = String::from_utf8_lossy(&output.stderr).to_string();
    if err.contains("is not available") && !gmt_tests::under_ci() {
        eprintln!("SKIPPED the WGPU half: no adapter ({err})");
    } else {
        assert_eq!(output.status.code(), Some(1), "{err}");
        assert!(err.contains("bf16-mixed") && err.contains("wgpu"), "{err}");
        assert!(!std::path::Path::new(out).join("metrics.jsonl").exists());
    }
    let err = gmt_fails(
        &args(&run.model, &run.data, out, &["--precision", "fp16"]),
        2,
    );
    assert!(err.contains("fp16"), "{err}");
}
