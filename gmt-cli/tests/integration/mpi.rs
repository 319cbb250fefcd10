//! `mpirun -np 2 gmt train … --distributed mpi` on this machine (loopback): two ranks train
//! the run one process trains, to the bit; checkpoints resume under 2 ranks or 1; a killed
//! rank, an interrupt and ranks started differently end the job in bounded time.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::dpo::{dpo_args, pairs, timeless};
use crate::train::{args, assert_same_run, final_weights, train_args};

/// `mpirun` running `ranks` copies of `gmt args --distributed mpi`, stdout and stderr to
/// files in `dir` (a pipe that nobody reads while waiting would stall the ranks).
fn mpirun(dir: &Path, ranks: usize, args: &[&str]) -> (Command, [std::path::PathBuf; 2]) {
    let gmt = env!("CARGO_BIN_EXE_gmt");
    let mut cmd = Command::new("mpirun");
    cmd.args(["--oversubscribe", "-np", &ranks.to_string(), gmt])
        .args(args)
        .args(["--distributed", "mpi"]);
    with_mpi_env(&mut cmd);
    let logs = [dir.join("mpirun.out"), dir.join("mpirun.err")];
    cmd.stdout(Stdio::from(File::create(&logs[0]).unwrap()))
        .stderr(Stdio::from(File::create(&logs[1]).unwrap()));
    (cmd, logs)
}

/// What mpirun needs here: to run as root (CI's containers) and two ranks that do not spin
/// each other off the machine's two cores while one waits.
fn with_mpi_env(cmd: &mut Command) {
    cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_mpi_yield_when_idle", "1")
        .env("GMT_LOG", "warn");
}

/// Waits for `child` at most `limit`; a job still running then is killed and the test fails:
/// a hang is what these tests exist to rule out.
fn finish(mut child: Child, logs: &[std::path::PathBuf; 2], limit: Duration) -> Output {
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "mpirun still running after {limit:?}:\n{}",
                std::fs::read_to_string(&logs[1]).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Output {
        status,
        stdout: std::fs::read(&logs[0]).unwrap(),
        stderr: std::fs::read(&logs[1]).unwrap(),
    }
}

/// Runs the job to its end (at most two minutes); asserts success.
fn mpirun_ok(dir: &Path, ranks: usize, args: &[&str]) -> Output {
    let (mut cmd, logs) = mpirun(dir, ranks, args);
    let out = finish(cmd.spawn().unwrap(), &logs, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "mpirun -np {ranks} gmt {args:?} failed ({:?}):\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn two_ranks_train_what_one_process_trains_and_resume_under_either() {
    let run = tiny_run("mpi", 24);
    let (model, data) = (run.model.as_str(), run.data.as_str());
    let path = |name: &str| run.dir.join(name).to_str().unwrap().to_string();
    let (one, two, moved) = (path("one"), path("two"), path("moved"));

    gmt_ok(&args(model, data, &one, &[]));
    // Two ranks from the start to the end; only rank 0 reports.
    let out = mpirun_ok(&run.dir, 2, &args(model, data, &two, &[]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("finished 4 steps").count(), 1, "{stdout}");
    // Two ranks stopped at step 2 and resumed under two ranks, or in one process.
    let paused = path("paused");
    let stop = |out| args(model, data, out, &["--stop-after", "2"]);
    mpirun_ok(&run.dir, 2, &stop(&paused));
    mpirun_ok(&run.dir, 2, &args(model, data, &paused, &["--resume"]));
    mpirun_ok(&run.dir, 2, &stop(&moved));
    assert!(
        Path::new(&moved)
            .join("checkpoints/step-00000002/model.bin")
            .is_file()
    );
    gmt_ok(&args(model, data, &moved, &["--resume"]));

    assert_eq!(metrics(one.as_ref()).len(), 4);
    for run in [&two, &paused, &moved] {
        assert_same_run(run, &one);
    }

    // One process stopped at step 2, resumed under two ranks.
    let back = path("back");
    gmt_ok(&args(model, data, &back, &["--stop-after", "2"]));
    mpirun_ok(&run.dir, 2, &args(model, data, &back, &["--resume"]));
    assert_same_run(&back, &one);
}

#[test]
fn dpo_under_two_ranks_trains_what_one_process_trains() {
    let dir = temp_dir("mpi-dpo");
    let model = tiny_model(&dir, "llama-tiny");
    let model = model.to_str().unwrap();
    let data = pairs(&dir, "pairs.jsonl", 24, 0);
    let (one, two) = (dir.join("one"), dir.join("two"));
    let (one_s, two_s) = (one.to_str().unwrap(), two.to_str().unwrap());
    gmt_ok(&dpo_args(model, &data, one_s));
    // Stopped and resumed: rank 1 computes the reference log-probabilities itself at the
    // start and reads rank 0's table on resuming.
    let stopped = [dpo_args(model, &data, two_s), vec!["--stop-after", "2"]].concat();
    mpirun_ok(&dir, 2, &stopped);
    mpirun_ok(
        &dir,
        2,
        &[dpo_args(model, &data, two_s), vec!["--resume"]].concat(),
    );
    assert_eq!(timeless(&two), timeless(&one));
    assert!(final_weights(&two) == final_weights(&one));
}

#[test]
fn ranks_started_with_different_settings_are_refused_before_training() {
    let run = tiny_run("mpi-mismatch", 8);
    let out = run.dir.join("out");
    let out = out.to_str().unwrap();
    let base = args(&run.model, &run.data, out, &["--distributed", "mpi"]);
    // One rank with another weight decay: mpirun's MPMD form.
    let gmt = env!("CARGO_BIN_EXE_gmt");
    let mut cmd = Command::new("mpirun");
    cmd.args(["--oversubscribe", "-np", "1", gmt])
        .args(&base)
        .args([":", "-np", "1", gmt])
        .args(&base)
        .args(["--weight-decay", "0.5"]);
    with_mpi_env(&mut cmd);
    let logs = [run.dir.join("out.log"), run.dir.join("err.log")];
    cmd.stdout(Stdio::from(File::create(&logs[0]).unwrap()))
        .stderr(Stdio::from(File::create(&logs[1]).unwrap()));
    let result = finish(cmd.spawn().unwrap(), &logs, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "rank 1 is not running the same job as rank 0: the settings and flags differ"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!run.dir.join("out/metrics.jsonl").exists());

    // And micro-batches per step (2) that do not divide over the ranks.
    let (mut cmd, logs) = mpirun(&run.dir, 3, &args(&run.model, &run.data, out, &[]));
    let result = finish(cmd.spawn().unwrap(), &logs, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success(), "{stderr}");
    assert!(
        stderr.contains("`train.grad_accum`: 2 must be a multiple of the 3 ranks"),
        "{stderr}"
    );
}

/// A run long enough to be stopped from outside: tens of thousands of tiny steps.
fn long_run<'a>(model: &'a str, data: &'a str, out: &'a str) -> Vec<&'a str> {
    let mut args = train_args(model, data, out);
    let steps = args.iter().position(|a| *a == "--max-steps").unwrap() + 1;
    args[steps] = "0";
    args.extend(["--epochs", "20000", "--checkpoint-every", "0"]);
    args
}

