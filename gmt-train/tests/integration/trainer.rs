//! A few steps, a checkpoint, a resume: the continued run is the uninterrupted one, to the bit.

use burn::backend::{Autodiff, NdArray};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use gmt_core::{GmtConfig, MaskScope};
use gmt_models::{LlamaForCausalLm, TokenBatch, load_hf_dir};
use gmt_tests::TempDir;
use gmt_train::{
    CausalLm, Checkpoint, GradientAllReduce, OptimConfig, ReplicaStep, ScheduleConfig,
    ScheduleKind, TrainError, Trainer, TrainerConfig,
};

pub(crate) type B = Autodiff<NdArray>;

pub(crate) fn tiny_llama() -> LlamaForCausalLm<B> {
    load_hf_dir(gmt_tests::hf_fixture("llama-tiny"), &Default::default())
        .expect("the tiny Llama fixture in ../shared")
}

/// Micro-batch `i`: 2 rows of 12 deterministic tokens (vocabulary 96), labels on the last 8.
pub(crate) fn batch(i: u64) -> TokenBatch {
    let ids: Vec<u32> = (0..24u64)
        .map(|j| ((i * 31 + j * 7 + (j * j) % 5) % 93 + 3) as u32)
        .collect();
    let labels = ids
        .iter()
        .enumerate()
        .map(|(j, &t)| if j % 12 < 4 { -100 } else { t as i64 })
        .collect();
    TokenBatch::new(ids, 2, 12).with_labels(labels)
}

pub(crate) fn config() -> TrainerConfig {
    TrainerConfig {
        gmt: GmtConfig::new(0.3)
            .with_scope(MaskScope::Global)
            .with_seed(5)
            .with_max_grad_norm(Some(1.0)),
        optim: OptimConfig {
            lr: 3e-3,
            weight_decay: 0.01,
            ..OptimConfig::default()
        },
        schedule: ScheduleConfig {
            kind: ScheduleKind::Cosine,
            warmup_steps: 1,
            min_lr_ratio: 0.1,
        },
    }
}

/// The model's weights as raw bits.
pub(crate) fn bits(model: &LlamaForCausalLm<impl AutodiffBackend>) -> Vec<(String, Vec<u32>)> {
    model
        .hf_weights()
        .into_iter()
        .map(|(name, t)| (name, t.data.iter().map(|x| x.to_bits()).collect()))
        .collect()
}

/// Two micro-batches per step, step `s` reading batches 2s and 2s + 1.
fn step_batches(step: u64) -> [TokenBatch; 2] {
    [batch(2 * step), batch(2 * step + 1)]
}

/// The tiny Llama's run of `config()`, resumed from `checkpoint`.
fn resume(checkpoint: &Checkpoint) -> Trainer<B, CausalLm> {
    let device = Default::default();
    Trainer::resume(tiny_llama(), CausalLm, &config(), checkpoint, &device).unwrap()
}

#[test]
fn checkpoint_and_resume_continue_the_run_bit_for_bit() {
    let mut straight = Trainer::new(tiny_llama(), CausalLm, &config(), 4).unwrap();
    let mut losses = Vec::new();
    for s in 0..4 {
        let step = straight.step(step_batches(s)).unwrap();
        assert_eq!(step.step, s + 1);
        assert_eq!(step.totals.micro_batches, 2);
        assert_eq!(
            step.totals.weight, 32.0,
            "2 micro-batches × 2 rows × 8 labels"
        );
        let kept = step.mask.kept_fraction();
        assert!(
            (kept - 0.7).abs() < 0.01,
            "global ratio 0.3 keeps ~70%: {kept}"
        );
        losses.push(step.loss());
    }
    assert!(straight.is_done());
    assert!(losses[3] < losses[0], "the loss falls: {losses:?}");

    let dir = TempDir::new("train-resume");
    let root = dir.path().join("checkpoints");
    let mut first = Trainer::new(tiny_llama(), CausalLm, &config(), 4).unwrap();
    for s in 0..2 {
        first.step(step_batches(s)).unwrap();
    }
    let position = 2u64; // the caller's data position: here, the next step's index
    let saved = first
        .save_checkpoint(&root, &position, &[("note.txt", b"extra")], 1)
        .unwrap();
    drop(first);
    assert_eq!(saved, Checkpoint::latest(&root).unwrap().unwrap().dir());
    assert_eq!(std::fs::read(saved.join("note.txt")).unwrap(), b"extra");

    // A fresh model: weights, optimizer state, counters and the run's length come from the
    // checkpoint.
    let checkpoint = Checkpoint::open(&saved).unwrap();
    let mut resumed = resume(&checkpoint);
    assert_eq!(resumed.progress().step, 2);
    assert_eq!(resumed.progress().total_steps, 4);
    let mut next: u64 = checkpoint.data_position().unwrap();
    while !resumed.is_done() {
        let step = resumed.step(step_batches(next)).unwrap();
        assert!(
            step.mask.kept_fraction() < 0.75,
            "the resumed run still masks"
        );
        assert_eq!(step.loss(), losses[next as usize], "step {}", step.step);
        next += 1;
    }
    assert_eq!(bits(resumed.model()), bits(straight.model()));
    assert_eq!(
        resumed.evaluate(&[batch(100)]).unwrap(),
        straight.evaluate(&[batch(100)]).unwrap()
    );

    // keep = 1: saving step 4 prunes step 2.
    resumed.save_checkpoint(&root, &next, &[], 1).unwrap();
    let latest = Checkpoint::latest(&root).unwrap().unwrap();
    assert!(latest.dir().ends_with("step-00000004"));
    assert!(!saved.exists());
}

