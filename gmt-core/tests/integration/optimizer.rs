//! Behaviour of `GmtOptimizer` on the edge cases a user can meet.

use burn::backend::{Autodiff, NdArray};
use burn::module::{Module, Param};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsParams, Optimizer, SgdConfig};
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use gmt_core::{
    GmtConfig, GmtError, GmtOptimizer, GradientMean, MaskScope, MaskStats, MaskStrategy,
    MaskTarget, NonFinitePolicy, ParamMaskStats, Selection, SelectionEngine, StepReport,
};

type B = Autodiff<NdArray>;
type Inner = NdArray;

#[derive(Module, Debug)]
struct Net<B: Backend> {
    weight: Param<Tensor<B, 2>>,
    bias: Param<Tensor<B, 1>>,
    scale: Param<Tensor<B, 1>>,
}

fn tensor<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> Tensor<Inner, D> {
    Tensor::from_data(TensorData::new(values, shape), &Default::default())
}

fn param<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> Param<Tensor<B, D>> {
    Param::from_tensor(Tensor::from_inner(tensor(values, shape)).require_grad())
}

/// Deterministic pseudo-random values (no RNG crate needed in the test's data).
fn wave(n: usize, phase: f32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as f32 + 1.0) * 0.731 + phase).sin() * (1.0 + (i % 7) as f32))
        .collect()
}

fn net() -> Net<B> {
    Net {
        weight: param(wave(48, 0.0), [6, 8]),
        bias: param(wave(8, 1.0), [8]),
        scale: param(vec![0.5], [1]),
    }
}

fn grads(model: &Net<B>, step: usize) -> GradientsParams {
    let phase = step as f32 * 0.37;
    let mut grads = GradientsParams::new();
    grads.register(model.weight.id, tensor(wave(48, 2.0 + phase), [6, 8]));
    grads.register(model.bias.id, tensor(wave(8, 3.0 + phase), [8]));
    grads.register(model.scale.id, tensor(vec![0.25 - phase], [1]));
    grads
}

fn values(model: &Net<B>) -> Vec<Vec<f32>> {
    vec![
        model.weight.val().into_data().to_vec().unwrap(),
        model.bias.val().into_data().to_vec().unwrap(),
        model.scale.val().into_data().to_vec().unwrap(),
    ]
}

fn adamw() -> AdamWConfig {
    AdamWConfig::new().with_epsilon(1e-8).with_weight_decay(0.1)
}

/// The last applied step's mask statistics of `weight`.
fn weight_stats(report: Option<&StepReport>) -> ParamMaskStats {
    report
        .and_then(StepReport::stats)
        .and_then(|stats| stats.get("weight"))
        .expect("an applied step with stats for `weight`")
        .clone()
}

fn bits(values: Vec<Vec<f32>>) -> Vec<Vec<u32>> {
    values
        .into_iter()
        .map(|v| v.into_iter().map(f32::to_bits).collect())
        .collect()
}

#[test]
fn ratio_zero_is_bit_identical_to_the_inner_optimizer() {
    for strategy in [
        MaskStrategy::Magnitude,
        MaskStrategy::Random,
        MaskStrategy::None,
    ] {
        for target in [MaskTarget::Gradient, MaskTarget::Update] {
            let mut plain_model = net();
            let mut plain = adamw().init::<B, Net<B>>();
            let mut gmt_model = net();
            let config = GmtConfig::new(0.0)
                .with_strategy(strategy)
                .with_target(target);
            let mut gmt = config.init(adamw().init(), &gmt_model).unwrap();
            for step in 0..5 {
                let g = grads(&plain_model, step);
                plain_model = plain.step(1e-2, plain_model, g);
                let g = grads(&gmt_model, step);
                gmt_model = gmt.try_step(1e-2, gmt_model, g).unwrap().0;
            }
            assert_eq!(
                bits(values(&plain_model)),
                bits(values(&gmt_model)),
                "{strategy:?} {target:?}"
            );
        }
    }
}

#[test]
fn strategy_none_is_plain_fine_tuning_at_any_ratio() {
    let mut plain_model = net();
    let mut plain = adamw().init::<B, Net<B>>();
    let mut gmt_model = net();
    let mut gmt = GmtConfig::new(0.7)
        .with_strategy(MaskStrategy::None)
        .init(adamw().init(), &gmt_model)
        .unwrap();
    for step in 0..3 {
        plain_model = plain.step(1e-2, plain_model.clone(), grads(&plain_model, step));
        gmt_model = gmt
            .try_step(1e-2, gmt_model.clone(), grads(&gmt_model, step))
            .unwrap()
            .0;
    }
    assert_eq!(bits(values(&plain_model)), bits(values(&gmt_model)));
}

