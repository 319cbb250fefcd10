//! [`GmtOptimizer`]: burn's `Optimizer` with the gradient masked before the inner step.

use core::marker::PhantomData;
use std::collections::HashMap;

use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::LearningRate;
use burn::optim::{GradientsParams, MultiGradientsParams, Optimizer};
use burn::record::{PrecisionSettings, Record};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::filter::ParamFilter;
use crate::mask::{MaskInput, NonFiniteInput, mask_gradients};
use crate::params::{ParamInfo, list_params};
use crate::update_target::{RestoreKept, SaveDropped, host_flags, saved_on_host};
use crate::{GmtConfig, GmtError, MaskTarget, NonFinitePolicy, StepReport};

/// Gradient-Mask Tuning around any burn optimizer (AdamW, Adam, SGD, …).
///
/// Each step takes Γ (the step's mean gradient, see [`GradientMean`](crate::GradientMean)),
/// checks it is finite, masks it with [`mask_gradients`](crate::masking::mask_gradients), optionally
/// clips the global norm of Γ·mask ([`GmtConfig::max_grad_norm`]), hands the result to the
/// inner optimizer and, for [`MaskTarget::Update`], puts masked entries back to their
/// previous values.
///
/// ```
/// use burn::backend::{Autodiff, NdArray};
/// use burn::nn::{Linear, LinearConfig};
/// use burn::optim::{AdamWConfig, GradientsParams};
/// use burn::tensor::{Distribution, Tensor};
/// use gmt_core::GmtConfig;
///
/// type B = Autodiff<NdArray>;
/// let device = Default::default();
/// let model: Linear<B> = LinearConfig::new(8, 4).init(&device);
/// let adamw = AdamWConfig::new().with_epsilon(1e-8).with_weight_decay(0.0).init();
/// let mut optim = GmtConfig::new(0.3).init(adamw, &model).unwrap();
///
/// let x = Tensor::<B, 2>::random([16, 8], Distribution::Default, &device);
/// let loss = model.forward(x).powi_scalar(2).mean();
/// let grads = GradientsParams::from_grads(loss.backward(), &model);
/// let (model, report) = optim.try_step(1e-3, model, grads).unwrap();
///
/// let stats = report.stats().unwrap();
/// assert_eq!(stats.get("weight").unwrap().kept, 32 - 9); // floor(0.3·32) = 9 masked
/// # let _ = model;
/// ```
pub struct GmtOptimizer<O, M, B> {
    config: GmtConfig,
    inner: O,
    params: Vec<ParamInfo>,
    state: GmtState,
    last_report: Option<StepReport>,
    /// [`MaskTarget::Update`] on host memory: the dropped entries' previous values, kept
    /// between steps so that its memory is reused.
    saved: Vec<f32>,
    marker: PhantomData<fn() -> (M, B)>,
}

impl<O: Clone, M, B> Clone for GmtOptimizer<O, M, B> {
    fn clone(&self) -> Self {
        Self {
            config: self.config.clone(),
            inner: self.inner.clone(),
            params: self.params.clone(),
            state: self.state.clone(),
            last_report: self.last_report.clone(),
            saved: Vec::new(), // scratch, filled afresh by each step
            marker: PhantomData,
        }
    }
}

/// GMT's own optimizer state, saved in [`GmtRecord`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GmtState {
    /// Steps applied so far.
    pub step: u64,
    /// Steps skipped for non-finite gradients.
    pub skipped_steps: u64,
    /// Seed of the random streams. Step t draws from ChaCha8 stream t of this seed, so the
    /// pair (seed, step) is the whole RNG state.
    pub rng_seed: u64,
}

/// The saved state of a [`GmtOptimizer`]: the inner optimizer's record plus GMT's own.
#[derive(Clone, Debug)]
pub struct GmtRecord<R> {
    /// The inner optimizer's record.
    pub inner: R,
    /// GMT's step count and RNG state.
    pub state: GmtState,
}

/// Serialized form of [`GmtRecord`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GmtRecordItem<I> {
    inner: I,
    state: GmtState,
}

impl<I> GmtRecordItem<I> {
    /// The serialized form of a record whose inner item is `inner`: for writers that convert
    /// the inner record to its item piece by piece as they serialize it (gmt-train's
    /// checkpoints), instead of all at once as [`Record::into_item`] does.
    pub fn new(inner: I, state: GmtState) -> Self {
        Self { inner, state }
    }
}

impl<B: Backend, R: Record<B>> Record<B> for GmtRecord<R> {
    type Item<S: PrecisionSettings> = GmtRecordItem<R::Item<S>>;

