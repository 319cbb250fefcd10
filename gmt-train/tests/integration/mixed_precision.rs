//! The bf16 modes on burn's Flex CPU backend (the CPU backend with bf16 arithmetic).
//! `bf16-mixed`: the forward and backward passes in bf16, Γ and the mask in fp32, fp32 master
//! weights. `bf16`: weights, Γ and AdamW's state in bf16, the mask computed on Γ widened.

use std::sync::{Arc, Mutex};

use burn::backend::{Autodiff, Flex, NdArray};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, FloatDType, Tensor};
use gmt_core::GmtConfig;
use gmt_models::{LlamaForCausalLm, load_hf_dir};
use gmt_train::memory::Precision;
use gmt_train::{
    CausalLm, GradientAllReduce, Objective, ReplicaStep, TrainError, Trainer, TrainerConfig,
};

use crate::trainer::{batch, config};

type F = Autodiff<Flex>;

fn tiny_llama<B: AutodiffBackend>() -> LlamaForCausalLm<B> {
    load_hf_dir(gmt_tests::hf_fixture("llama-tiny"), &Default::default())
        .expect("the tiny Llama fixture in ../shared")
}

/// A tensor's format and its values widened to f32.
type Values = (DType, Vec<f32>);

/// Every float parameter's values (as f32) and format, in the module's order.
struct Collect {
    values: Vec<Values>,
}

impl<B: burn::tensor::backend::Backend> ModuleVisitor<B> for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let t = param.val();
        let dtype = t.dtype();
        let data = t.cast(FloatDType::F32).into_data().to_vec::<f32>().unwrap();
        self.values.push((dtype, data));
    }
}

fn collect<B: burn::tensor::backend::Backend>(model: &impl Module<B>) -> Vec<Values> {
    let mut c = Collect { values: Vec::new() };
    model.visit(&mut c);
    c.values
}

/// Γ's sum as the replica hands it over, kept for inspection.
struct Capture {
    sums: Arc<Mutex<Vec<Values>>>,
}

struct Grads<'a, B> {
    grads: &'a GradientsParams,
    out: Vec<Values>,
    backend: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Grads<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let dtype = g.dtype();
            let data = g.cast(FloatDType::F32).into_data().to_vec::<f32>().unwrap();
            self.out.push((dtype, data));
        }
    }
}

fn grads_of<B: AutodiffBackend>(
    model: &LlamaForCausalLm<B>,
    grads: &GradientsParams,
) -> Vec<Values> {
    let mut v = Grads::<B> {
        grads,
        out: Vec::new(),
        backend: std::marker::PhantomData,
    };
    model.visit(&mut v);
    v.out
}

impl GradientAllReduce<F> for Capture {
    fn all_reduce(
        &mut self,
        model: &LlamaForCausalLm<F>,
        local: Result<ReplicaStep, TrainError>,
    ) -> Result<ReplicaStep, TrainError> {
        let local = local?;
        *self.sums.lock().unwrap() = grads_of(model, &local.grad_sum);
        Ok(local)
    }
}

/// The README's mask of `gamma` at `ratio`, by sorting: its threshold and kept count.
fn mask_of(gamma: &[f32], ratio: f64) -> (f32, usize) {
    let n = gamma.len();
    let m = (ratio * n as f64).floor() as usize;
    let mut mags: Vec<f32> = gamma.iter().map(|g| g.abs()).collect();
    mags.sort_by(|a, b| b.total_cmp(a));
    let threshold = mags[n - m - 1];
    (
        threshold,
        gamma.iter().filter(|g| g.abs() >= threshold).count(),
    )
}

/// Rounds parameters to bf16 as fresh leaves: the test's own working copy.
struct ToBf16;

impl<B: AutodiffBackend> ModuleMapper<B> for ToBf16 {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        param.map(|t| Tensor::from_inner(t.inner().cast(FloatDType::BF16)).require_grad())
    }
}

#[test]
fn precisions_a_backend_cannot_compute_are_refused_by_name() {
    let on_ndarray = Trainer::new(tiny_llama::<Autodiff<NdArray>>(), CausalLm, &config(), 2)
        .unwrap()
        .with_precision(Precision::Bf16Mixed);
    let Err(e) = on_ndarray else {
        panic!("burn-ndarray has no bf16")
    };
    let message = e.to_string();
    assert!(
        message.contains("bf16-mixed") && message.contains("ndarray"),
        "{message}"
    );

    let on_ndarray = Trainer::new(tiny_llama::<Autodiff<NdArray>>(), CausalLm, &config(), 2)
        .unwrap()
        .with_precision(Precision::Bf16);
    let Err(e) = on_ndarray else {
        panic!("burn-ndarray has no bf16")
    };
    assert!(e.to_string().contains("no bf16 arithmetic"), "{e}");

    // The update target restores masked weights, but not their Kahan compensation.
    let update = TrainerConfig {
        gmt: GmtConfig::new(0.3).with_target(gmt_core::MaskTarget::Update),
        ..config()
    };
    let trainer = Trainer::new(tiny_llama::<F>(), CausalLm, &update, 2).unwrap();
    let Err(e) = trainer.with_precision(Precision::Bf16) else {
        panic!("bf16 with the update target")
    };
    assert!(e.to_string().contains("gmt.target"), "{e}");
}