#[test]
fn one_entry_tensor_and_floor_zero_are_never_masked() {
    // scale has 1 entry: floor(0.5·1) = 0. bias has 8: floor(0.1·8) = 0 as well.
    let model = net();
    let mut gmt = GmtConfig::new(0.1).init(adamw().init(), &model).unwrap();
    let g = grads(&model, 0);
    let _ = gmt.try_step(1e-2, model, g).unwrap().0;
    let stats = gmt.last_report().unwrap().stats().unwrap();
    let scale = stats.get("scale").unwrap();
    assert_eq!((scale.kept, scale.threshold), (1, None));
    let bias = stats.get("bias").unwrap();
    assert_eq!((bias.kept, bias.threshold), (8, None));
    // floor(0.1·48) = 4 masked.
    assert_eq!(stats.get("weight").unwrap().kept, 44);

    let model = net();
    let mut gmt = GmtConfig::new(0.99).init(adamw().init(), &model).unwrap();
    let g = grads(&model, 0);
    let _ = gmt.try_step(1e-2, model, g).unwrap().0;
    let stats = gmt.last_report().unwrap().stats().unwrap();
    assert_eq!(stats.get("scale").unwrap().kept, 1, "floor(0.99·1) = 0");
    assert_eq!(
        stats.get("weight").unwrap().kept,
        1,
        "48 − floor(47.52) = 1"
    );
}

#[test]
fn entries_tied_with_the_threshold_are_all_kept() {
    let model = net();
    let mut grads = GradientsParams::new();
    // |Γ| = [3, 2, 2, 2, 1, -2, 0, 5]: ratio 0.5 masks 4, T = 4th largest = 2, and all four
    // entries with |Γ| = 2 are kept, so 6 of 8 survive.
    let gamma = vec![3.0, 2.0, 2.0, 2.0, 1.0, -2.0, 0.0, 5.0];
    grads.register(model.bias.id, tensor(gamma.clone(), [8]));
    let before = values(&model)[1].clone();
    let mut gmt = GmtConfig::new(0.5)
        .with_target(MaskTarget::Update)
        .init(SgdConfig::new().init(), &model)
        .unwrap();
    let model = gmt.try_step(0.1, model, grads).unwrap().0;
    let stats = gmt.last_report().unwrap().stats().unwrap();
    let bias = stats.get("bias").unwrap();
    assert_eq!((bias.kept, bias.threshold), (6, Some(2.0)));
    let after = values(&model)[1].clone();
    for i in 0..8 {
        let moved = after[i] != before[i];
        assert_eq!(moved, gamma[i].abs() >= 2.0, "entry {i}");
    }
    // Parameters without a gradient (weight, scale) are not reported and do not move.
    assert!(stats.get("weight").is_none() && stats.get("scale").is_none());
}

#[test]
fn all_zero_gradients_keep_everything_with_threshold_zero() {
    let model = net();
    let mut grads = GradientsParams::new();
    grads.register(model.weight.id, tensor(vec![0.0; 48], [6, 8]));
    let mut gmt = GmtConfig::new(0.5).init(adamw().init(), &model).unwrap();
    let _ = gmt.try_step(1e-2, model, grads).unwrap().0;
    let weight = weight_stats(gmt.last_report());
    assert_eq!((weight.kept, weight.threshold), (48, Some(0.0)));
    assert_eq!(weight.kept_norm_fraction(), 1.0);
}

#[test]
fn frozen_parameters_are_untouched() {
    let model = net();
    let before = values(&model);
    for target in [MaskTarget::Gradient, MaskTarget::Update] {
        let mut gmt = GmtConfig::new(0.3)
            .with_target(target)
            .init(adamw().init(), &model)
            .unwrap();
        let g = grads(&model, 0);
        let mut g2 = GradientsParams::new();
        g2.register(model.bias.id, g.get::<Inner, 1>(model.bias.id).unwrap());
        let after = values(&gmt.try_step(1e-2, model.clone(), g2).unwrap().0);
        assert_eq!(after[0], before[0], "frozen weight moved ({target:?})");
        assert_eq!(after[2], before[2], "frozen scale moved ({target:?})");
        assert_ne!(after[1], before[1]);
    }
}

