//! The SwiGLU feed-forward block.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::{Tensor, activation::silu, backend::Backend};

/// down(silu(gate(x)) · up(x)).
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// `gate_proj`.
    pub gate_proj: Linear<B>,
    /// `up_proj`.
    pub up_proj: Linear<B>,
    /// `down_proj`.
    pub down_proj: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    /// Applies the block to `[batch, seq, hidden]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let gate = silu(linear3(&self.gate_proj, x.clone()));
        linear3(&self.down_proj, gate * linear3(&self.up_proj, x))
    }
}

/// `linear.forward(x)` for `x: [batch, seq, in]` as one `[batch·seq, in] × [in, out]` matrix
/// product: one large GEMM runs much faster on CPU backends than `batch` small ones.
pub fn linear3<B: Backend>(linear: &Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    let [b, s, d] = x.dims();
    let y = linear.forward(x.reshape([b * s, d]));
    let out = y.dims()[1];
    y.reshape([b, s, out])
}
