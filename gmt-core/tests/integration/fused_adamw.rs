//! `FusedAdamW` is burn's AdamW: the same bits after every step, on both CPU backends (its
//! fused pass) and whatever the weight decay, with records that resume exactly (its own, and
//! burn's converted); and
//! for bf16 weights, a compensated update that keeps what bf16 rounding would lose.

use burn::backend::{Autodiff, Flex, NdArray};
use burn::module::{AutodiffModule, Module, Param};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsParams, Optimizer};
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, FloatDType, Tensor, TensorData};
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

/// Five steps of each with varying rates; then two more, and two from FusedAdamW's record
/// and from burn's (converted), serialized, to the same bits.
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
    // FusedAdamW's own record (a checkpoint) continues the run to the same bits.
    let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
    let bytes = recorder.record(fused.to_record(), ()).unwrap();
    let record = recorder
        .load::<<OptimizerAdaptor<FusedAdamW, Net<B>, B> as Optimizer<Net<B>, B>>::Record>(
            bytes, &device,
        )
        .unwrap();
    let mut resumed = FusedAdamW::new(0.9, 0.999, 1e-8, weight_decay)
        .init::<B, Net<B>>()
        .load_record(record);
    // …and burn's record (a checkpoint gmt wrote before FusedAdamW kept its own state),
    // converted, drives FusedAdamW.
    let bytes = recorder.record(burn.to_record(), ()).unwrap();
    let record = recorder
        .load::<<OptimizerAdaptor<AdamW, Net<B>, B> as Optimizer<Net<B>, B>>::Record>(
            bytes, &device,
        )
        .unwrap();
    let record = (record.into_iter())
        .map(|(id, r)| (id, FusedAdamW::record_from_adamw(r)))
        .collect();
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
        assert!(bits(&a) == bits(&b), "{name}: step {step} differs");
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

#[derive(Module, Debug)]
struct Row<B: Backend> {
    weight: Param<Tensor<B, 1>>,
}

const ROW: usize = 1000;

fn row<B: AutodiffBackend>(dtype: FloatDType, device: &B::Device) -> Row<B> {
    // Weights of several binades, each a bf16 value, so both runs start from the same point.
    let values: Vec<f32> = (0..ROW).map(|i| [1.0, -0.5, 3.0, 0.0625][i % 4]).collect();
    let weight: Tensor<B::InnerBackend, 1> =
        Tensor::from_data(TensorData::new(values, [ROW]), device);
    Row {
        weight: Param::from_tensor(Tensor::from_inner(weight.cast(dtype)).require_grad()),
    }
}

fn row_step<B: AutodiffBackend>(
    optim: &mut impl Optimizer<Row<B>, B>,
    model: Row<B>,
    step: usize,
) -> Row<B> {
    let device = model.weight.device();
    // Steady gradients of both signs and several sizes: AdamW moves every weight by about
    // the rate per step.
    let g: Vec<f32> = (0..ROW)
        .map(|i| {
            let size = 0.1 + 0.05 * (i as f32 * 0.731 + step as f32 * 0.01).sin();
            if i % 3 == 0 {
                -size
            } else {
                size * 10f32.powi(i as i32 % 5 - 2)
            }
        })
        .collect();
    let g: Tensor<B::InnerBackend, 1> = Tensor::from_data(TensorData::new(g, [ROW]), &device);
    let mut grads = GradientsParams::new();
    grads.register(model.weight.id, g.cast(model.weight.dtype()));
    optim.step(1e-4, model, grads)
}

fn row_values<B: AutodiffBackend>(model: &Row<B>) -> Vec<f32> {
    let w = model.valid().weight.val();
    w.cast(FloatDType::F32).into_data().to_vec().unwrap()
}