/// A step's values: every parameter's before and after, `weight`'s Γ and its threshold.
type DecayedStep = (Vec<Vec<f32>>, Vec<Vec<f32>>, Vec<f32>, f32);

/// One step at ratio 0.4 with AdamW's weight decay 0.5 and lr 0.1.
fn decayed_step(target: MaskTarget) -> DecayedStep {
    let model = net();
    let before = values(&model);
    let g = grads(&model, 0);
    let gamma: Vec<f32> = g
        .get::<Inner, 2>(model.weight.id)
        .unwrap()
        .into_data()
        .to_vec()
        .unwrap();
    let mut gmt = GmtConfig::new(0.4)
        .with_target(target)
        .init(AdamWConfig::new().with_weight_decay(0.5).init(), &model)
        .unwrap();
    let (model, report) = gmt.try_step(0.1, model, g).unwrap();
    let threshold = weight_stats(Some(&report)).threshold.unwrap();
    (before, values(&model), gamma, threshold)
}

#[test]
fn update_target_keeps_masked_entries_exactly_despite_weight_decay() {
    let (before, after, gamma, threshold) = decayed_step(MaskTarget::Update);
    let mut kept = 0;
    for i in 0..48 {
        if gamma[i].abs() >= threshold {
            kept += 1;
            assert_ne!(after[0][i], before[0][i], "kept entry {i} did not move");
        } else {
            assert_eq!(
                after[0][i].to_bits(),
                before[0][i].to_bits(),
                "masked entry {i} moved"
            );
        }
    }
    assert_eq!(kept, 48 - 19);
}

#[test]
fn gradient_target_still_decays_masked_entries() {
    let (before, after, gamma, threshold) = decayed_step(MaskTarget::Gradient);
    for i in (0..48).filter(|&i| gamma[i].abs() < threshold) {
        // Zero gradient: AdamW moves nothing but decays by (1 − lr·wd).
        let expected = before[0][i] * (1.0 - 0.1 * 0.5);
        assert!((after[0][i] - expected).abs() < 1e-6, "entry {i}");
    }
}

#[test]
fn global_scope_shares_one_threshold() {
    let model = net();
    let mut gmt = GmtConfig::new(0.5)
        .with_scope(MaskScope::Global)
        .init(adamw().init(), &model)
        .unwrap();
    let g = grads(&model, 1);
    let _ = gmt.try_step(1e-2, model, g).unwrap().0;
    let stats = gmt.last_report().unwrap().stats().unwrap();
    let thresholds: Vec<_> = stats.params.iter().map(|p| p.threshold).collect();
    assert!(
        thresholds
            .iter()
            .all(|t| *t == thresholds[0] && t.is_some())
    );
    // 57 entries, floor(28.5) = 28 masked (no ties in this data).
    assert_eq!(stats.kept(), 57 - 28);
}

#[test]
fn random_strategy_keeps_exact_counts_and_follows_its_seed() {
    let run = |seed: u64, scope: MaskScope| {
        let mut model = net();
        let config = GmtConfig::new(0.5)
            .with_strategy(MaskStrategy::Random)
            .with_scope(scope)
            .with_seed(seed);
        let mut gmt = config.init(SgdConfig::new().init(), &model).unwrap();
        let mut kept = Vec::new();
        for step in 0..3 {
            let g = grads(&model, step);
            model = gmt.try_step(0.1, model, g).unwrap().0;
            let stats = gmt.last_report().unwrap().stats().unwrap();
            kept.push(stats.params.iter().map(|p| p.kept).collect::<Vec<_>>());
        }
        (bits(values(&model)), kept)
    };
    let (a, kept) = run(7, MaskScope::Tensor);
    for per_step in &kept {
        assert_eq!(per_step, &vec![48 - 24, 8 - 4, 1]);
    }
    let (b, _) = run(7, MaskScope::Tensor);
    let (c, _) = run(8, MaskScope::Tensor);
    assert_eq!(a, b, "same seed, same run");
    assert_ne!(a, c, "another seed, another mask");
    let (_, kept) = run(7, MaskScope::Global);
    for per_step in &kept {
        assert_eq!(per_step.iter().sum::<usize>(), 57 - 28);
    }
}

