//! gmt-core used the way an outside burn project would: its own module, its own training
//! loop, only gmt-core's public API.

use burn::backend::{Autodiff, NdArray};
use burn::module::Module;
use burn::nn::{Linear, LinearConfig, Relu};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use gmt_core::{GmtConfig, GradientMean, MaskTarget};

type B = Autodiff<NdArray>;

#[derive(Module, Debug)]
struct Mlp<B: Backend> {
    hidden: Linear<B>,
    out: Linear<B>,
    activation: Relu,
}

impl<B: Backend> Mlp<B> {
    fn new(device: &B::Device) -> Self {
        Self {
            hidden: LinearConfig::new(4, 32).init(device),
            out: LinearConfig::new(32, 1).init(device),
            activation: Relu::new(),
        }
    }

    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.out
            .forward(self.activation.forward(self.hidden.forward(x)))
    }
}

/// y = sin(x0) + x1·x2 − 0.5·x3 on a fixed grid of inputs.
fn batch(device: &burn::tensor::Device<B>, offset: usize) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let n = 32;
    let mut xs = Vec::with_capacity(n * 4);
    let mut ys = Vec::with_capacity(n);
    for i in 0..n {
        let t = (i + offset * n) as f32;
        let x = [
            (t * 0.37).sin() * 2.0,
            (t * 0.11).cos(),
            (t * 0.23).sin(),
            (t * 0.05).cos(),
        ];
        ys.push(x[0].sin() + x[1] * x[2] - 0.5 * x[3]);
        xs.extend(x);
    }
    (
        Tensor::from_data(TensorData::new(xs, [n, 4]), device),
        Tensor::from_data(TensorData::new(ys, [n, 1]), device),
    )
}

fn loss(model: &Mlp<B>, x: Tensor<B, 2>, y: Tensor<B, 2>) -> Tensor<B, 1> {
    (model.forward(x) - y).powi_scalar(2).mean()
}

#[test]
fn an_outside_mlp_trains_with_gmt_and_masked_entries_stay_put() {
    let device = Default::default();
    let mut model = Mlp::<B>::new(&device);
    let config = GmtConfig::new(0.5)
        .with_target(MaskTarget::Update)
        .with_exclude(vec!["*.bias".into()]);
    let adamw = AdamWConfig::new()
        .with_epsilon(1e-8)
        .with_weight_decay(0.01)
        .init();
    let mut optim = config.init(adamw, &model).expect("valid config");

    let eval = |model: &Mlp<B>| {
        let (x, y) = batch(&device, 1000);
        loss(model, x, y).into_scalar()
    };
    let initial = eval(&model);

    let mut accumulate = GradientMean::new();
    for step in 0..300 {
        for micro in 0..2 {
            let (x, y) = batch(&device, step * 2 + micro);
            let grads = GradientsParams::from_grads(loss(&model, x, y).backward(), &model);
            accumulate.add(&model, grads);
        }
        let gamma = accumulate.finish(&model).unwrap();

        if step % 50 == 0 {
            // Check the update target's promise on the hidden layer: an entry with
            // |Γ| below the step's threshold does not move at all.
            let g: Vec<f32> = gamma
                .get::<NdArray, 2>(model.hidden.weight.id)
                .unwrap()
                .into_data()
                .to_vec()
                .unwrap();
            let before: Vec<f32> = model.hidden.weight.val().into_data().to_vec().unwrap();
            model = optim.try_step(3e-3, model, gamma).unwrap().0;
            let after: Vec<f32> = model.hidden.weight.val().into_data().to_vec().unwrap();
            let stats = optim.last_report().unwrap().stats().unwrap();
            let hidden = stats.get("hidden.weight").unwrap();
            let threshold = hidden.threshold.unwrap();
            let masked = g.iter().filter(|v| v.abs() < threshold).count();
            assert_eq!(masked, 64, "floor(0.5·128) entries masked, no ties");
            for i in 0..g.len() {
                if g[i].abs() < threshold {
                    assert_eq!(
                        after[i].to_bits(),
                        before[i].to_bits(),
                        "masked entry {i} moved"
                    );
                }
            }
            let bias = stats.get("hidden.bias").unwrap();
            assert!(
                !bias.maskable && bias.kept == bias.numel,
                "excluded bias is never masked"
            );
            assert_eq!(stats.get("out.weight").unwrap().kept, 16);
        } else {
            model = optim.try_step(3e-3, model, gamma).unwrap().0;
        }
    }
    let trained = eval(&model);
    assert!(
        trained < initial * 0.2,
        "loss {initial} -> {trained}: GMT did not train the MLP"
    );
}
