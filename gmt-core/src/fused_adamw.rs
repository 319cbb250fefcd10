//! [`FusedAdamW`]: burn's AdamW, bit for bit, in one pass per parameter on host memory; and
//! for bf16 weights, the same update applied with Kahan compensation.

use burn::module::AutodiffModule;
use burn::optim::SimpleOptimizer;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::record::{AdaptorRecord, AdaptorRecordV1};
use burn::optim::{AdamW, AdamWConfig, AdamWState, AdaptiveMomentumState, LearningRate};
use burn::record::Record;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, FloatDType, Tensor, TensorData};
use rayon::prelude::*;

use crate::mask::{host_values, is_host_backend};

/// Entries per rayon task of the fused pass.
const CHUNK: usize = 1 << 16;

/// AdamW with decoupled weight decay (Loshchilov & Hutter), computing exactly what burn's
/// [`AdamW`] computes — the same f32 operations in the same order, so the same bits — but, on
/// backends whose tensors live in host memory (burn's Flex and ndarray), in one pass over each
/// parameter, its gradient and its two moments instead of burn's dozen tensor operations,
/// each a pass and most an allocation. On other backends (GPUs) it is burn's AdamW.
///
/// Its state ([`FusedAdamWState`]) is burn's [`AdamWState`] plus the compensation term of
/// bf16 weights; a record of burn's AdamW (a checkpoint written with it, or by gmt before
/// bf16 training) converts with [`record_from_adamw`](Self::record_from_adamw). AMSGrad and
/// cautious weight decay are not offered.
///
/// **bf16 weights** (README "Precision modes", `bf16`): the step computes in f32 what it
/// computes for f32 weights, from the bf16 weights, Γ and moments widened; the moments are
/// stored back in bf16, and the weight update with Kahan compensation: the part of each
/// update that rounding to bf16 loses is kept (in bf16) and added to the next update, so
/// updates far below a weight's bf16 resolution still add up instead of vanishing. This
/// runs as tensor operations on every backend with bf16 arithmetic.
///
/// ```
/// use burn::backend::{Autodiff, NdArray};
/// use burn::nn::{Linear, LinearConfig};
/// use burn::optim::{GradientsParams, Optimizer};
/// use burn::tensor::{Distribution, Tensor};
/// use gmt_core::FusedAdamW;
///
/// type B = Autodiff<NdArray>;
/// let device = Default::default();
/// let model: Linear<B> = LinearConfig::new(8, 4).init(&device);
/// let mut optim = FusedAdamW::new(0.9, 0.999, 1e-8, 0.01).init::<B, Linear<B>>();
/// let x = Tensor::<B, 2>::random([16, 8], Distribution::Default, &device);
/// let grads = GradientsParams::from_grads(model.forward(x).powi_scalar(2).mean().backward(), &model);
/// let model = optim.step(1e-3, model, grads);
/// # let _ = model;
/// ```
#[derive(Clone)]
pub struct FusedAdamW {
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    weight_decay: f32,
    /// burn's own, for backends whose tensors are not in host memory.
    reference: AdamW,
}

impl FusedAdamW {
    /// AdamW with these hyper-parameters (the learning rate is given at each step).
    pub fn new(beta_1: f32, beta_2: f32, epsilon: f32, weight_decay: f32) -> Self {
        let reference = AdamWConfig::new()
            .with_beta_1(beta_1)
            .with_beta_2(beta_2)
            .with_epsilon(epsilon)
            .with_weight_decay(weight_decay)
            .build();
        Self {
            beta_1,
            beta_2,
            epsilon,
            weight_decay,
            reference,
        }
    }

    /// The optimizer for a module, as burn's `AdamWConfig::init` makes one.
    pub fn init<B: AutodiffBackend, M: AutodiffModule<B>>(self) -> OptimizerAdaptor<Self, M, B> {
        OptimizerAdaptor::from(self)
    }