/// Two micro-batches: Γ's sum reaches the all-reduce seam in fp32, equal to the fp32 sum of
/// the bf16 gradients of a bf16 copy of the weights, and the mask's thresholds and kept
/// counts are those of that fp32 Γ under the README's definition. The master weights stay
/// fp32 after the step.
#[test]
fn bf16_mixed_masks_fp32_gamma_of_bf16_gradients() {
    let config = TrainerConfig {
        gmt: GmtConfig::new(0.3).with_max_grad_norm(None),
        ..config()
    };
    let batches = [batch(0), batch(1)];

    // The reference, by hand: a bf16 copy, its gradients widened and weighted in fp32.
    let master = tiny_llama::<F>();
    let copy = master.clone().map(&mut ToBf16);
    let mut reference: Option<Vec<Vec<f32>>> = None;
    let mut weight = 0.0;
    for b in &batches {
        let out = CausalLm.loss(&copy, b).unwrap();
        let (w, loss) = (out.weight, out.loss.unwrap());
        weight += w;
        let grads = GradientsParams::from_grads(loss.backward(), &copy);
        let grads = grads_of(&copy, &grads);
        assert!(
            grads.iter().all(|(d, _)| *d == DType::BF16),
            "bf16 backward"
        );
        // The same arithmetic as GradientMean: widen, × weight, then add.
        let scaled: Vec<Vec<f32>> = grads
            .into_iter()
            .map(|(_, g)| {
                let t = Tensor::<Flex, 1>::from_floats(g.as_slice(), &Default::default());
                t.mul_scalar(w).into_data().to_vec::<f32>().unwrap()
            })
            .collect();
        reference = Some(match reference {
            None => scaled,
            Some(sum) => sum
                .iter()
                .zip(&scaled)
                .map(|(a, b)| {
                    let a = Tensor::<Flex, 1>::from_floats(a.as_slice(), &Default::default());
                    let b = Tensor::<Flex, 1>::from_floats(b.as_slice(), &Default::default());
                    (a + b).into_data().to_vec::<f32>().unwrap()
                })
                .collect(),
        });
    }
    let reference = reference.unwrap();

    let sums = Arc::new(Mutex::new(Vec::new()));
    let mut trainer = Trainer::new(master, CausalLm, &config, 4)
        .unwrap()
        .with_precision(Precision::Bf16Mixed)
        .unwrap()
        .with_all_reduce(Capture { sums: sums.clone() });
    let step = trainer.step(batches.clone()).unwrap();
    assert_eq!(step.totals.weight, weight);
    let sums = sums.lock().unwrap().clone();
    assert_eq!(sums.len(), reference.len());
    for ((dtype, sum), expected) in sums.iter().zip(&reference) {
        assert_eq!(*dtype, DType::F32, "Γ accumulates in fp32");
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(sum), bits(expected));
    }
    let stats = step.mask.stats().expect("a masked step").clone();
    assert_eq!(stats.params.len(), reference.len());
    for (p, sum) in stats.params.iter().zip(&reference) {
        let gamma: Vec<f32> = Tensor::<Flex, 1>::from_floats(sum.as_slice(), &Default::default())
            .div_scalar(weight)
            .into_data()
            .to_vec()
            .unwrap();
        let (threshold, kept) = mask_of(&gamma, 0.3);
        assert_eq!(p.kept, kept, "{}: kept", p.path);
        assert_eq!(
            p.threshold.map(f32::to_bits),
            Some(threshold.to_bits()),
            "{}: threshold",
            p.path
        );
    }
    for (dtype, _) in collect::<F>(trainer.model()) {
        assert_eq!(dtype, DType::F32, "master weights stay fp32");
    }
}