type Gmt = GmtOptimizer<OptimizerAdaptor<AdamW, Net<B>, B>, Net<B>, B>;

/// Steps `steps` of `model` under `gmt` (gradients from [`grads`]).
fn take_steps(gmt: &mut Gmt, mut model: Net<B>, steps: std::ops::Range<usize>) -> Net<B> {
    for step in steps {
        let g = grads(&model, step);
        model = gmt.try_step(1e-2, model, g).unwrap().0;
    }
    model
}

/// The weights after 4 steps under `config`, and the optimizer and model records after 2.
fn straight_and_saved(config: &GmtConfig) -> (Vec<Vec<u32>>, Vec<u8>, Vec<u8>) {
    let model = net();
    let mut gmt = config.init(adamw().init(), &model).unwrap();
    let uninterrupted = bits(values(&take_steps(&mut gmt, model, 0..4)));
    let model = net();
    let mut gmt = config.init(adamw().init(), &model).unwrap();
    let model = take_steps(&mut gmt, model, 0..2);
    let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
    let optim_bytes = recorder.record(gmt.to_record(), ()).unwrap();
    let model_bytes = recorder.record(model.into_record(), ()).unwrap();
    (uninterrupted, optim_bytes, model_bytes)
}

#[test]
fn save_load_continue_equals_an_uninterrupted_run() {
    for strategy in [MaskStrategy::Magnitude, MaskStrategy::Random] {
        let config = GmtConfig::new(0.3)
            .with_strategy(strategy)
            .with_seed(3)
            .with_target(MaskTarget::Update);
        let (uninterrupted, optim_bytes, model_bytes) = straight_and_saved(&config);

        let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
        let device = Default::default();
        let model = net().load_record(recorder.load(model_bytes, &device).unwrap());
        // A fresh optimizer with another seed: the record's RNG state must win.
        let mut gmt = config
            .clone()
            .with_seed(99)
            .init(adamw().init(), &model)
            .unwrap();
        gmt = gmt.load_record(recorder.load(optim_bytes, &device).unwrap());
        assert_eq!(gmt.state().step, 2);
        let model = take_steps(&mut gmt, model, 2..4);
        assert_eq!(bits(values(&model)), uninterrupted, "{strategy:?}");
    }
}

/// burn's `Learner` resumes by building model and optimizer first, then loading both
/// records: the model then carries the saved parameter ids, not those the optimizer saw at
/// `init`. The continued run must still mask, and equal an uninterrupted one.
#[test]
fn resume_in_learner_order_still_masks_every_parameter() {
    let config = GmtConfig::new(0.3).with_seed(3);
    let (uninterrupted, optim_bytes, model_bytes) = straight_and_saved(&config);

    // Learner order: a fresh model (new ids) and its optimizer, then both records.
    let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
    let device = Default::default();
    let fresh = net();
    let gmt = config.init(adamw().init(), &fresh).unwrap();
    let mut model = fresh.load_record(recorder.load(model_bytes, &device).unwrap());
    let mut gmt = gmt.load_record(recorder.load(optim_bytes, &device).unwrap());
    for step in 2..4 {
        let g = grads(&model, step);
        let (next, report) = gmt.try_step(1e-2, model, g).unwrap();
        model = next;
        let stats = report.stats().unwrap();
        assert_eq!(stats.params.len(), 3, "every parameter is found");
        assert_eq!(stats.get("weight").unwrap().kept, 48 - 14); // floor(0.3·48) = 14
        assert!(report.kept_fraction() < 1.0);
    }
    assert_eq!(bits(values(&model)), uninterrupted);
}

#[test]
fn gradients_of_another_model_or_another_module_are_errors() {
    let model = net();
    let mut gmt = GmtConfig::new(0.3).init(adamw().init(), &model).unwrap();
    // Gradients keyed by another copy's ids hold nothing for this module.
    let other = net();
    let failure = gmt.try_step(1e-2, model, grads(&other, 0)).err().unwrap();
    assert!(
        matches!(failure.error, GmtError::NoGradients { step: 0 }),
        "{}",
        failure.error
    );
    assert_eq!(gmt.state().step, 0, "nothing was stepped");

    // A module whose parameter list changed since `init` (here a layer stack grown by one).
    #[derive(Module, Debug)]
    struct Stack<B: Backend> {
        layers: Vec<Param<Tensor<B, 1>>>,
    }
    let stack = |n: usize| Stack::<B> {
        layers: (0..n).map(|i| param(wave(4, i as f32), [4])).collect(),
    };
    let two = stack(2);
    let mut gmt = GmtConfig::new(0.5).init(adamw().init(), &two).unwrap();
    let three = stack(3);
    let mut g = GradientsParams::new();
    for layer in &three.layers {
        g.register(layer.id, tensor(wave(4, 9.0), [4]));
    }
    let failure = gmt.try_step(1e-2, three, g).err().unwrap();
    assert!(
        matches!(failure.error, GmtError::ModuleMismatch { expected: 2, .. }),
        "{}",
        failure.error
    );
    assert!(
        failure.error.to_string().contains("`layers.2`"),
        "{}",
        failure.error
    );
}

