//! `gmt train --objective dpo` and `gmt eval --objective dpo` on the tiny Llama: metrics,
//! precomputed against resident reference, exact resume, and data of the wrong kind refused.

use std::path::Path;

use serde_json::{Value, json};

use crate::common::{gmt_fails, gmt_ok, metrics, sums, temp_dir, tiny_model, train_command};

/// `n` preference pairs in the word vocabulary: the right sum chosen over a wrong one.
pub(crate) fn pairs(dir: &Path, name: &str, n: usize, offset: usize) -> String {
    let lines: Vec<String> = (0..n)
        .map(|i| {
            let (a, b) = ((i + offset) % 20, (i * 7 + offset) % 20);
            let answer = |s: usize| format!("{a} + {b} = {s} #### {s}");
            json!({
                "prompt": format!("what is {a} plus {b} ?"),
                "chosen": answer(a + b),
                "rejected": answer(a + b + 1),
            })
            .to_string()
        })
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path.to_str().unwrap().to_string()
}

pub(crate) fn dpo_args<'a>(model: &'a str, data: &'a str, out: &'a str) -> Vec<&'a str> {
    let mut args = train_command(model, data, out);
    args.extend([
        "--objective",
        "dpo",
        "--beta",
        "0.5",
        "--max-steps",
        "4",
        "--micro-batch-size",
        "2",
        "--grad-accum",
        "2",
        "--lr",
        "2e-3",
        "--mask-ratio",
        "0.3",
        "--eval-fraction",
        "0.25",
        "--eval-every",
        "2",
        "--seed",
        "3",
    ]);
    args
}

/// The metrics without the wall-clock ones.
pub(crate) fn timeless(run: &Path) -> Vec<Value> {
    metrics(run)
        .into_iter()
        .map(|mut m| {
            let m2 = m.as_object_mut().unwrap();
            m2.retain(|k, _| !["elapsed_secs", "tokens_per_sec"].contains(&k.as_str()));
            m
        })
        .collect()
}

#[test]
fn dpo_trains_reports_rewards_and_resumes_bit_for_bit() {
    let dir = temp_dir("dpo");
    let model = tiny_model(&dir, "llama-tiny");
    let model = model.to_str().unwrap();
    let data = pairs(&dir, "pairs.jsonl", 24, 0);
    let (straight, split, resident) = (
        dir.join("straight"),
        dir.join("split"),
        dir.join("resident"),
    );

    gmt_ok(&dpo_args(model, &data, straight.to_str().unwrap()));
    let m = timeless(&straight);
    assert_eq!(m.len(), 4);
    // The policy starts as the reference: every reward 0, the loss log 2.
    assert!(
        (m[0]["loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-5,
        "{}",
        m[0]
    );
    // Equal to rounding, not to the bit: the reference's log-probabilities were computed over
    // the data in file order, the step's over shuffled batches of other shapes, and on some
    // CPUs the kernels' rounding of a row depends on the rows around it (exactly 0 on the AMD
    // EPYC machines this test was written on, 4.8e-7 on an Intel Xeon with AVX-512).
    let margin = m[0]["rewards/margin"].as_f64().unwrap();
    assert!(margin.abs() < 1e-5, "{}", m[0]);
    assert_eq!(
        m[0]["tokens"].as_u64(),
        Some(4),
        "2 micro-batches × 2 pairs"
    );
    for key in [
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracy",
        "logps/chosen",
        "logps/rejected",
    ] {
        assert!(m[3][key].is_f64(), "{key} in {}", m[3]);
    }
    assert!(
        m[1]["eval_rewards/accuracy"].is_f64() && m[1]["eval_loss"].is_f64(),
        "{}",
        m[1]
    );
    assert!(straight.join("reference_logps.json").is_file());

    // Stop after 2 steps and resume: the same metrics and bit-identical weights, with the
    // reference log-probabilities read back rather than recomputed.
    let mut first = dpo_args(model, &data, split.to_str().unwrap());
    first.extend(["--stop-after", "2"]);
    gmt_ok(&first);
    let table = split.join("reference_logps.json");
    let saved = std::fs::read(&table).unwrap();
    let mut second = dpo_args(model, &data, split.to_str().unwrap());
    second.push("--resume");
    gmt_ok(&second);
    assert_eq!(std::fs::read(&table).unwrap(), saved);
    assert_eq!(timeless(&split), m);
    let weights = |run: &Path| std::fs::read(run.join("final/model.safetensors")).unwrap();
    assert!(
        weights(&split) == weights(&straight),
        "the resumed DPO run's weights differ"
    );

    // A resident reference gives the same run (its log-probabilities come from batches of
    // other shapes, so equal to rounding, not to the bit).
    let mut args = dpo_args(model, &data, resident.to_str().unwrap());
    args.extend(["--reference-logps", "resident"]);
    gmt_ok(&args);
    assert!(!resident.join("reference_logps.json").exists());
    for (a, b) in metrics(&resident).iter().zip(&m) {
        let (x, y) = (a["loss"].as_f64().unwrap(), b["loss"].as_f64().unwrap());
        assert!((x - y).abs() < 1e-4, "resident {x} vs precomputed {y}");
    }

    // Evaluation of the trained policy against its starting point on held-out pairs.
    let test = pairs(&dir, "test.jsonl", 8, 100);
    let final_model = straight.join("final");
    let out = gmt_ok(&[
        "eval",
        "--backend",
        "cpu",
        "--model",
        final_model.to_str().unwrap(),
        "--data",
        &test,
        "--objective",
        "dpo",
        "--reference",
        model,
        "--beta",
        "0.5",
        "--json",
    ]);
    let report: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["pairs"].as_u64(), Some(8), "{report}");
    assert!(report["rewards/accuracy"].is_f64(), "{report}");
    let err = gmt_fails(
        &[
            "eval",
            "--backend",
            "cpu",
            "--model",
            model,
            "--data",
            &test,
            "--objective",
            "dpo",
        ],
        1,
    );
    assert!(err.contains("--reference"), "{err}");
}

#[test]
fn data_of_the_wrong_kind_and_bad_dpo_settings_are_refused() {
    let dir = temp_dir("dpo-refused");
    let model = tiny_model(&dir, "llama-tiny");
    let model = model.to_str().unwrap();
    let pair_data = pairs(&dir, "pairs.jsonl", 4, 0);
    let sft_data = sums(&dir, "sums.jsonl", 4, 0);
    let out = dir.join("out");
    let out = out.to_str().unwrap();

    let err = gmt_fails(&train_command(model, &pair_data, out), 1);
    assert!(
        err.contains("preference pairs") && err.contains("--objective dpo"),
        "{err}"
    );
    let mut args = train_command(model, sft_data.to_str().unwrap(), out);
    args.extend(["--objective", "dpo"]);
    let err = gmt_fails(&args, 1);
    assert!(err.contains("DPO trains on preference pairs"), "{err}");
    for (flag, value, key) in [
        ("--beta", "0", "dpo.beta"),
        ("--label-smoothing", "0.5", "dpo.label_smoothing"),
        ("--max-prompt-len", "600", "data.max_prompt_len"),
    ] {
        let mut args = train_command(model, &pair_data, out);
        args.extend(["--objective", "dpo", flag, value]);
        let err = gmt_fails(&args, 1);
        assert!(err.contains(key), "{flag} {value}: {err}");
    }
    let mut args = train_command(model, &pair_data, out);
    args.extend(["--objective", "dpo", "--packing"]);
    let err = gmt_fails(&args, 1);
    assert!(err.contains("data.packing"), "{err}");
}