#[test]
fn a_step_with_nothing_to_learn_is_an_error_and_changes_nothing() {
    let mut trainer = Trainer::new(tiny_llama(), CausalLm, &config(), 2).unwrap();
    let before = bits(trainer.model());
    let unlabeled = TokenBatch::new((3..27).collect(), 2, 12).with_labels(vec![-100; 24]);
    let err = trainer.step([unlabeled.clone()]).err().unwrap();
    assert!(
        matches!(
            err,
            TrainError::NothingToLearn {
                step: 1,
                micro_batches: 1
            }
        ),
        "{err}"
    );
    assert_eq!(trainer.progress().step, 0);
    assert_eq!(bits(trainer.model()), before);
    // One empty micro-batch among others is counted and passed over.
    let step = trainer.step([unlabeled, batch(0)]).unwrap();
    assert_eq!(step.totals.empty_micro_batches, 1);
    assert_eq!(step.totals.weight, 16.0);
}

/// An all-reduce stand-in for a second replica that saw the same micro-batches: the sums
/// and totals double, so Γ is unchanged.
struct MirrorReplica;

impl GradientAllReduce<B> for MirrorReplica {
    fn all_reduce(
        &mut self,
        model: &LlamaForCausalLm<B>,
        local: Result<ReplicaStep, TrainError>,
    ) -> Result<ReplicaStep, TrainError> {
        let ReplicaStep {
            grad_sum,
            mut totals,
        } = local?;
        totals.weight *= 2.0;
        totals.loss_sum *= 2.0;
        totals.tokens *= 2;
        let mut double = Double {
            grads: grad_sum,
            backend: std::marker::PhantomData,
        };
        model.visit(&mut double);
        Ok(ReplicaStep {
            grad_sum: double.grads,
            totals,
        })
    }
}

struct Double<B> {
    grads: GradientsParams,
    backend: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Double<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads.register(param.id, g.mul_scalar(2.0));
        }
    }
}

/// A trainer can be moved to the thread that drives its device (data-parallel runs).
#[test]
fn a_trainer_moves_between_threads() {
    fn send<T: Send>(_: &T) {}
    let trainer = Trainer::new(tiny_llama(), CausalLm, &config(), 1)
        .unwrap()
        .with_all_reduce(MirrorReplica);
    send(&trainer);
}

#[test]
fn the_all_reduce_seam_sees_every_step() {
    let mut plain = Trainer::new(tiny_llama(), CausalLm, &config(), 1).unwrap();
    let mut mirrored = Trainer::new(tiny_llama(), CausalLm, &config(), 1)
        .unwrap()
        .with_all_reduce(MirrorReplica);
    let a = plain.step(step_batches(0)).unwrap();
    let b = mirrored.step(step_batches(0)).unwrap();
    assert_eq!(b.totals.weight, 2.0 * a.totals.weight);
    assert_eq!(a.loss(), b.loss());
    assert_eq!(bits(plain.model()), bits(mirrored.model()));
}

/// One way a checkpoint file gets damaged.
type Damage = fn(&std::path::Path);

fn flip_byte(path: &std::path::Path, at: fn(usize) -> usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let i = at(bytes.len());
    bytes[i] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
}