#[test]
fn invalid_configs_are_errors_at_construction() {
    let model = net();
    for ratio in [1.0, 1.5, -0.1, f64::NAN] {
        let err = GmtConfig::new(ratio)
            .init(adamw().init(), &model)
            .err()
            .unwrap();
        assert!(
            matches!(
                err,
                GmtError::InvalidConfig {
                    key: "mask_ratio",
                    ..
                }
            ),
            "{ratio}: {err}"
        );
    }
    let err = GmtConfig::new(0.3)
        .with_exclude(vec!["bias".into(), "*norm*".into()])
        .init(adamw().init(), &model)
        .err()
        .unwrap();
    assert_eq!(
        err.to_string(),
        "exclude pattern `*norm*` matches no parameter of the model; parameters look like `weight`"
    );
    let err = GmtConfig::new(0.3)
        .with_exclude(vec!["[".into()])
        .init(adamw().init(), &model)
        .err()
        .unwrap();
    assert!(matches!(err, GmtError::InvalidPattern { .. }), "{err}");
    let err = GmtConfig::new(0.3)
        .with_selection(Selection::Sampled { sample_size: 0 })
        .init(adamw().init(), &model)
        .err()
        .unwrap();
    assert!(matches!(err, GmtError::InvalidConfig { .. }), "{err}");
}

#[test]
fn excluded_parameters_are_optimized_but_never_masked() {
    let model = net();
    let config = GmtConfig::new(0.5).with_exclude(vec!["bias".into()]);
    let mut gmt = config.init(adamw().init(), &model).unwrap();
    let g = grads(&model, 0);
    let _ = gmt.try_step(1e-2, model, g).unwrap().0;
    let stats = gmt.last_report().unwrap().stats().unwrap();
    let bias = stats.get("bias").unwrap();
    assert!(!bias.maskable);
    assert_eq!((bias.kept, bias.threshold), (8, None));
    assert_eq!(stats.get("weight").unwrap().kept, 24);
}

#[test]
fn non_finite_gradients_fail_or_skip_naming_the_parameter() {
    let bad = |model: &Net<B>| {
        let mut g = grads(model, 0);
        let mut bias = wave(8, 0.0);
        bias[3] = f32::NAN;
        g.register(model.bias.id, tensor(bias, [8]));
        g
    };
    let model = net();
    let before = bits(values(&model));
    let mut gmt = GmtConfig::new(0.3).init(adamw().init(), &model).unwrap();
    let g = bad(&model);
    let failure = gmt.try_step(1e-2, model, g).err().unwrap();
    assert_eq!(
        failure.error,
        GmtError::NonFiniteGradient {
            param: "bias".into(),
            step: 0
        }
    );
    assert_eq!(
        bits(values(&failure.module)),
        before,
        "module handed back unchanged"
    );

    // Even at ratio 0 a NaN is reported, not passed on.
    let model = net();
    let mut gmt = GmtConfig::new(0.0).init(adamw().init(), &model).unwrap();
    let g = bad(&model);
    assert!(gmt.try_step(1e-2, model, g).is_err());

    let model = net();
    let mut gmt = GmtConfig::new(0.3)
        .with_non_finite(NonFinitePolicy::Skip)
        .init(adamw().init(), &model)
        .unwrap();
    let g = bad(&model);
    let model = gmt.try_step(1e-2, model, g).unwrap().0;
    assert_eq!(bits(values(&model)), before);
    assert_eq!(
        gmt.last_report(),
        Some(&StepReport::Skipped {
            step: 0,
            param: "bias".into()
        })
    );
    assert_eq!((gmt.state().step, gmt.state().skipped_steps), (0, 1));

    // Large but finite values whose sum overflows are not mistaken for NaN.
    let model = net();
    let mut g = GradientsParams::new();
    g.register(model.bias.id, tensor(vec![3.0e38; 8], [8]));
    let mut gmt = GmtConfig::new(0.3)
        .init(SgdConfig::new().init(), &model)
        .unwrap();
    assert!(gmt.try_step(1e-40, model, g).is_ok());
}

