//! `bf16-mixed` training: each step's forward and backward passes run on a bf16 working copy
//! of the fp32 master weights, and only the master weights are optimized.
//!
//! The working copy holds the same parameters (same ids) rounded to bf16 as fresh autodiff
//! leaves, so its gradients are keyed as the master's: they come out of backward in bf16,
//! are widened to fp32 as Γ accumulates ([`gmt_core::GradientMean`]), and GMT and AdamW
//! then run exactly as in an fp32 run, on fp32 Γ, weights and moments. The copy is made
//! once per step (the weights do not change between its micro-batches) and freed after the
//! last micro-batch's backward pass, before its gradients are widened into Γ. Norms,
//! softmaxes and the loss compute in fp32 inside the model (gmt-models follows Transformers'
//! upcasts).
//!
//! `bf16` training has no copy: the weights themselves are bf16 ([`trained_weights`]), and
//! so are Γ and AdamW's state ([`gmt_core::FusedAdamW`] applies the update with Kahan
//! compensation).

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{FloatDType, Tensor};
use gmt_models::LlamaForCausalLm;

use crate::memory::Precision;

/// The model a step of `precision` runs forward and backward: its working copy in
/// `bf16-mixed`; `None` in `fp32` and `bf16`, whose steps run on the weights themselves.
pub(crate) fn working_copy<B: AutodiffBackend>(
    master: &LlamaForCausalLm<B>,
    precision: Precision,
) -> Option<LlamaForCausalLm<B>> {
    match precision {
        Precision::Fp32 | Precision::Bf16 => None,
        Precision::Bf16Mixed => Some(master.clone().map(&mut WorkingCopy(FloatDType::BF16))),
    }
}

/// The weights a run of `precision` optimizes: `model` itself, or in `bf16` the same
/// parameters (same ids) stored in bf16.
pub(crate) fn trained_weights<B: AutodiffBackend>(
    model: LlamaForCausalLm<B>,
    precision: Precision,
) -> LlamaForCausalLm<B> {
    match precision {
        Precision::Fp32 | Precision::Bf16Mixed => model,
        Precision::Bf16 => model.map(&mut WorkingCopy(FloatDType::BF16)),
    }
}

/// The weights of `model` (no gradients) in `precision`'s forward format: what evaluation
/// of a mixed-precision run reads.
pub(crate) fn forward_format<B: Backend, M: Module<B>>(model: M, precision: Precision) -> M {
    match precision.forward_dtype() {
        FloatDType::F32 => model,
        dtype => model.map(&mut Cast(dtype)),
    }
}

/// Rounds every float parameter to a format, as a new autodiff leaf (same id).
struct WorkingCopy(FloatDType);

impl<B: AutodiffBackend> ModuleMapper<B> for WorkingCopy {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let dtype = self.0;
        param.map(|master| {
            // Frozen parameters stay frozen in the copy.
            let trained = master.is_require_grad();
            let leaf = Tensor::from_inner(master.inner().cast(dtype));
            if trained { leaf.require_grad() } else { leaf }
        })
    }
}

/// Rounds every float parameter to a format.
struct Cast(FloatDType);

impl<B: Backend> ModuleMapper<B> for Cast {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let dtype = self.0;
        param.map(|t| t.cast(dtype))
    }
}