    /// One parameter's record of burn's AdamW as this optimizer's: the same moments and step
    /// count, no compensation (burn's AdamW steps f32 weights).
    pub fn record_from_adamw<B: AutodiffBackend>(
        record: AdaptorRecord<AdamW, B>,
    ) -> AdaptorRecord<Self, B> {
        use AdaptorRecordV1::*;
        let AdaptorRecord::V1(record) = record;
        AdaptorRecord::V1(match record {
            Rank0(s) => Rank0(FusedAdamWState::from_adamw(s)),
            Rank1(s) => Rank1(FusedAdamWState::from_adamw(s)),
            Rank2(s) => Rank2(FusedAdamWState::from_adamw(s)),
            Rank3(s) => Rank3(FusedAdamWState::from_adamw(s)),
            Rank4(s) => Rank4(FusedAdamWState::from_adamw(s)),
            Rank5(s) => Rank5(FusedAdamWState::from_adamw(s)),
            Rank6(s) => Rank6(FusedAdamWState::from_adamw(s)),
            Rank7(s) => Rank7(FusedAdamWState::from_adamw(s)),
            Rank8(s) => Rank8(FusedAdamWState::from_adamw(s)),
        })
    }
}

/// The state [`FusedAdamW`] keeps per parameter.
#[derive(Record, Clone)]
pub struct FusedAdamWState<B: Backend, const D: usize> {
    /// The moments and step count, as burn's AdamW keeps them (in the weights' format).
    pub momentum: AdaptiveMomentumState<B, D>,
    /// bf16 weights only: what rounding the updates to bf16 has lost so far (Kahan's
    /// compensation), in bf16. `None` for f32 weights.
    pub compensation: Option<Tensor<B, D>>,
}

impl<B: Backend, const D: usize> FusedAdamWState<B, D> {
    fn from_adamw(state: AdamWState<B, D>) -> Self {
        Self {
            momentum: state.momentum,
            compensation: None,
        }
    }

    fn into_adamw(self) -> AdamWState<B, D> {
        AdamWState {
            momentum: self.momentum,
        }
    }
}

/// A tensor's values, moved out where the backend allows.
fn host<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Vec<f32> {
    let n = tensor.shape().num_elements();
    host_values(tensor.reshape([n]))
}

impl FusedAdamW {
    /// The f32 step: fused on host backends, burn's AdamW elsewhere.
    fn step_f32<B: Backend, const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<AdamWState<B, D>>,
    ) -> (Tensor<B, D>, AdamWState<B, D>) {
        let device = tensor.device();
        let (tensor, state) = if is_host_backend::<B>(&device) && grad.dtype() == DType::F32 {
            self.fused(lr, tensor, grad, state)
        } else {
            self.reference
                .step(lr, tensor, grad.cast(FloatDType::F32), state)
        };
        (tensor, state.expect("AdamW always returns its state"))
    }

    /// bf16 weights: the f32 step on widened values, stored back with Kahan compensation.
    fn step_bf16<B: Backend, const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<FusedAdamWState<B, D>>,
    ) -> (Tensor<B, D>, FusedAdamWState<B, D>) {
        let f32 = FloatDType::F32;
        let (adamw, compensation) = match state {
            Some(FusedAdamWState {
                momentum,
                compensation,
            }) => {
                let momentum = AdaptiveMomentumState {
                    time: momentum.time,
                    moment_1: momentum.moment_1.cast(f32),
                    moment_2: momentum.moment_2.cast(f32),
                    max_moment_2: None,
                };
                (Some(AdamWState { momentum }), compensation)
            }
            None => (None, None),
        };
        // Two fp32 widenings of the same bf16 bits, rather than one shared: step_f32 updates its
        // input in place when it holds the only handle, and a shared one would be copied.
        let (updated, adamw) = self.step_f32(lr, tensor.clone().cast(f32), grad.cast(f32), adamw);
        let weight = tensor.cast(f32);
        let mut update = updated - weight.clone();
        if let Some(compensation) = compensation {
            update = update + compensation.cast(f32);
        }
        let stored = (weight.clone() + update.clone()).cast(FloatDType::BF16);
        // What the bf16 weight did not take of this update (and of the earlier ones).
        let lost = update - (stored.clone().cast(f32) - weight);
        let momentum = adamw.momentum;
        let state = FusedAdamWState {
            momentum: AdaptiveMomentumState {
                time: momentum.time,
                moment_1: momentum.moment_1.cast(FloatDType::BF16),
                moment_2: momentum.moment_2.cast(FloatDType::BF16),
                max_moment_2: None,
            },
            compensation: Some(lost.cast(FloatDType::BF16)),
        };
        (stored, state)
    }

    /// burn's AdamW in one pass over host memory (f32 weights and gradient).
    fn fused<B: Backend, const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<AdamWState<B, D>>,
    ) -> (Tensor<B, D>, Option<AdamWState<B, D>>) {
        let device = tensor.device();
        let shape = tensor.shape();
        let n = shape.num_elements();
        let (time, mut m, mut v) = match state {
            Some(state) => {
                let momentum = state.momentum;
                let m = host(momentum.moment_1);
                let v = host(momentum.moment_2);
                (momentum.time + 1, m, v)
            }
            None => (1, vec![0.0; n], vec![0.0; n]),
        };
        let mut p = host(tensor);
        let g = host(grad);

        let step = AdamWStep::new(self, lr, time);
        p.par_chunks_mut(CHUNK)
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .zip(g.par_chunks(CHUNK))
            .for_each(|(((p, m), v), g)| step.apply(p, m, v, g));
        let tensor =
            |values: Vec<f32>| Tensor::from_data(TensorData::new(values, shape.clone()), &device);
        let state = AdamWState {
            momentum: AdaptiveMomentumState {
                time,
                moment_1: tensor(m),
                moment_2: tensor(v),
                max_moment_2: None,
            },
        };
        (tensor(p), Some(state))
    }
}