/// Every route through the mask — host or device engine, either scope, random or sampled
/// selection, excluded and unmasked parameters, the update target — names the first
/// parameter whose gradient is not finite, and leaves the module unchanged; finite values
/// whose squares overflow f32 are not mistaken for it.
#[test]
fn every_mask_route_finds_the_first_non_finite_gradient() {
    let configs = [
        ("ratio 0", GmtConfig::new(0.0)),
        ("tensor", GmtConfig::new(0.3)),
        ("global", GmtConfig::new(0.3).with_scope(MaskScope::Global)),
        (
            "random",
            GmtConfig::new(0.3).with_strategy(MaskStrategy::Random),
        ),
        (
            "sampled",
            GmtConfig::new(0.3).with_selection(Selection::Sampled { sample_size: 16 }),
        ),
        (
            "device engine",
            GmtConfig::new(0.3).with_engine(SelectionEngine::Device),
        ),
        (
            "bias excluded",
            GmtConfig::new(0.3).with_exclude(vec!["bias".into()]),
        ),
        (
            "update",
            GmtConfig::new(0.3).with_target(MaskTarget::Update),
        ),
    ];
    // Entries to plant (index, value) in weight and bias, scale's value, the parameter named.
    type Plant = &'static [(usize, f32)];
    let cases: [(Plant, Plant, Option<f32>, &str); 4] = [
        (&[], &[(3, f32::NAN)], None, "bias"),
        (&[], &[], Some(f32::INFINITY), "scale"),
        (&[], &[(0, f32::NEG_INFINITY)], Some(f32::NAN), "bias"),
        (&[(47, f32::NAN)], &[(5, f32::INFINITY)], None, "weight"),
    ];
    for (name, config) in &configs {
        for (weight_bad, bias_bad, scale_bad, expected) in cases {
            let model = net();
            let before = bits(values(&model));
            let mut weight = wave(48, 2.0);
            let mut bias = wave(8, 3.0);
            for &(i, x) in weight_bad {
                weight[i] = x;
            }
            for &(i, x) in bias_bad {
                bias[i] = x;
            }
            let mut g = GradientsParams::new();
            g.register(model.weight.id, tensor(weight, [6, 8]));
            g.register(model.bias.id, tensor(bias, [8]));
            g.register(model.scale.id, tensor(vec![scale_bad.unwrap_or(0.25)], [1]));
            let mut gmt = config.clone().init(adamw().init(), &model).unwrap();
            let failure = gmt.try_step(1e-2, model, g).expect_err(name);
            let GmtError::NonFiniteGradient { param, step: 0 } = failure.error else {
                panic!("{name}: {}", failure.error);
            };
            assert_eq!(param, expected, "{name}");
            assert_eq!(
                bits(values(&failure.module)),
                before,
                "{name}: module unchanged"
            );
        }

        let model = net();
        let mut g = GradientsParams::new();
        g.register(model.weight.id, tensor(vec![-3.0e38; 48], [6, 8]));
        g.register(model.bias.id, tensor(vec![3.0e38; 8], [8]));
        g.register(model.scale.id, tensor(vec![3.0e38], [1]));
        let mut gmt = config
            .clone()
            .init(SgdConfig::new().init(), &model)
            .unwrap();
        let result = gmt.try_step(1e-40, model, g);
        assert!(result.is_ok(), "{name}: finite values are finite");
    }
}

#[test]
fn device_engine_and_host_engine_agree() {
    for scope in [MaskScope::Tensor, MaskScope::Global] {
        let thresholds = |engine| {
            let model = net();
            let mut gmt = GmtConfig::new(0.37)
                .with_scope(scope)
                .with_engine(engine)
                .init(adamw().init(), &model)
                .unwrap();
            let g = grads(&model, 2);
            let _ = gmt.try_step(1e-2, model, g).unwrap().0;
            gmt.last_report().unwrap().stats().unwrap().clone()
        };
        let host = thresholds(SelectionEngine::Host);
        let device = thresholds(SelectionEngine::Device);
        assert_same_masks(&host, &device, &format!("{scope:?}"));
    }
}

