//! Two replicas as threads on the CPU against one process: the same run, to the bit.

use std::sync::{Mutex, MutexGuard};

use burn::backend::ndarray::NdArrayDevice;
use gmt_models::TokenBatch;
use gmt_tests::TempDir;
use gmt_train::{CausalLm, Checkpoint, DataParallel, TrainError, Trainer};

use crate::trainer::{B, batch, bits, config, tiny_llama};

const CPU: NdArrayDevice = NdArrayDevice::Cpu;

/// Step `s`'s `n` micro-batches.
fn micro_batches(step: u64, n: u64) -> Vec<TokenBatch> {
    (0..n).map(|i| batch(step * n + i)).collect()
}

/// One data-parallel run per process at a time: the tests that make one take turns.
static TURN: Mutex<()> = Mutex::new(());

fn turn() -> MutexGuard<'static, ()> {
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn two_replicas(total_steps: u64) -> DataParallel<B, CausalLm> {
    let replicas = (0..2)
        .map(|_| Trainer::new(tiny_llama(), CausalLm, &config(), total_steps).unwrap())
        .collect();
    DataParallel::new(replicas, vec![CPU, CPU])
        .unwrap()
        .with_sync_check_every(1)
}

#[test]
fn two_replicas_are_one_process_with_twice_the_accumulation_to_the_bit() {
    let _turn = turn();
    let mut one = Trainer::new(tiny_llama(), CausalLm, &config(), 3).unwrap();
    let mut two = two_replicas(3);
    assert_eq!(two.replicas(), 2);
    for s in 0..3 {
        let a = one.step(micro_batches(s, 2)).unwrap();
        let b = two.step(micro_batches(s, 2)).unwrap();
        assert_eq!(a.step, b.step);
        assert_eq!(a.totals, b.totals, "step {}", a.step);
        assert_eq!(a.loss().to_bits(), b.loss().to_bits());
        assert_eq!(a.grad_norm().to_bits(), b.grad_norm().to_bits());
        assert_eq!(a.mask, b.mask, "the same Γ, so the same mask");
    }
    assert_eq!(bits(one.model()), bits(two.primary().model()));
    two.check_in_sync().unwrap();
}

/// With two micro-batches per replica the sums are grouped (g0 + g1) + (g2 + g3) rather than
/// ((g0 + g1) + g2) + g3: the same run up to float rounding, not to the bit.
#[test]
fn more_micro_batches_than_replicas_differ_only_by_rounding() {
    let _turn = turn();
    let mut one = Trainer::new(tiny_llama(), CausalLm, &config(), 1).unwrap();
    let mut two = two_replicas(1);
    let a = one.step(micro_batches(0, 4)).unwrap();
    let b = two.step(micro_batches(0, 4)).unwrap();
    assert_eq!(a.totals.weight, b.totals.weight);
    assert_eq!(b.totals.micro_batches, 4);
    assert!((a.loss() - b.loss()).abs() < 1e-6 * a.loss());
    assert!((a.grad_norm() - b.grad_norm()).abs() < 1e-5 * a.grad_norm());
}

/// Three micro-batches over two replicas: (g0 + g1) on replica 0, g2 on replica 1 — the
/// order one process adds them in, so the same bits.
#[test]
fn an_uneven_step_is_split_and_still_one_process_to_the_bit() {
    let _turn = turn();
    let mut one = Trainer::new(tiny_llama(), CausalLm, &config(), 1).unwrap();
    let mut two = two_replicas(1);
    let a = one.step(micro_batches(0, 3)).unwrap();
    let b = two.step(micro_batches(0, 3)).unwrap();
    assert_eq!(a.totals, b.totals);
    assert_eq!(a.mask, b.mask);
    assert_eq!(bits(one.model()), bits(two.primary().model()));
}

/// A replica whose micro-batch the model refuses fails the step on every replica — none waits
/// for it — and the run can go on.
#[test]
fn a_failing_replica_fails_the_step_everywhere_without_a_hang() {
    let _turn = turn();
    let mut two = two_replicas(2);
    let before = bits(two.primary().model());
    let out_of_vocabulary = TokenBatch::new(vec![500; 24], 2, 12).with_labels(vec![5; 24]);
    let err = two
        .step(vec![batch(0), out_of_vocabulary])
        .expect_err("replica 1's batch is refused");
    assert!(
        matches!(
            err,
            TrainError::ReplicaFailed {
                replica: Some(1),
                ..
            }
        ),
        "replica 0 reports replica 1's failure: {err}"
    );
    assert_eq!(bits(two.primary().model()), before);
    two.check_in_sync().unwrap();
    let step = two.step(micro_batches(0, 2)).unwrap();
    assert_eq!(step.step, 1);
}

#[test]
fn replicas_that_are_not_the_same_run_are_refused() {
    let _turn = turn();
    let mut ahead = Trainer::new(tiny_llama(), CausalLm, &config(), 2).unwrap();
    ahead.step(micro_batches(0, 1)).unwrap();
    let fresh = Trainer::new(tiny_llama(), CausalLm, &config(), 2).unwrap();
    let err = DataParallel::new(vec![fresh, ahead], vec![CPU, CPU])
        .err()
        .expect("different weights");
    let again = DataParallel::<B, CausalLm>::new(vec![], vec![])
        .err()
        .expect("no replicas");
    assert!(
        matches!(again, TrainError::InvalidConfig { key: "devices", .. }),
        "{again}"
    );
    assert!(
        matches!(
            err,
            TrainError::ReplicasDiverged {
                step: 0,
                replica: 1,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_checkpoint_of_two_replicas_resumes_the_run_bit_for_bit() {
    let _turn = turn();
    let mut straight = two_replicas(4);
    for s in 0..4 {
        straight.step(micro_batches(s, 2)).unwrap();
    }
    let straight_bits = bits(straight.primary().model());
    drop(straight);

    let dir = TempDir::new("dp-resume");
    let root = dir.path().join("checkpoints");
    let mut first = two_replicas(4);
    let replicas = (0..2)
        .map(|_| Trainer::new(tiny_llama(), CausalLm, &config(), 4).unwrap())
        .collect();
    let second = DataParallel::new(replicas, vec![CPU, CPU]).err();
    assert!(
        matches!(second, Some(TrainError::Collective(_))),
        "one run per process at a time: {second:?}"
    );
    for s in 0..2 {
        first.step(micro_batches(s, 2)).unwrap();
    }
    first.check_in_sync().unwrap();
    let saved = first
        .primary()
        .save_checkpoint(&root, &2u64, &[], 1)
        .unwrap();
    drop(first);

    let checkpoint = Checkpoint::open(&saved).unwrap();
    let replicas = (0..2)
        .map(|_| Trainer::resume(tiny_llama(), CausalLm, &config(), &checkpoint, &CPU).unwrap())
        .collect();
    let mut resumed = DataParallel::new(replicas, vec![CPU, CPU]).unwrap();
    for s in 2..4 {
        resumed.step(micro_batches(s, 2)).unwrap();
    }
    assert!(resumed.primary().is_done());
    assert_eq!(bits(resumed.primary().model()), straight_bits);
}