    fn into_item<S: PrecisionSettings>(self) -> Self::Item<S> {
        GmtRecordItem {
            inner: self.inner.into_item(),
            state: self.state,
        }
    }

    fn from_item<S: PrecisionSettings>(item: Self::Item<S>, device: &B::Device) -> Self {
        Self {
            inner: R::from_item(item.inner, device),
            state: item.state,
        }
    }
}

/// A failed step: the error, and the module given to the step, unchanged.
///
/// `?` turns it into its [`GmtError`] where the module is not needed back.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct StepFailure<M> {
    /// What went wrong.
    #[source]
    pub error: GmtError,
    /// The module, as it was before the step.
    pub module: M,
}

impl<M> From<StepFailure<M>> for GmtError {
    fn from(failure: StepFailure<M>) -> Self {
        failure.error
    }
}

impl GmtConfig {
    /// Wraps `inner` for `module`; see [`GmtOptimizer::new`].
    pub fn init<O, M, B>(&self, inner: O, module: &M) -> Result<GmtOptimizer<O, M, B>, GmtError>
    where
        O: Optimizer<M, B>,
        M: AutodiffModule<B>,
        B: AutodiffBackend,
    {
        GmtOptimizer::new(self.clone(), inner, module)
    }
}

impl<O, M, B> GmtOptimizer<O, M, B>
where
    O: Optimizer<M, B>,
    M: AutodiffModule<B>,
    B: AutodiffBackend,
{
    /// Validates `config` against `module` and wraps `inner`.
    ///
    /// Fails on a ratio outside `[0, 1)`, an invalid or unused `exclude` pattern, or a module
    /// without float parameters.
    pub fn new(config: GmtConfig, inner: O, module: &M) -> Result<Self, GmtError> {
        config.validate()?;
        let mut params = list_params::<B, M>(module);
        if params.is_empty() {
            return Err(GmtError::NoParameters);
        }
        let filter = ParamFilter::new(&config.exclude)?;
        filter.check_all_used(params.iter().map(|p| p.path.as_str()))?;
        for param in &mut params {
            param.maskable = !filter.is_match(&param.path);
        }
        let state = GmtState {
            rng_seed: config.seed,
            ..GmtState::default()
        };
        Ok(Self {
            config,
            inner,
            params,
            state,
            last_report: None,
            saved: Vec::new(),
            marker: PhantomData,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &GmtConfig {
        &self.config
    }

    /// The wrapped optimizer.
    pub fn inner(&self) -> &O {
        &self.inner
    }

    /// The module's float parameters in step order, with whether each is masked.
    pub fn params(&self) -> &[ParamInfo] {
        &self.params
    }

    /// GMT's own state (steps applied and skipped, RNG seed).
    pub fn state(&self) -> &GmtState {
        &self.state
    }

    /// What the most recent step did: mask statistics, or why it was skipped.
    pub fn last_report(&self) -> Option<&StepReport> {
        self.last_report.as_ref()
    }

    /// One optimizer step with Γ = `grads`; returns the updated module and what the step did.
    ///
    /// Parameters are found by their module path on every step, not by the ids they had at
    /// [`init`](GmtConfig::init): loading a record into the module (as burn's `Learner` does
    /// when it resumes) brings back saved ids, and the step still finds every parameter. A
    /// module whose parameters no longer match those of `init`, or a `grads` holding a gradient
    /// for none of them, is an error rather than a step that silently masks nothing.
    ///
    /// A non-finite gradient fails the step under [`NonFinitePolicy::Error`], handing the
    /// module back unchanged inside the [`StepFailure`]; under [`NonFinitePolicy::Skip`] the
    /// step is skipped, the module returned unchanged and the report says so.
    pub fn try_step(
        &mut self,
        lr: LearningRate,
        module: M,
        mut grads: GradientsParams,
    ) -> Result<(M, StepReport), StepFailure<M>> {
        let step = self.state.step;
        let entries = match self.take_gradients(&module, &mut grads) {
            Ok(entries) => entries,
            Err(error) => return Err(StepFailure { error, module }),
        };

        // Previous values are kept only for the update target (and a ratio above zero).
        let half = entries.iter().find_map(|e| {
            let Previous::Kept(value) = &e.previous else {
                return None;
            };
            let dtype = value.dtype();
            matches!(dtype, DType::BF16 | DType::F16).then_some((e.param, dtype))
        });
        if let Some((param, dtype)) = half {
            let error = GmtError::UpdateTargetPrecision {
                param: self.params[param].path.clone(),
                dtype: format!("{dtype:?}").to_lowercase(),
            };
            return Err(StepFailure { error, module });
        }

        let mut ids = Vec::with_capacity(entries.len());
        let mut previous = Vec::with_capacity(entries.len());
        let inputs: Vec<MaskInput<B::InnerBackend>> = entries
            .into_iter()
            .map(|e| {
                ids.push(e.id);
                previous.push(e.previous);
                let param = &self.params[e.param];
                MaskInput {
                    path: param.path.clone(),
                    maskable: param.maskable,
                    grad: e.grad, // moved: CPU backends then mask it in place
                }
            })
            .collect();
        let mut rng = ChaCha8Rng::seed_from_u64(self.state.rng_seed);
        rng.set_stream(step);
        let restore_masked = self.config.target == MaskTarget::Update;
        // A non-finite Γ is found while masking (host) or just before (device): either way
        // before the inner optimizer runs, so the module comes back unchanged.
        let out = match mask_gradients(&self.config, inputs, restore_masked, &mut rng) {
            Ok(out) => out,
            Err(NonFiniteInput { path: param, .. }) => {
                return match self.config.non_finite {
                    NonFinitePolicy::Error => Err(StepFailure {
                        error: GmtError::NonFiniteGradient { param, step },
                        module,
                    }),
                    NonFinitePolicy::Skip => {
                        self.state.skipped_steps += 1;
                        let report = StepReport::Skipped { step, param };
                        self.last_report = Some(report.clone());
                        Ok((module, report))
                    }
                };
            }
        };

        let clip_scale = self
            .config
            .max_grad_norm
            .map(|max| max / (out.stats.kept_norm() + 1e-6))
            .filter(|&scale| scale < 1.0);

        let mut masked = HashMap::with_capacity(ids.len());
        let mut kept = HashMap::new();
        let mut host_drops = HashMap::new();
        let outputs = ids.into_iter().zip(out.grads).zip(out.drops).zip(previous);
        for (((id, grad), drop), previous) in outputs {
            let grad = match clip_scale {
                Some(scale) => grad.mul_scalar(scale),
                None => grad,
            };
            masked.insert(id, grad);
            match (drop, previous) {
                (Some(drop), Previous::Kept(old)) => _ = kept.insert(id, (drop, old)),
                (Some(drop), Previous::OnHost) => _ = host_drops.insert(id, host_flags(drop)),
                _ => {}
            }
        }
        module.visit(&mut PutGradients::<B> {
            grads: &mut grads,
            masked,
            marker: PhantomData,
        });
        // Update target: the dropped entries' values are saved (host) or kept (elsewhere)
        // before the inner step, and put back after it.
        let mut save = SaveDropped::<B>::new(host_drops, &mut self.saved);
        let module = if save.is_empty() {
            module
        } else {
            module.map(&mut save)
        };
        let mut module = self.inner.step(lr, module, grads);
        if !save.is_empty() {
            module = module.map(&mut save.into_restore());
        }
        if !kept.is_empty() {
            module = module.map(&mut RestoreKept::<B> {
                kept,
                marker: PhantomData,
            });
        }

        self.state.step += 1;
        let report = StepReport::Applied {
            step,
            stats: out.stats,
            clip_scale,
        };
        self.last_report = Some(report.clone());
        Ok((module, report))
    }

    /// Takes each parameter's gradient out of `grads`, finding the parameters of `module` by
    /// place and path; fails when the module is not the one of `init` or when no gradient is
    /// found for any of its parameters.
    fn take_gradients(
        &self,
        module: &M,
        grads: &mut GradientsParams,
    ) -> Result<Vec<TakenGradient<B::InnerBackend>>, GmtError> {
        let mut taken = TakeGradients::<B> {
            grads,
            params: &self.params,
            path: Vec::new(),
            visited: 0,
            mismatch: None,
            previous_needed: self.config.target == MaskTarget::Update && !self.config.is_identity(),
            entries: Vec::new(),
            marker: PhantomData,
        };
        module.visit(&mut taken);
        let expected = self.params.len();
        match taken.mismatch {
            Some(found) => Err(GmtError::ModuleMismatch { expected, found }),
            None if taken.visited != expected => Err(GmtError::ModuleMismatch {
                expected,
                found: format!("a module with {} float parameters", taken.visited),
            }),
            None if taken.entries.is_empty() => Err(GmtError::NoGradients {
                step: self.state.step,
            }),
            None => Ok(taken.entries),
        }
    }
}

impl<O, M, B> Optimizer<M, B> for GmtOptimizer<O, M, B>
where
    O: Optimizer<M, B>,
    M: AutodiffModule<B>,
    B: AutodiffBackend,
{
    type Record = GmtRecord<O::Record>;

    /// burn's trait cannot return an error: this panics where [`GmtOptimizer::try_step`]
    /// would fail (a non-finite gradient under [`NonFinitePolicy::Error`]). Use `try_step`,
    /// or [`NonFinitePolicy::Skip`], to handle that case.
    fn step(&mut self, lr: LearningRate, module: M, grads: GradientsParams) -> M {
        match self.try_step(lr, module, grads) {
            Ok((module, _)) => module,
            Err(failure) => panic!("GMT optimizer step failed: {}", failure.error),
        }
    }

    /// Gradients from several devices are summed per parameter (as burn's own optimizers do)
    /// and then stepped like [`step`](Optimizer::step).
    fn step_multi(&mut self, lr: LearningRate, module: M, grads: MultiGradientsParams) -> M {
        let mut merged = MergeDevices::<B> {
            multi: grads,
            merged: GradientsParams::new(),
            marker: PhantomData,
        };
        module.visit(&mut merged);
        self.step(lr, module, merged.merged)
    }

    fn to_record(&self) -> Self::Record {
        GmtRecord {
            inner: self.inner.to_record(),
            state: self.state.clone(),
        }
    }

    fn load_record(mut self, record: Self::Record) -> Self {
        self.inner = self.inner.load_record(record.inner);
        self.state = record.state;
        self
    }
}

/// One parameter's gradient, taken out of `GradientsParams` and flattened.
struct TakenGradient<B: Backend> {
    id: ParamId,
    param: usize,
    grad: Tensor<B, 1>,
    previous: Previous<B>,
}

/// How [`MaskTarget::Update`] will put a parameter's dropped entries back.
enum Previous<B: Backend> {
    /// Not needed: the gradient target, or a ratio of zero.
    NotNeeded,
    /// From the dropped entries' values, saved from host memory just before the step.
    OnHost,
    /// From the parameter's whole value before the step, kept here.
    Kept(Tensor<B, 1>),
}

/// Takes each parameter's gradient out of `GradientsParams`, finding the parameters by their
/// place and path in the module (the ids are the module's current ones).
struct TakeGradients<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    params: &'a [ParamInfo],
    path: Vec<String>,
    /// Float parameters visited so far: the next one is `params[visited]`.
    visited: usize,
    /// The first parameter that is not the one `init` listed at its place.
    mismatch: Option<String>,
    /// Whether the step needs parameters' previous values ([`MaskTarget::Update`]).
    previous_needed: bool,
    entries: Vec<TakenGradient<B::InnerBackend>>,
    marker: PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for TakeGradients<'_, B> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let index = self.visited;
        self.visited += 1;
        if self.mismatch.is_some() {
            return;
        }
        let path = self.path.join(".");
        if self.params.get(index).is_none_or(|p| p.path != path) {
            self.mismatch = Some(format!("parameter `{path}` at position {index}"));
            return;
        }
        let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id) else {
            return; // frozen or unused: no gradient, nothing to do
        };
        let previous = if !self.previous_needed {
            Previous::NotNeeded
        } else {
            let value = param.val().inner();
            if saved_on_host(&value) {
                Previous::OnHost
            } else {
                Previous::Kept(value.flatten::<1>(0, D - 1))
            }
        };
        self.entries.push(TakenGradient {
            id: param.id,
            param: index,
            // Γ stays in its format (fp32, or bf16 for bf16 weights): the mask widens it to
            // fp32 one tensor at a time where it computes (README "GMT, precisely").
            grad: grad.flatten::<1>(0, D - 1),
            previous,
        });
    }
}

/// Puts the (masked, flattened) gradients back in their parameters' shapes.
struct PutGradients<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    masked: HashMap<ParamId, Tensor<B::InnerBackend, 1>>,
    marker: PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for PutGradients<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(grad) = self.masked.remove(&param.id) {
            let grad: Tensor<B::InnerBackend, D> = grad.reshape(param.shape());
            self.grads.register(param.id, grad);
        }
    }
}

struct MergeDevices<B> {
    multi: MultiGradientsParams,
    merged: GradientsParams,
    marker: PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for MergeDevices<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some((grad, _device)) = self.multi.remove::<B::InnerBackend, D>(param.id) {
            self.merged.register(param.id, grad);
        }
    }
}