/// The host and device engines' statistics of one step: the same kept counts and thresholds
/// (bit for bit), and kept norms equal up to summation order.
fn assert_same_masks(host: &MaskStats, device: &MaskStats, case: &str) {
    for (h, d) in host.params.iter().zip(&device.params) {
        assert_eq!(
            (h.kept, h.threshold.map(f32::to_bits)),
            (d.kept, d.threshold.map(f32::to_bits)),
            "{case} {}",
            h.path
        );
        assert!((h.kept_sq_norm - d.kept_sq_norm).abs() <= 1e-5 * h.grad_sq_norm);
    }
}

/// Groups above the host engine's small-group size take its one-pass route (mask outside the
/// boundary bucket, then settle the bucket) or, where that bucket holds much of the group,
/// select first: either way the same thresholds, counts and masked updates as
/// the device bisection, for both scopes and the update target's restore. The random mask's
/// drops, too, are the same on both engines, zero gradients kept or dropped alike (AdamW's
/// weight decay moves a kept one; the update target freezes a dropped one).
#[test]
fn large_groups_agree_across_engines() {
    #[derive(Module, Debug)]
    struct Pair<B: Backend> {
        a: Param<Tensor<B, 1>>,
        b: Param<Tensor<B, 2>>,
    }
    let (na, nb) = (40_000, 30_000);
    let pair = || Pair::<B> {
        a: param(vec![0.5; na], [na]),
        b: param(vec![-0.25; nb], [100, 300]),
    };
    let cases = [MaskStrategy::Magnitude, MaskStrategy::Random]
        .into_iter()
        .flat_map(|strategy| {
            [MaskScope::Tensor, MaskScope::Global]
                .into_iter()
                .flat_map(move |scope| {
                    [MaskTarget::Gradient, MaskTarget::Update]
                        .map(|target| (strategy, scope, target))
                })
        });
    for (strategy, scope, target) in cases {
        let run = |engine| {
            let model = pair();
            let mut gmt = GmtConfig::new(0.3)
                .with_strategy(strategy)
                .with_scope(scope)
                .with_target(target)
                .with_engine(engine)
                .init(adamw().init(), &model)
                .unwrap();
            let mut g = GradientsParams::new();
            // Ties (a wave sampled on a coarse grid) make the boundary bucket crowded.
            let coarse: Vec<f32> = wave(na, 0.1).iter().map(|x| (x * 64.0).round()).collect();
            g.register(model.a.id, tensor(coarse, [na]));
            // Half zeros (an embedding's unseen rows): its boundary bucket is crowded.
            let sparse: Vec<f32> = wave(nb, 0.7)
                .iter()
                .enumerate()
                .map(|(i, x)| if i % 2 == 0 { 0.0 } else { *x })
                .collect();
            g.register(model.b.id, tensor(sparse, [100, 300]));
            let (model, report) = gmt.try_step(1e-2, model, g).unwrap();
            let values = |t: Tensor<B, 1>| t.into_data().to_vec::<f32>().unwrap();
            let weights = (values(model.a.val()), values(model.b.val().flatten(0, 1)));
            (report.stats().unwrap().clone(), weights)
        };
        let (host, host_weights) = run(SelectionEngine::Host);
        let (device, device_weights) = run(SelectionEngine::Device);
        let case = format!("{strategy:?} {scope:?} {target:?}");
        assert_same_masks(&host, &device, &case);
        assert_eq!(host_weights, device_weights, "{case}");
    }
}

#[test]
fn sampled_selection_keeps_about_the_requested_fraction() {
    #[derive(Module, Debug)]
    struct Big<B: Backend> {
        w: Param<Tensor<B, 1>>,
    }
    let n = 200_000;
    let model = Big::<B> {
        w: param(vec![0.0; n], [n]),
    };
    let mut g = GradientsParams::new();
    g.register(model.w.id, tensor(wave(n, 0.3), [n]));
    let config = GmtConfig::new(0.3).with_selection(Selection::Sampled {
        sample_size: 20_000,
    });
    let mut gmt = config.init(SgdConfig::new().init(), &model).unwrap();
    let _ = gmt.try_step(1e-3, model, g).unwrap().0;
    let kept = gmt.last_report().unwrap().stats().unwrap().kept_fraction();
    assert!((kept - 0.7).abs() < 0.02, "kept fraction {kept}");
}