/// The scalars of one AdamW step, and the step over a chunk of entries.
///
/// Passed by value, so that the compiler keeps them in registers: read through the closure's
/// references, they were reloaded for every entry (the stores to the weights and moments
/// might have changed them, as far as it could tell) and the loop ran one entry at a time.
#[derive(Clone, Copy)]
struct AdamWStep {
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    /// 1 − β₁ and 1 − β₂.
    f1: f32,
    f2: f32,
    /// The bias corrections 1 − β₁ᵗ and 1 − β₂ᵗ.
    c1: f32,
    c2: f32,
    lr: f32,
    /// The weight-decay factor 1 − lr·λ, where λ ≠ 0.
    decay: Option<f32>,
    /// The first step, whose moments start from zero.
    first: bool,
}

impl AdamWStep {
    /// burn's AdamW, operation by operation (burn-optim 0.21 `adamw.rs`): scalars are f32, or
    /// f64 rounded to f32 where burn passes an f64 (the rate and the decay factor).
    fn new(adamw: &FusedAdamW, lr: LearningRate, time: usize) -> Self {
        let (beta_1, beta_2) = (adamw.beta_1, adamw.beta_2);
        let decay_rate = lr * adamw.weight_decay as f64;
        Self {
            beta_1,
            beta_2,
            epsilon: adamw.epsilon,
            f1: 1.0 - beta_1,
            f2: 1.0 - beta_2,
            c1: 1f32 - beta_1.powi(time as i32),
            c2: 1f32 - beta_2.powi(time as i32),
            lr: lr as f32,
            decay: (decay_rate != 0.0).then_some((1.0 - decay_rate) as f32),
            first: time == 1,
        }
    }

    /// Updates weights `p` and moments `m`, `v` in place from gradient `g`.
    fn apply(self, p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
        let Self {
            beta_1: b1,
            beta_2: b2,
            epsilon: eps,
            f1,
            f2,
            c1,
            c2,
            lr,
            decay,
            first,
        } = self;
        for (((p, m), v), &gi) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
            let (mi, vi) = if first {
                (gi * f1, (gi * gi) * f2)
            } else {
                (*m * b1 + gi * f1, *v * b2 + (gi * gi) * f2)
            };
            *m = mi;
            *v = vi;
            let delta = (mi / c1) / ((vi / c2).sqrt() + eps);
            let decayed = match decay {
                Some(d) => *p * d,
                None => *p,
            };
            *p = decayed - delta * lr;
        }
    }
}

impl<B: Backend> SimpleOptimizer<B> for FusedAdamW {
    type State<const D: usize> = FusedAdamWState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        match tensor.dtype() {
            DType::BF16 => {
                let (tensor, state) = self.step_bf16(lr, tensor, grad, state);
                (tensor, Some(state))
            }
            DType::F32 => {
                let state = state.map(FusedAdamWState::into_adamw);
                let (tensor, state) = self.step_f32(lr, tensor, grad, state);
                (tensor, Some(FusedAdamWState::from_adamw(state)))
            }
            // Other formats (f16 on WGPU): burn's AdamW in that format.
            _ => {
                let state = state.map(FusedAdamWState::into_adamw);
                let (tensor, state) = self.reference.step(lr, tensor, grad, state);
                (tensor, state.map(FusedAdamWState::from_adamw))
            }
        }
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        FusedAdamWState {
            momentum: state.momentum.to_device(device),
            compensation: state.compensation.map(|c| c.to_device(device)),
        }
    }
}
