//! Γ: the mean of one optimizer step's micro-batch gradients.

use core::marker::PhantomData;

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{DType, FloatDType, Tensor, backend::AutodiffBackend};

use crate::GmtError;

/// Accumulates micro-batch gradients into their (weighted) mean Γ, which GMT masks.
///
/// burn's `GradientsAccumulator` sums; masking a sum instead of a mean would not change which
/// entries are kept, but AdamW's ε and any clipping would see a gradient N times too large.
/// This helper makes the mean explicit (in fp32, whatever the gradients' format, except for
/// bf16 weights, whose Γ is bf16: README "Precision modes"):
/// - [`add`](Self::add): every micro-batch weighs the same, Γ = (1/N) Σ gᵢ.
/// - [`add_weighted`](Self::add_weighted): Γ = Σ wᵢ gᵢ / Σ wᵢ. With wᵢ = the number of counted
///   (label ≠ -100) tokens of a micro-batch whose loss is its own token mean, Γ is the gradient
///   of the mean loss over all tokens of the step, as if it were one big batch.
///
/// ```
/// # use burn::backend::{Autodiff, NdArray};
/// # use burn::module::{Module, Param};
/// # use burn::optim::GradientsParams;
/// # use burn::tensor::Tensor;
/// # use gmt_core::GradientMean;
/// # type B = Autodiff<NdArray>;
/// #[derive(Module, Debug)]
/// struct Scale<B: burn::tensor::backend::Backend> { w: Param<Tensor<B, 1>> }
/// let device = Default::default();
/// let model = Scale::<B> { w: Param::from_tensor(Tensor::from_floats([1.0, 2.0], &device)) };
/// let mut mean = GradientMean::new();
/// for x in [1.0f32, 3.0] {
///     // loss = x · Σ w, so d loss / d w = [x, x].
///     let loss = model.w.val().sum().mul_scalar(x);
///     mean.add(&model, GradientsParams::from_grads(loss.backward(), &model));
/// }
/// let grads = mean.finish(&model).unwrap();
/// let gamma = grads.get::<NdArray, 1>(model.w.id).unwrap();
/// assert_eq!(gamma.into_data().to_vec::<f32>().unwrap(), vec![2.0, 2.0]);
/// ```
pub struct GradientMean<M> {
    sum: GradientsParams,
    total_weight: f64,
    micro_batches: usize,
    module: PhantomData<M>,
}

impl<M> Default for GradientMean<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M> GradientMean<M> {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self {
            sum: GradientsParams::new(),
            total_weight: 0.0,
            micro_batches: 0,
            module: PhantomData,
        }
    }

    /// Micro-batches added since the last [`finish`](Self::finish).
    pub fn micro_batches(&self) -> usize {
        self.micro_batches
    }

    /// Sum of the weights added since the last [`finish`](Self::finish).
    pub fn total_weight(&self) -> f64 {
        self.total_weight
    }

    /// Adds one micro-batch's gradients with weight 1.
    pub fn add<B>(&mut self, module: &M, grads: GradientsParams)
    where
        B: AutodiffBackend,
        M: AutodiffModule<B>,
    {
        self.accumulate(module, grads, 1.0);
    }

    /// Adds one micro-batch's gradients with `weight` (e.g. its counted tokens).
    pub fn add_weighted<B>(
        &mut self,
        module: &M,
        grads: GradientsParams,
        weight: f64,
    ) -> Result<(), GmtError>
    where
        B: AutodiffBackend,
        M: AutodiffModule<B>,
    {
        if !(weight.is_finite() && weight > 0.0) {
            return Err(GmtError::InvalidWeight { weight });
        }
        self.accumulate(module, grads, weight);
        Ok(())
    }

    fn accumulate<B>(&mut self, module: &M, grads: GradientsParams, weight: f64)
    where
        B: AutodiffBackend,
        M: AutodiffModule<B>,
    {
        module.visit(&mut AddWeighted::<B> {
            sum: &mut self.sum,
            new: grads,
            weight,
            backend: PhantomData,
        });
        self.total_weight += weight;
        self.micro_batches += 1;
    }

    /// Returns Γ = Σ wᵢ gᵢ / Σ wᵢ and resets the accumulator for the next step.
    pub fn finish<B>(&mut self, module: &M) -> Result<GradientsParams, GmtError>
    where
        B: AutodiffBackend,
        M: AutodiffModule<B>,
    {
        if self.micro_batches == 0 || self.total_weight <= 0.0 {
            return Err(GmtError::EmptyAccumulation {
                total_weight: self.total_weight,
            });
        }
        let (sum, weight) = self.take_sum();
        Self::mean_of(module, sum, weight)
    }

    /// Returns the weighted sum Σ wᵢ gᵢ and its weight Σ wᵢ, unnormalised, and resets the
    /// accumulator: what data-parallel replicas add up before one division gives Γ
    /// ([`mean_of`](Self::mean_of)). With nothing added, the sum is empty and the weight 0.
    pub fn take_sum(&mut self) -> (GradientsParams, f64) {
        let sum = core::mem::take(&mut self.sum);
        let weight = self.total_weight;
        self.total_weight = 0.0;
        self.micro_batches = 0;
        (sum, weight)
    }

    /// Γ = `sum` / `weight`, parameter by parameter: the division [`finish`](Self::finish)
    /// applies, for a sum added up elsewhere (over replicas).
    pub fn mean_of<B>(
        module: &M,
        mut sum: GradientsParams,
        weight: f64,
    ) -> Result<GradientsParams, GmtError>
    where
        B: AutodiffBackend,
        M: AutodiffModule<B>,
    {
        if !(weight.is_finite() && weight > 0.0) {
            return Err(GmtError::EmptyAccumulation {
                total_weight: weight,
            });
        }
        // A single unweighted micro-batch passes through untouched: bit-identical to no helper.
        if weight != 1.0 {
            module.visit(&mut Divide::<B> {
                grads: &mut sum,
                divisor: weight,
                backend: PhantomData,
            });
        }
        Ok(sum)
    }
}

struct AddWeighted<'a, B> {
    sum: &'a mut GradientsParams,
    new: GradientsParams,
    weight: f64,
    backend: PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for AddWeighted<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let Some(new) = self.new.remove::<B::InnerBackend, D>(param.id) else {
            return;
        };
        // Γ accumulates in fp32 whatever the gradients' format (a no-op for fp32 ones), but
        // in bf16 for bf16 weights: pure bf16 runs keep every per-parameter tensor in bf16.
        let format = match param.val().dtype() {
            DType::BF16 => FloatDType::BF16,
            _ => FloatDType::F32,
        };
        let mut new = new.cast(format);
        if self.weight != 1.0 {
            new = new.mul_scalar(self.weight);
        }
        let sum = match self.sum.remove::<B::InnerBackend, D>(param.id) {
            Some(sum) => sum + new,
            None => new,
        };
        self.sum.register(param.id, sum);
    }
}

struct Divide<'a, B> {
    grads: &'a mut GradientsParams,
    divisor: f64,
    backend: PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Divide<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads.register(param.id, grad.div_scalar(self.divisor));
        }
    }
}
