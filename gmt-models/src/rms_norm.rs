//! RMSNorm with Hugging Face's parameter name (`weight`) and arithmetic.

use burn::module::{Module, Param};
use burn::tensor::{Tensor, backend::Backend};

/// y = x / sqrt(mean(x²) + ε) · weight, over the last dimension.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// Per-channel scale, `[hidden]`.
    pub weight: Param<Tensor<B, 1>>,
    /// ε added to the mean square.
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    /// A norm with the given scale.
    pub fn new(weight: Tensor<B, 1>, eps: f64) -> Self {
        Self {
            weight: Param::from_tensor(weight),
            eps,
        }
    }

    /// Normalizes `[batch, seq, hidden]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let variance = x.clone().powi_scalar(2).mean_dim(2);
        let inv_rms = variance.add_scalar(self.eps).sqrt().recip();
        x * inv_rms * self.weight.val().unsqueeze::<3>()
    }
}
