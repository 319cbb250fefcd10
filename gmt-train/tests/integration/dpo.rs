//! DPO through the trainer: precomputed reference log-probabilities saved with the run, GMT
//! underneath, and a resumed run that is the uninterrupted one to the bit (4 steps ≡ 2 +
//! resume + 2, reference log-probabilities read back, not recomputed).

use burn::backend::{Autodiff, NdArray};
use burn::module::AutodiffModule;
use gmt_core::GmtConfig;
use gmt_models::{LlamaForCausalLm, TokenBatch, load_hf_dir};
use gmt_tests::TempDir;
use gmt_train::{
    Checkpoint, Dpo, DpoConfig, PreferenceBatch, ReferenceLogProbs, TrainError, Trainer,
};

use crate::trainer::{bits, config};

type B = Autodiff<NdArray>;

fn tiny_llama() -> LlamaForCausalLm<B> {
    load_hf_dir(gmt_tests::hf_fixture("llama-tiny"), &Default::default())
        .expect("the tiny Llama fixture in ../shared")
}

/// Micro-batch `i`: 2 pairs sharing 4-token prompts; chosen and rejected responses of
/// different lengths, right-padded.
fn pairs(i: u64) -> PreferenceBatch {
    let token = |k: u64| ((i * 37 + k * 11 + (k * k) % 7) % 93 + 3) as u32;
    let (seq, mut ids, mut labels, mut mask) = (10usize, Vec::new(), Vec::new(), Vec::new());
    for (side, len) in [(0u64, 5usize), (1, 6)] {
        for pair in 0..2u64 {
            let row: Vec<u32> = (0..4 + len as u64 - pair)
                .map(|k| {
                    if k < 4 {
                        token(pair * 50 + k)
                    } else {
                        token(side * 100 + pair * 50 + k)
                    }
                })
                .collect();
            let pad = seq - row.len();
            labels.extend(
                row.iter()
                    .enumerate()
                    .map(|(k, &t)| if k < 4 { -100 } else { t as i64 }),
            );
            labels.extend(std::iter::repeat_n(-100, pad));
            mask.extend(std::iter::repeat_n(true, row.len()));
            mask.extend(std::iter::repeat_n(false, pad));
            ids.extend(row);
            ids.extend(std::iter::repeat_n(0, pad));
        }
    }
    let mut tokens = TokenBatch::new(ids, 4, seq).with_labels(labels);
    tokens.attention_mask = Some(mask);
    PreferenceBatch {
        tokens,
        reference: None,
    }
}

fn dpo() -> Dpo {
    Dpo::new(DpoConfig::default()).unwrap()
}

#[test]
fn dpo_with_precomputed_reference_resumes_bit_for_bit() {
    // Reference log-probabilities of the starting model, for every micro-batch of the run.
    let mut table = ReferenceLogProbs::default();
    let start = tiny_llama().valid();
    for i in 0..8 {
        table.add_batch(&start, &pairs(i)).unwrap();
    }
    assert_eq!(table.len(), 16);
    let step_batches = |s: u64| -> Vec<PreferenceBatch> {
        (2 * s..2 * s + 2)
            .map(|i| {
                let mut b = pairs(i);
                table.fill(&mut b).unwrap();
                b
            })
            .collect()
    };

    let mut straight = Trainer::new(tiny_llama(), dpo(), &config(), 4).unwrap();
    let mut first_steps = Vec::new();
    for s in 0..4 {
        let step = straight.step(step_batches(s)).unwrap();
        assert_eq!(step.totals.weight, 4.0, "2 micro-batches × 2 pairs");
        if s == 0 {
            // The policy is the reference at step 0: every reward is 0, the loss log 2.
            assert!(
                (step.loss() - std::f64::consts::LN_2).abs() < 1e-6,
                "{}",
                step.loss()
            );
            assert_eq!(step.totals.mean("rewards/margin"), Some(0.0));
        }
        first_steps.push(step.loss());
    }
    let accuracy = straight.evaluate(&step_batches(0)).unwrap();
    assert!(
        accuracy.metrics["rewards/accuracy"] > 0.5,
        "training on the pairs raises their reward accuracy: {accuracy:?}"
    );
    assert!(
        first_steps[3] < first_steps[0],
        "the DPO loss falls: {first_steps:?}"
    );

    let dir = TempDir::new("dpo-resume");
    let root = dir.path().join("checkpoints");
    let reference_file = dir.path().join("reference_logps.json");
    table.save(&reference_file).unwrap();
    let mut first = Trainer::new(tiny_llama(), dpo(), &config(), 4).unwrap();
    for s in 0..2 {
        first.step(step_batches(s)).unwrap();
    }
    let saved = first.save_checkpoint(&root, &2u64, &[], 1).unwrap();
    drop(first);

    let read_back = ReferenceLogProbs::load(&reference_file).unwrap();
    assert_eq!(read_back, table, "the saved table reads back exactly");
    let checkpoint = Checkpoint::open(&saved).unwrap();
    let mut resumed = Trainer::resume(
        tiny_llama(),
        dpo(),
        &config(),
        &checkpoint,
        &Default::default(),
    )
    .unwrap();
    for s in 2..4 {
        let batches: Vec<PreferenceBatch> = (2 * s..2 * s + 2)
            .map(|i| {
                let mut b = pairs(i);
                read_back.fill(&mut b).unwrap();
                b
            })
            .collect();
        let step = resumed.step(batches).unwrap();
        assert_eq!(step.loss(), first_steps[s as usize], "step {}", step.step);
    }
    assert_eq!(bits(resumed.model()), bits(straight.model()));
}

#[test]
fn dpo_with_mask_ratio_zero_is_plain_dpo_and_refuses_batches_without_reference() {
    let mut table = ReferenceLogProbs::default();
    table.add_batch(&tiny_llama().valid(), &pairs(0)).unwrap();
    let mut batch = pairs(0);
    table.fill(&mut batch).unwrap();

    let mut plain = config();
    plain.gmt = GmtConfig::new(0.0).with_max_grad_norm(Some(1.0));
    let mut none = plain.clone();
    none.gmt = none.gmt.with_strategy(gmt_core::MaskStrategy::None);
    let mut a = Trainer::new(tiny_llama(), dpo(), &plain, 1).unwrap();
    let mut b = Trainer::new(tiny_llama(), dpo(), &none, 1).unwrap();
    a.step([batch.clone()]).unwrap();
    b.step([batch]).unwrap();
    assert_eq!(bits(a.model()), bits(b.model()));

    let before = bits(a.model());
    let err = a.step([pairs(1)]).unwrap_err();
    assert!(matches!(err, TrainError::MissingReference), "{err}");
    let mut unknown = pairs(1);
    let err = table.fill(&mut unknown).unwrap_err();
    assert!(err.to_string().contains("pair 0"), "{err}");
    assert_eq!(bits(a.model()), before, "a refused step changes nothing");
}