/// Every damage is found by the manifest before anything is loaded, and the error names the
/// checkpoint and the file: a flipped header or data byte, a truncated record, an edited
/// `trainer.json`, a missing or garbled manifest.
#[test]
fn a_damaged_checkpoint_is_an_error_naming_the_file() {
    let dir = TempDir::new("train-damaged");
    let trainer = Trainer::new(tiny_llama(), CausalLm, &config(), 1).unwrap();
    let cases: [(&str, &str, Damage); 7] = [
        ("model header byte", "model.bin", |p| {
            flip_byte(&p.join("model.bin"), |_| 3);
        }),
        ("optimizer data byte", "optimizer.bin", |p| {
            flip_byte(&p.join("optimizer.bin"), |n| n / 2);
        }),
        ("truncated weights", "model.bin", |p| {
            let bytes = std::fs::read(p.join("model.bin")).unwrap();
            std::fs::write(p.join("model.bin"), &bytes[..bytes.len() / 3]).unwrap();
        }),
        ("edited counters", "trainer.json", |p| {
            let text = std::fs::read_to_string(p.join("trainer.json")).unwrap();
            std::fs::write(
                p.join("trainer.json"),
                text.replace("\"step\":0", "\"step\":7"),
            )
            .unwrap();
        }),
        ("garbled manifest", "manifest.json", |p| {
            std::fs::write(p.join("manifest.json"), b"{ not json").unwrap();
        }),
        ("missing manifest", "manifest.json", |p| {
            std::fs::remove_file(p.join("manifest.json")).unwrap();
        }),
        ("missing optimizer", "optimizer.bin", |p| {
            std::fs::remove_file(p.join("optimizer.bin")).unwrap();
        }),
    ];
    for (what, file, damage) in cases {
        let root = dir.path().join(what.replace(' ', "-"));
        let saved = trainer.save_checkpoint(&root, &(), &[], 1).unwrap();
        Checkpoint::open(&saved).expect("intact before the damage");
        damage(&saved);
        let err = Checkpoint::open(&saved).expect_err(what).to_string();
        assert!(
            err.contains(file) && err.contains("step-00000000"),
            "{what}: {err}"
        );
        // `latest` (what a resume uses) refuses it too.
        let err = Checkpoint::latest(&root).expect_err(what).to_string();
        assert!(err.contains(file), "{what}: {err}");
    }
}

/// A record whose manifest is consistent but whose bytes are not a record of this model
/// (another model, another burn version) is an error from `resume`, not a panic.
#[test]
fn a_record_of_another_model_is_an_error_not_a_panic() {
    let dir = TempDir::new("train-foreign-record");
    let root = dir.path().join("checkpoints");
    let trainer = Trainer::new(tiny_llama(), CausalLm, &config(), 1).unwrap();
    let saved = trainer.save_checkpoint(&root, &(), &[], 1).unwrap();
    let files: Vec<(String, Vec<u8>)> = ["optimizer.bin", "trainer.json"]
        .iter()
        .map(|f| (f.to_string(), std::fs::read(saved.join(f)).unwrap()))
        .collect();
    let mut with_garbage: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    let garbage = [0xffu8; 64];
    with_garbage.push(("model.bin", &garbage));
    let saved = gmt_train::write_checkpoint(&root, 1, &with_garbage, 1).unwrap();
    let checkpoint = Checkpoint::open(&saved).expect("the manifest matches the files");
    let err = Trainer::resume(
        tiny_llama(),
        CausalLm,
        &config(),
        &checkpoint,
        &Default::default(),
    )
    .err()
    .expect("garbage weights are refused")
    .to_string();
    assert!(err.contains("model.bin"), "{err}");
}

/// Pruning renames a checkpoint out of the `step-*` names before deleting it; what an
/// interrupted write or prune leaves is never chosen by `latest` and is removed by the next
/// write.
#[test]
fn leftovers_of_interrupted_writes_and_prunes_are_never_resumed() {
    let dir = TempDir::new("train-leftovers");
    let root = dir.path().join("checkpoints");
    let mut trainer = Trainer::new(tiny_llama(), CausalLm, &config(), 3).unwrap();
    trainer.save_checkpoint(&root, &(), &[], 1).unwrap();
    // A half-deleted prune and a half-written checkpoint, both "newer" than step 0.
    for leftover in [".pruned-step-00000005", ".partial-step-00000009"] {
        std::fs::create_dir_all(root.join(leftover)).unwrap();
        std::fs::write(root.join(leftover).join("model.bin"), b"half").unwrap();
    }
    let latest = Checkpoint::latest(&root).unwrap().unwrap();
    assert!(latest.dir().ends_with("step-00000000"));
    trainer.step(step_batches(0)).unwrap();
    trainer.save_checkpoint(&root, &(), &[], 1).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["step-00000001"],
        "old checkpoint pruned, leftovers removed"
    );
}