/// Waits until the run has logged a step.
fn wait_for_a_step(run: &Path) {
    let started = Instant::now();
    while std::fs::read_to_string(run.join("metrics.jsonl")).map_or(true, |m| m.is_empty()) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no step within a minute"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `signal` (`-KILL`, `-INT`) to process `pid`.
fn signal(pid: u32, signal: &str) {
    let sent = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status();
    assert!(sent.unwrap().success(), "kill {signal} {pid}");
}

/// The pids of mpirun's ranks, by rank (Open MPI tells each its rank in its environment).
fn rank_pid(mpirun: u32, rank: usize) -> u32 {
    let children = std::fs::read_to_string(format!("/proc/{mpirun}/task/{mpirun}/children"))
        .expect("Linux's /proc");
    children
        .split_whitespace()
        .map(|pid| pid.parse::<u32>().unwrap())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                env.split(|&b| b == 0)
                    .any(|var| var == format!("OMPI_COMM_WORLD_RANK={rank}").as_bytes())
            })
        })
        .unwrap_or_else(|| panic!("no rank {rank} under mpirun {mpirun}"))
}

#[test]
fn a_killed_rank_ends_the_job_with_an_error_in_bounded_time() {
    let run = tiny_run("mpi-killed", 24);
    let out = run.dir.join("out");
    let (mut cmd, logs) = mpirun(
        &run.dir,
        2,
        &long_run(&run.model, &run.data, out.to_str().unwrap()),
    );
    let child = cmd.spawn().unwrap();
    wait_for_a_step(&out);
    let victim = rank_pid(child.id(), 1);
    signal(victim, "-KILL");
    let killed = Instant::now();
    let result = finish(child, &logs, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success(), "{stderr}");
    assert!(
        stderr.contains("rank 1") && stderr.contains("signal 9"),
        "{stderr}"
    );
    eprintln!(
        "the job ended {:?} after rank 1 was killed",
        killed.elapsed()
    );
}

#[test]
fn interrupting_mpirun_stops_every_rank_at_one_step_with_one_checkpoint() {
    let run = tiny_run("mpi-interrupt", 24);
    let out = run.dir.join("out");
    let (mut cmd, logs) = mpirun(
        &run.dir,
        2,
        &long_run(&run.model, &run.data, out.to_str().unwrap()),
    );
    // Open MPI waits this long after an interrupt, sends SIGTERM to every rank, waits as long
    // again and kills what is left: the ranks' time to finish the step and save.
    cmd.env("OMPI_MCA_odls_base_sigkill_timeout", "5");
    let child = cmd.spawn().unwrap();
    wait_for_a_step(&out);
    signal(child.id(), "-INT");
    let result = finish(child, &logs, Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&result.stdout);
    let stderr = String::from_utf8_lossy(&result.stderr);
    // mpirun reports the ranks' exit code 130 as a failure.
    assert!(!result.status.success(), "{stderr}");
    assert_eq!(stdout.matches("stopped at step").count(), 1, "{stdout}");
    let checkpoints: Vec<_> = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let steps = metrics(&out).len();
    assert_eq!(checkpoints, [format!("step-{steps:08}")], "{stderr}");
}