/// bf16 weights with Kahan compensation: 300 steps at rate 1e-4 move each weight by about
/// 0.03 (AdamW's step is about the rate), in updates far below half of bf16's spacing at 1
/// (2⁻⁸), which rounding to nearest would throw away one by one. The compensated bf16 weights
/// end within one bf16 spacing of the f32 run's, and a record taken half way (bf16 moments
/// and compensation) continues to the same bits.
#[test]
fn bf16_weights_keep_updates_below_their_resolution() {
    type B = Autodiff<Flex>;
    let device = Default::default();
    let adamw = || FusedAdamW::new(0.9, 0.999, 1e-8, 0.0).init::<B, Row<B>>();
    let (mut optim_f32, mut optim_bf16) = (adamw(), adamw());
    let mut f32_run = row::<B>(FloatDType::F32, &device);
    let mut bf16_run = row::<B>(FloatDType::BF16, &device);
    let start = row_values(&bf16_run);
    let mut halfway = None;
    for step in 0..300 {
        f32_run = row_step(&mut optim_f32, f32_run, step);
        bf16_run = row_step(&mut optim_bf16, bf16_run, step);
        if step == 149 {
            let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
            let bytes = recorder.record(optim_bf16.to_record(), ()).unwrap();
            halfway = Some((bytes, bf16_run.clone()));
        }
    }
    assert_eq!(bf16_run.weight.dtype(), DType::BF16);
    let (exact, compensated) = (row_values(&f32_run), row_values(&bf16_run));
    let mut worst = 0f32;
    for i in 0..ROW {
        let spacing = 2f32.powi(start[i].abs().log2().floor() as i32 - 7);
        let (moved, moved_bf16) = (exact[i] - start[i], compensated[i] - start[i]);
        assert!(
            moved.abs() > 0.02,
            "entry {i}: the f32 run moved by {moved}"
        );
        // Each step's update is below half a spacing: without compensation, none would land.
        assert!(moved.abs() / 300.0 < spacing / 2.0);
        // Within half a spacing (the stored weight is rounded) and 6% (bf16 moments: 4.5%
        // at worst today).
        let off = ((moved_bf16 - moved).abs() - spacing / 2.0).max(0.0) / moved.abs();
        worst = worst.max(off);
        assert!(
            off < 0.06,
            "entry {i}: moved {moved_bf16} in bf16, {moved} in f32 (start {})",
            start[i]
        );
    }
    eprintln!(
        "bf16 moved each weight within half a spacing + {:.2}% of f32's movement",
        100.0 * worst
    );

    let (bytes, mut resumed) = halfway.unwrap();
    let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
    let record = recorder
        .load::<<OptimizerAdaptor<FusedAdamW, Row<B>, B> as Optimizer<Row<B>, B>>::Record>(
            bytes, &device,
        )
        .unwrap();
    let mut optim = adamw().load_record(record);
    for step in 150..300 {
        resumed = row_step(&mut optim, resumed, step);
    }
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
    assert_eq!(bits(row_values(&resumed)), bits(compensated));
}

/// GMT's update target puts masked entries back exactly, which bf16 weights under FusedAdamW
/// cannot honour (the compensation would carry the masked updates into a later step): the
/// step is refused, naming the parameter, and the module comes back unchanged. The gradient
/// target steps the same weights.
#[test]
fn the_update_target_refuses_bf16_weights() {
    use gmt_core::{GmtConfig, GmtError, MaskTarget};
    type B = Autodiff<Flex>;
    let device = Default::default();
    let model = row::<B>(FloatDType::BF16, &device);
    let before = row_values(&model);
    let grads = |model: &Row<B>| {
        let g: Tensor<Flex, 1> = Tensor::ones([ROW], &device);
        let mut grads = GradientsParams::new();
        grads.register(model.weight.id, g.cast(FloatDType::BF16));
        grads
    };
    let adamw = || FusedAdamW::new(0.9, 0.999, 1e-8, 0.0).init::<B, Row<B>>();

    let mut update = GmtConfig::new(0.3)
        .with_target(MaskTarget::Update)
        .init(adamw(), &model)
        .unwrap();
    let g = grads(&model);
    let failure = update.try_step(1e-2, model, g).unwrap_err();
    assert_eq!(
        failure.error,
        GmtError::UpdateTargetPrecision {
            param: "weight".into(),
            dtype: "bf16".into()
        }
    );
    assert!(failure.error.to_string().contains("gradient target"));
    let model = failure.module;
    assert_eq!(row_values(&model), before);

    let mut gradient = GmtConfig::new(0.3).init(adamw(), &model).unwrap();
    let g = grads(&model);
    let (model, _) = gradient.try_step(1e-2, model, g).unwrap();
    assert_eq!(model.weight.dtype(), DType::BF16);
    assert_ne!(row_values(&model), before);
}