#[test]
fn token_weighted_mean_matches_one_big_batch() {
    let model = net();
    let mut mean = GradientMean::new();
    let g0 = grads(&model, 0);
    let g1 = grads(&model, 1);
    let (a, b): (Vec<f32>, Vec<f32>) = (
        g0.get::<Inner, 1>(model.bias.id)
            .unwrap()
            .into_data()
            .to_vec()
            .unwrap(),
        g1.get::<Inner, 1>(model.bias.id)
            .unwrap()
            .into_data()
            .to_vec()
            .unwrap(),
    );
    mean.add_weighted(&model, g0, 3.0).unwrap();
    mean.add_weighted(&model, g1, 1.0).unwrap();
    assert_eq!((mean.micro_batches(), mean.total_weight()), (2, 4.0));
    let gamma: Vec<f32> = mean
        .finish(&model)
        .unwrap()
        .get::<Inner, 1>(model.bias.id)
        .unwrap()
        .into_data()
        .to_vec()
        .unwrap();
    for i in 0..8 {
        assert!((gamma[i] - (3.0 * a[i] + b[i]) / 4.0).abs() < 1e-6);
    }
    assert!(matches!(
        mean.finish(&model),
        Err(GmtError::EmptyAccumulation { .. })
    ));
    assert!(matches!(
        mean.add_weighted(&model, grads(&model, 0), 0.0),
        Err(GmtError::InvalidWeight { .. })
    ));
}

#[test]
fn works_through_burns_optimizer_trait() {
    fn train<O: Optimizer<Net<B>, B>>(mut optim: O) -> Net<B> {
        let mut model = net();
        for step in 0..2 {
            let g = grads(&model, step);
            model = optim.step(1e-2, model, g);
        }
        model
    }
    let model = net();
    let gmt = GmtConfig::new(0.3).init(adamw().init(), &model).unwrap();
    let trained = train(gmt);
    assert_ne!(bits(values(&trained)), bits(values(&model)));
}

#[test]
fn clipping_scales_the_masked_gradient_to_the_global_norm() {
    // SGD makes the update the gradient itself: Δ = −lr · scale · Γ·mask.
    let lr = 0.1;
    let model = net();
    let before = values(&model);
    let masked_norm = |config: GmtConfig| {
        let mut gmt = config.init(SgdConfig::new().init(), &model).unwrap();
        let after = values(&gmt.try_step(lr, model.clone(), grads(&model, 0)).unwrap().0);
        let report = gmt.last_report().unwrap().clone();
        (after, report)
    };
    let (free, report) = masked_norm(GmtConfig::new(0.5));
    let norm = report.grad_norm().unwrap();
    assert!(matches!(
        report,
        StepReport::Applied {
            clip_scale: None,
            ..
        }
    ));
    // The reported norm is that of what SGD applied.
    let applied: f64 = free
        .iter()
        .flatten()
        .zip(before.iter().flatten())
        .map(|(a, b)| ((b - a) as f64 / lr).powi(2))
        .sum::<f64>()
        .sqrt();
    assert!((applied - norm).abs() < 1e-4 * norm, "{applied} vs {norm}");

    let max = norm / 4.0;
    let (clipped, report) = masked_norm(GmtConfig::new(0.5).with_max_grad_norm(Some(max)));
    let StepReport::Applied {
        clip_scale: Some(scale),
        ..
    } = report
    else {
        panic!("a norm 4× the limit is clipped");
    };
    assert!((scale - max / (norm + 1e-6)).abs() < 1e-12);
    for ((c, f), b) in clipped
        .iter()
        .flatten()
        .zip(free.iter().flatten())
        .zip(before.iter().flatten())
    {
        let expected = (f - b) as f64 * scale;
        assert!(
            ((c - b) as f64 - expected).abs() < 1e-6,
            "update scaled by {scale}"
        );
    }
    // Under the limit nothing changes.
    let (loose, _) = masked_norm(GmtConfig::new(0.5).with_max_grad_norm(Some(norm * 2.0)));
    assert_eq!(bits(loose), bits(free));
    assert!(
        GmtConfig::new(0.1)
            .with_max_grad_norm(Some(0.0))
            .validate()
            .is_err()
    );
}
