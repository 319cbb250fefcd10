//! A cheap fingerprint of a model's weights, to tell that replicas are still the same model.

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, FloatDType, Tensor};
use gmt_core::masking::fixed_order_sum;
use gmt_models::LlamaForCausalLm;

/// Σ w and Σ w² over every weight, summed on the device in the model's parameter order (each
/// tensor in [`fixed_order_sum`]'s order): the same bits for the same weights on the same kind of device, and a different value for
/// weights that drifted apart. Computing it reads the weights twice and the host once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WeightChecksum {
    /// Σ w.
    pub sum: f64,
    /// Σ w².
    pub sum_of_squares: f64,
}

impl WeightChecksum {
    /// The checksum of `model`'s weights.
    pub fn of<B: AutodiffBackend>(model: &LlamaForCausalLm<B>) -> Self {
        let model = model.valid();
        let device = model.devices().into_iter().next().unwrap_or_default();
        let mut sums = Sums::<B::InnerBackend> {
            sum: Tensor::zeros([1], &device),
            sum_of_squares: Tensor::zeros([1], &device),
        };
        model.visit(&mut sums);
        let both = Tensor::cat(vec![sums.sum, sums.sum_of_squares], 0).into_data();
        let values: Vec<f64> = both.iter::<f32>().map(|v| v.elem()).collect();
        Self {
            sum: values[0],
            sum_of_squares: values[1],
        }
    }
}

struct Sums<B: Backend> {
    sum: Tensor<B, 1>,
    sum_of_squares: Tensor<B, 1>,
}

impl<B: Backend> ModuleVisitor<B> for Sums<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let w = param.val().reshape([-1]).cast(FloatDType::F32);
        self.sum = self.sum.clone() + fixed_order_sum(w.clone());
        self.sum_of_squares = self.sum_of_squares.clone() + fixed_order_sum(w.clone() * w);
    }
}
