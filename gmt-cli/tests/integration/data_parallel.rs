//! `gmt train --devices cpu,cpu`: two replicas on the CPU train the run one process trains,
//! to the bit, and a checkpoint of either resumes on the other.

use crate::common::*;
use crate::train::{args, assert_same_run};

#[test]
fn two_cpu_replicas_train_what_one_process_trains_and_resume_on_either() {
    let dir = temp_dir("data-parallel");
    let model = tiny_model(&dir, "llama-tiny");
    let data = sums(&dir, "train.jsonl", 24, 0);
    let (model, data) = (model.to_str().unwrap(), data.to_str().unwrap());
    let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let (one, two, moved) = (path("one"), path("two"), path("moved"));
    let devices = ["--devices", "cpu,cpu"];

    gmt_ok(&args(model, data, &one, &[]));
    // Two replicas, stopped at step 2 and resumed on two replicas…
    gmt_ok(&args(
        model,
        data,
        &two,
        &[&devices[..], &["--stop-after", "2"]].concat(),
    ));
    gmt_ok(&args(
        model,
        data,
        &two,
        &[&devices[..], &["--resume"]].concat(),
    ));
    // …or resumed on one device.
    gmt_ok(&args(
        model,
        data,
        &moved,
        &[&devices[..], &["--stop-after", "2"]].concat(),
    ));
    gmt_ok(&args(model, data, &moved, &["--resume"]));

    assert_eq!(metrics(one.as_ref()).len(), 4);
    for run in [&two, &moved] {
        assert_same_run(run, &one);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn devices_that_cannot_work_are_refused_before_training() {
    let dir = temp_dir("data-parallel-bad");
    let model = tiny_model(&dir, "llama-tiny");
    let data = sums(&dir, "train.jsonl", 8, 0);
    let (model, data) = (model.to_str().unwrap(), data.to_str().unwrap());
    let out = dir.join("out");
    let out = out.to_str().unwrap();
    let refused = |extra: &[&str], code: i32, expected: &str| {
        let stderr = gmt_fails(&args(model, data, out, extra), code);
        assert!(stderr.contains(expected), "{extra:?}: {stderr}");
    };
    refused(&["--devices", "cpu,cpu,cpu"], 1, "train.grad_accum");
    refused(&["--devices", "cpu,cuda:0"], 1, "mixes backends");
    refused(&["--devices", "cuda:0,cuda:0"], 1, "names cuda:0 twice");
    // `--backend cpu` is among the arguments.
    refused(
        &["--devices", "wgpu:0,wgpu:1"],
        1,
        "not a device of --backend cpu",
    );
    refused(&["--devices", "tpu:0"], 2, "unknown device `tpu:0`");
    assert!(!dir.join("out/metrics.jsonl").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