/// Six steps of the same run in fp32 and in each bf16 mode: the bf16 losses follow the fp32
/// ones within bf16's rounding, all fall, and evaluation reads bf16 weights.
#[test]
fn the_bf16_modes_follow_the_fp32_run() {
    let run = |precision| {
        let mut trainer = Trainer::new(tiny_llama::<F>(), CausalLm, &config(), 6)
            .unwrap()
            .with_precision(precision)
            .unwrap();
        let losses: Vec<f64> = (0..6)
            .map(|s| trainer.step([batch(s)]).unwrap().loss())
            .collect();
        let eval = trainer.evaluate(&[batch(100)]).unwrap().loss;
        (losses, eval)
    };
    let (fp32, fp32_eval) = run(Precision::Fp32);
    assert!(fp32[5] < fp32[0]);
    for precision in [Precision::Bf16Mixed, Precision::Bf16] {
        let (losses, eval) = run(precision);
        eprintln!("fp32 {fp32:?} eval {fp32_eval}\n{precision} {losses:?} eval {eval}");
        for (a, b) in fp32.iter().zip(&losses) {
            assert!((a - b).abs() / a < 0.01, "fp32 {a} vs {precision} {b}");
        }
        assert_ne!(fp32, losses, "the forward pass really ran in bf16");
        assert!(losses[5] < losses[0]);
        assert!((fp32_eval - eval).abs() / fp32_eval < 0.01);
    }
}

/// Pure bf16, two micro-batches: the weights are bf16, and so is Γ's sum at the all-reduce
/// seam (each gradient weighted and added in bf16); the mask's thresholds and kept counts
/// are those of Γ widened to fp32 under the README's definition; the weights stay bf16.
#[test]
fn bf16_keeps_gamma_in_bf16_and_masks_it_widened() {
    let config = TrainerConfig {
        gmt: GmtConfig::new(0.3).with_max_grad_norm(None),
        ..config()
    };
    let sums = Arc::new(Mutex::new(Vec::new()));
    let mut trainer = Trainer::new(tiny_llama::<F>(), CausalLm, &config, 4)
        .unwrap()
        .with_precision(Precision::Bf16)
        .unwrap()
        .with_all_reduce(Capture { sums: sums.clone() });
    for (dtype, _) in collect::<F>(trainer.model()) {
        assert_eq!(dtype, DType::BF16, "the weights themselves are bf16");
    }
    let step = trainer.step([batch(0), batch(1)]).unwrap();
    let sums = sums.lock().unwrap().clone();
    let stats = step.mask.stats().expect("a masked step").clone();
    assert_eq!(stats.params.len(), sums.len());
    for (p, (dtype, sum)) in stats.params.iter().zip(&sums) {
        assert_eq!(*dtype, DType::BF16, "{}: Γ accumulates in bf16", p.path);
        // Γ = sum / weight, divided in bf16 as GradientMean does, then widened.
        let gamma: Vec<f32> = Tensor::<Flex, 1>::from_floats(sum.as_slice(), &Default::default())
            .cast(FloatDType::BF16)
            .div_scalar(step.totals.weight)
            .cast(FloatDType::F32)
            .into_data()
            .to_vec()
            .unwrap();
        let (threshold, kept) = mask_of(&gamma, 0.3);
        assert_eq!(p.kept, kept, "{}: kept", p.path);
        assert_eq!(p.threshold, Some(threshold), "{}: threshold", p.path);
    }
    for (dtype, _) in collect::<F>(trainer.model()) {
        assert_eq!(dtype, DType::BF16, "the weights stay bf16");
    }
}

/// Pure bf16 with GMT: 2 steps, a checkpoint, a resumed trainer and 2 more steps end at the
/// uninterrupted run's weights to the bit: the bf16 weights, moments and Kahan compensation
/// all come back from the checkpoint.
#[test]
fn bf16_resumes_bit_for_bit() {
    let trainer = || {
        Trainer::new(tiny_llama::<F>(), CausalLm, &config(), 4)
            .unwrap()
            .with_precision(Precision::Bf16)
            .unwrap()
    };
    let mut straight = trainer();
    for s in 0..4 {
        straight.step([batch(s)]).unwrap();
    }
    let dir = gmt_tests::TempDir::new("bf16-resume");
    let mut first = trainer();
    for s in 0..2 {
        first.step([batch(s)]).unwrap();
    }
    let saved = first.save_checkpoint(dir.path(), &(), &[], 1).unwrap();
    let checkpoint = gmt_train::Checkpoint::open(&saved).unwrap();
    let mut resumed = Trainer::resume(
        tiny_llama::<F>(),
        CausalLm,
        &config(),
        &checkpoint,
        &Default::default(),
    )
    .unwrap()
    .with_precision(Precision::Bf16)
    .unwrap();
    for s in 2..4 {
        resumed.step([batch(s)]).unwrap();
    }
    assert_eq!(
        collect::<F>(resumed.model()),
        collect::<F>(straight.model())
    );
}
