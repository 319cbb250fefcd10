//! RMSNorm with Hugging Face's parameter name (`weight`) and arithmetic.

use burn::module::{Module, Param};
use burn::tensor::{FloatDType, Tensor, backend::Backend};

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

    /// Normalizes `[batch, seq, hidden]`. The mean square and the division are computed in
    /// fp32 whatever the input's format, and the result is rounded back to it before the
    /// scale (Transformers' `LlamaRMSNorm`; for fp32 input the casts are no-ops).
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let dtype = x.dtype();
        let x = x.cast(FloatDType::F32);
        let variance = x.clone().powi_scalar(2).mean_dim(2);
        let inv_rms = variance.add_scalar(self.eps).sqrt().recip();
        (x * inv_rms).cast(dtype) * self.weight.val().unsqueeze::<3>()
    }
}
