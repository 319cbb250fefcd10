//! Conformance with the PyTorch reference vector `shared/fixtures/gmt-adamw-vector.safetensors`:
//! Γ = mean of two micro-batches, per-tensor or global threshold, `torch.optim.AdamW`, three
//! steps, for every scope × target.

use std::collections::HashMap;
use std::path::PathBuf;

use burn::backend::{Autodiff, NdArray};
use burn::module::{Module, Param};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use gmt_core::masking::{MaskInput, mask_gradients};
use gmt_core::{GmtConfig, GradientMean, MaskScope, MaskTarget};
use rand::SeedableRng;

type B = Autodiff<NdArray>;
type Inner = NdArray;

#[derive(Module, Debug)]
struct Vector<B: Backend> {
    w: Param<Tensor<B, 2>>,
    b: Param<Tensor<B, 1>>,
}

struct Fixture {
    tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
    meta: HashMap<String, String>,
}

impl Fixture {
    fn load() -> Self {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/fixtures/gmt-adamw-vector.safetensors");
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let meta = metadata.metadata().clone().unwrap_or_default();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let tensors = st
            .tensors()
            .into_iter()
            .map(|(name, view)| {
                let values = view
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                (name, (view.shape().to_vec(), values))
            })
            .collect();
        Self { tensors, meta }
    }

    fn values(&self, name: &str) -> &[f32] {
        &self
            .tensors
            .get(name)
            .unwrap_or_else(|| panic!("fixture has no `{name}`"))
            .1
    }

    fn tensor<const D: usize>(&self, name: &str) -> Tensor<Inner, D> {
        let (shape, values) = &self.tensors[name];
        Tensor::from_data(
            TensorData::new(values.clone(), shape.clone()),
            &Default::default(),
        )
    }

    fn meta_f64(&self, key: &str) -> f64 {
        self.meta[key].parse().unwrap()
    }
}

fn model(fx: &Fixture) -> Vector<B> {
    Vector {
        w: Param::from_tensor(Tensor::from_inner(fx.tensor::<2>("p0.w")).require_grad()),
        b: Param::from_tensor(Tensor::from_inner(fx.tensor::<1>("p0.b")).require_grad()),
    }
}

fn micro_grads(fx: &Fixture, model: &Vector<B>, step: usize, micro: usize) -> GradientsParams {
    let mut grads = GradientsParams::new();
    grads.register(
        model.w.id,
        fx.tensor::<2>(&format!("grad.step{step}.micro{micro}.w")),
    );
    grads.register(
        model.b.id,
        fx.tensor::<1>(&format!("grad.step{step}.micro{micro}.b")),
    );
    grads
}

fn assert_close(actual: &[f32], expected: &[f32], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        // 1e-5 relative; the floor keeps entries that pass near zero from demanding more
        // precision than f32 arithmetic on values of order one can give.
        let tolerance = 1e-5 * e.abs().max(1e-2);
        assert!(
            (a - e).abs() <= tolerance,
            "{what}[{i}]: got {a}, expected {e} (|diff| {})",
            (a - e).abs()
        );
    }
}

fn run(scope: MaskScope, target: MaskTarget) {
    let fx = Fixture::load();
    let scope_name = match scope {
        MaskScope::Tensor => "tensor",
        MaskScope::Global => "global",
    };
    let target_name = match target {
        MaskTarget::Gradient => "gradient",
        MaskTarget::Update => "update",
    };
    let steps: usize = fx.meta["steps"].parse().unwrap();
    let accum: usize = fx.meta["accum"].parse().unwrap();
    let config = GmtConfig::new(fx.meta_f64("mask_ratio"))
        .with_scope(scope)
        .with_target(target);
    // burn's AdamW defaults (eps 1e-5, weight decay 1e-4) differ from PyTorch's: set all four.
    let adamw = AdamWConfig::new()
        .with_beta_1(fx.meta_f64("beta1") as f32)
        .with_beta_2(fx.meta_f64("beta2") as f32)
        .with_epsilon(fx.meta_f64("eps") as f32)
        .with_weight_decay(fx.meta_f64("weight_decay") as f32)
        .init();
    let mut model = model(&fx);
    let mut optim = config.init(adamw, &model).unwrap();
    let mut mean = GradientMean::new();

    for step in 0..steps {
        for micro in 0..accum {
            mean.add(&model, micro_grads(&fx, &model, step, micro));
        }
        let gamma = mean.finish(&model).unwrap();

        // The mask on its own, through the public mask_gradients API.
        let inputs = [("w", model.w.id), ("b", model.b.id)].map(|(name, id)| {
            let grad = match name {
                "w" => gamma.get::<Inner, 2>(id).unwrap().flatten::<1>(0, 1),
                _ => gamma.get::<Inner, 1>(id).unwrap(),
            };
            MaskInput {
                path: name.to_string(),
                maskable: true,
                grad,
            }
        });
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let mask = mask_gradients(&config, inputs.to_vec(), true, &mut rng).expect("finite Γ");
        for (input, drop) in inputs.iter().zip(&mask.drops) {
            let key = format!("{scope_name}.{target_name}.mask.step{step}.{}", input.path);
            let expected: Vec<bool> = fx.values(&key).iter().map(|&m| m > 0.5).collect();
            let kept: Vec<bool> = match drop {
                Some(drop) => drop
                    .clone()
                    .into_data()
                    .iter::<bool>()
                    .map(|d| !d)
                    .collect(),
                None => vec![true; expected.len()],
            };
            assert_eq!(kept, expected, "{key}");
        }

        model = optim.try_step(fx.meta_f64("lr"), model, gamma).unwrap().0;

        let stats = optim.last_report().unwrap().stats().unwrap().clone();
        for (name, value) in [
            ("w", model.w.val().into_data().to_vec::<f32>().unwrap()),
            ("b", model.b.val().into_data().to_vec::<f32>().unwrap()),
        ] {
            let mask_key = format!("{scope_name}.{target_name}.mask.step{step}.{name}");
            let expected_kept = fx.values(&mask_key).iter().filter(|&&m| m > 0.5).count();
            assert_eq!(
                stats.get(name).unwrap().kept,
                expected_kept,
                "{mask_key} kept count"
            );
            let key = format!("{scope_name}.{target_name}.param.step{step}.{name}");
            assert_close(&value, fx.values(&key), &key);
        }
    }
}

#[test]
fn tensor_scope_gradient_target() {
    run(MaskScope::Tensor, MaskTarget::Gradient);
}

#[test]
fn tensor_scope_update_target() {
    run(MaskScope::Tensor, MaskTarget::Update);
}

#[test]
fn global_scope_gradient_target() {
    run(MaskScope::Global, MaskTarget::Gradient);
}

#[test]
fn global_scope_update_target() {
    run(MaskScope::Global, MaskTarget::Update);
}
