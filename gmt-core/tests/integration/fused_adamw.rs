//! `FusedAdamW` is burn's AdamW: the same bits after every step, on both CPU backends (its
//! fused pass) and whatever the weight decay, and records that load into burn's AdamW.

use burn::backend::{Autodiff, Flex, NdArray};
use burn::module::{AutodiffModule, Module, Param};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsParams, Optimizer};
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use gmt_core::FusedAdamW;

#[derive(Module, Debug)]
struct Net<B: Backend> {
    /// Larger than one chunk of the fused pass (65,536 entries), and not a multiple of it.
    weight: Param<Tensor<B, 2>>,
    bias: Param<Tensor<B, 1>>,
}

const ROWS: usize = 300;
const COLS: usize = 257;

/// Deterministic values spread over several magnitudes, zeros and both signs included.
fn wave(n: usize, phase: f32) -> Vec<f32> {
    (0..n)
        .map(|i| match i % 97 {
            0 => 0.0,
            1 => -0.0,
            k => ((i as f32 + 1.0) * 0.731 + phase).sin() * 10f32.powi(k as i32 % 9 - 6),
        })
        .collect()
}

fn net<B: AutodiffBackend>(device: &B::Device) -> Net<B> {
    let weight: Tensor<B::InnerBackend, 1> = Tensor::from_data(
        TensorData::new(wave(ROWS * COLS, 0.0), [ROWS * COLS]),
        device,
    );
    let bias: Tensor<B::InnerBackend, 1> =
        Tensor::from_data(TensorData::new(wave(COLS, 1.0), [COLS]), device);
    Net {
        weight: Param::from_tensor(Tensor::from_inner(weight.reshape([ROWS, COLS])).require_grad()),
        bias: Param::from_tensor(Tensor::from_inner(bias).require_grad()),
    }
}

fn grads<B: AutodiffBackend>(model: &Net<B>, step: usize, device: &B::Device) -> GradientsParams {
    let phase = step as f32 * 0.37;
    let mut grads = GradientsParams::new();
    let weight: Tensor<B::InnerBackend, 1> = Tensor::from_data(
        TensorData::new(wave(ROWS * COLS, 2.0 + phase), [ROWS * COLS]),
        device,
    );
    grads.register(model.weight.id, weight.reshape([ROWS, COLS]));
    let bias: Tensor<B::InnerBackend, 1> =
        Tensor::from_data(TensorData::new(wave(COLS, 3.0 + phase), [COLS]), device);
    grads.register(model.bias.id, bias);
    grads
}

fn bits<B: AutodiffBackend>(model: &Net<B>) -> Vec<u32> {
    let model = model.valid();
    let weight: Vec<f32> = model.weight.val().into_data().to_vec().unwrap();
    let bias: Vec<f32> = model.bias.val().into_data().to_vec().unwrap();
    weight.iter().chain(&bias).map(|x| x.to_bits()).collect()
}

/// Five steps of each with varying rates; then each one's record, serialized, drives the
/// other for two more steps to the same bits.
fn same_as_burn<B: AutodiffBackend>(weight_decay: f32) {
    let device = Default::default();
    let config = AdamWConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.999)
        .with_epsilon(1e-8)
        .with_weight_decay(weight_decay);
    let mut burn = config.init::<B, Net<B>>();
    let mut fused = FusedAdamW::new(0.9, 0.999, 1e-8, weight_decay).init::<B, Net<B>>();
    let (mut a, mut b) = (net::<B>(&device), net::<B>(&device));
    let name = B::name(&device);
    for step in 0..5 {
        let lr = 1e-3 / (step + 1) as f64;
        let g = grads(&a, step, &device);
        a = burn.step(lr, a, g);
        let g = grads(&b, step, &device);
        b = fused.step(lr, b, g);
        assert!(
            bits(&a) == bits(&b),
            "{name}, decay {weight_decay}: step {step} differs"
        );
    }
    let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
    let bytes = recorder.record(fused.to_record(), ()).unwrap();
    let record = recorder
        .load::<<OptimizerAdaptor<AdamW, Net<B>, B> as Optimizer<Net<B>, B>>::Record>(
            bytes, &device,
        )
        .unwrap();
    let mut resumed = config.init::<B, Net<B>>().load_record(record);
    // …and burn's record (a checkpoint gmt saved before it used FusedAdamW) drives FusedAdamW.
    let bytes = recorder.record(burn.to_record(), ()).unwrap();
    let record = recorder
        .load::<<OptimizerAdaptor<FusedAdamW, Net<B>, B> as Optimizer<Net<B>, B>>::Record>(
            bytes, &device,
        )
        .unwrap();
    let mut fused_from_burn = FusedAdamW::new(0.9, 0.999, 1e-8, weight_decay)
        .init::<B, Net<B>>()
        .load_record(record);
    let (mut c, mut d) = (b.clone(), a.clone());
    for step in 5..7 {
        let g = grads(&a, step, &device);
        a = burn.step(1e-4, a, g);
        let g = grads(&b, step, &device);
        b = fused.step(1e-4, b, g);
        let g = grads(&c, step, &device);
        c = resumed.step(1e-4, c, g);
        let g = grads(&d, step, &device);
        d = fused_from_burn.step(1e-4, d, g);
        assert!(
            bits(&b) == bits(&c),
            "{name}: step {step} after the fused record differs"
        );
        assert!(
            bits(&a) == bits(&d),
            "{name}: step {step} after burn's record differs"
        );
    }
}

#[test]
fn fused_adamw_is_burns_adamw_bit_for_bit_on_ndarray() {
    same_as_burn::<Autodiff<NdArray>>(0.0);
    same_as_burn::<Autodiff<NdArray>>(0.01);
}

#[test]
fn fused_adamw_is_burns_adamw_bit_for_bit_on_flex() {
    same_as_burn::<Autodiff<Flex>>(0.0);
    same_as_burn::<Autodiff<Flex>>(0.1);
}