#[test]
fn a_config_that_cannot_work_is_refused_by_key_before_any_step() {
    type Breaker = fn(&mut TrainerConfig);
    let cases: [(Breaker, &str); 4] = [
        (|c| c.optim.lr = f64::NAN, "optim.lr"),
        (|c| c.optim.beta2 = 1.0, "optim.beta2"),
        (|c| c.schedule.min_lr_ratio = 2.0, "schedule.min_lr_ratio"),
        (|c| c.gmt.mask_ratio = -0.1, "mask_ratio"),
    ];
    for (break_it, key) in cases {
        let mut bad = config();
        break_it(&mut bad);
        let err = Trainer::new(tiny_llama(), CausalLm, &bad, 1)
            .err()
            .expect("an impossible config is refused");
        assert!(err.to_string().contains(key), "{key}: {err}");
    }
}

/// One parameter's `FusedAdamW` record as burn's AdamW wrote it (an fp32 run: no compensation).
fn as_burn_adamw(
    record: burn::optim::record::AdaptorRecord<gmt_core::FusedAdamW, B>,
) -> burn::optim::record::AdaptorRecord<burn::optim::AdamW, B> {
    use burn::optim::AdamWState;
    use burn::optim::record::{AdaptorRecord, AdaptorRecordV1::*};
    let AdaptorRecord::V1(record) = record;
    macro_rules! to_adamw {
        ($($rank:ident),*) => {
            match record {
                $($rank(s) => {
                    assert!(s.compensation.is_none(), "fp32 weights carry no compensation");
                    $rank(AdamWState { momentum: s.momentum })
                })*
            }
        };
    }
    AdaptorRecord::V1(to_adamw!(
        Rank0, Rank1, Rank2, Rank3, Rank4, Rank5, Rank6, Rank7, Rank8
    ))
}

/// Checkpoints written by gmt before `FusedAdamW` kept its own state hold GMT around burn's
/// AdamW: they resume, and the run continues to the same bits.
#[test]
fn checkpoints_with_burns_adamw_state_resume_bit_for_bit() {
    use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
    use gmt_core::GmtRecord;
    use gmt_train::checkpoint::{MODEL_FILE, OPTIMIZER_FILE, TRAINER_FILE};
    type Fused = <gmt_train::GmtAdamW<B> as burn::optim::Optimizer<LlamaForCausalLm<B>, B>>::Record;

    type Legacy = <burn::optim::adaptor::OptimizerAdaptor<
        burn::optim::AdamW,
        LlamaForCausalLm<B>,
        B,
    > as burn::optim::Optimizer<LlamaForCausalLm<B>, B>>::Record;

    let mut straight = Trainer::new(tiny_llama(), CausalLm, &config(), 4).unwrap();
    for s in 0..4 {
        straight.step(step_batches(s)).unwrap();
    }

    let dir = TempDir::new("train-resume-legacy");
    let mut first = Trainer::new(tiny_llama(), CausalLm, &config(), 4).unwrap();
    for s in 0..2 {
        first.step(step_batches(s)).unwrap();
    }
    let saved = first
        .save_checkpoint(&dir.path().join("new"), &2u64, &[], 1)
        .unwrap();
    let saved = Checkpoint::open(&saved).unwrap();
    let record: Fused = saved.record(OPTIMIZER_FILE, &Default::default()).unwrap();
    let legacy = GmtRecord {
        inner: (record.inner.into_iter())
            .map(|(id, r)| (id, as_burn_adamw(r)))
            .collect::<Legacy>(),
        state: record.state,
    };
    let legacy = BinBytesRecorder::<FullPrecisionSettings>::default()
        .record(legacy, ())
        .unwrap();
    let (model, trainer) = (
        saved.read(MODEL_FILE).unwrap(),
        saved.read(TRAINER_FILE).unwrap(),
    );
    let old = gmt_train::write_checkpoint(
        &dir.path().join("old"),
        2,
        &[
            (MODEL_FILE, &model),
            (OPTIMIZER_FILE, &legacy),
            (TRAINER_FILE, &trainer),
        ],
        1,
    )
    .unwrap();

    let mut resumed = resume(&Checkpoint::open(&old).unwrap());
    for s in 2..4 {
        resumed.step(step_batches(s)).unwrap();
    }
    assert_eq!(bits(resumed.model()), bits(straight.model()));
}
