//! Grouped-query self-attention with rotary embeddings and an optional KV cache.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::{Bool, FloatDType, Tensor, activation::softmax, backend::Backend};

use crate::mlp::linear3;
use crate::rope::apply_rotary;

/// Multi-head attention where `num_key_value_heads` may be smaller than `num_heads`
/// (grouped-query; 1 = multi-query).
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// `q_proj`.
    pub q_proj: Linear<B>,
    /// `k_proj`.
    pub k_proj: Linear<B>,
    /// `v_proj`.
    pub v_proj: Linear<B>,
    /// `o_proj`.
    pub o_proj: Linear<B>,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
}

/// Keys and values of the tokens seen so far, per layer, `[batch, kv_heads, len, head_dim]`.
#[derive(Clone, Debug)]
pub struct LayerCache<B: Backend> {
    keys: Tensor<B, 4>,
    values: Tensor<B, 4>,
}

impl<B: Backend> Attention<B> {
    /// `x: [batch, seq, hidden]`; `cos`/`sin`: `[batch, seq, 1, head_dim]`; `masked`:
    /// `[batch, 1, seq, keys]`, `true` where a query may not attend to a key. With a `cache`,
    /// the new keys/values are appended and attention covers all cached tokens.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        cos: &Tensor<B, 4>,
        sin: &Tensor<B, 4>,
        masked: &Tensor<B, 4, Bool>,
        cache: Option<&mut Option<LayerCache<B>>>,
    ) -> Tensor<B, 3> {
        let [batch, seq, _] = x.dims();
        // [batch, seq, n · head_dim] → [batch, seq, n, head_dim]; the positions are rotated in
        // this layout, then the heads are moved in front of the sequence.
        let split = |t: Tensor<B, 3>, n: usize| t.reshape([batch, seq, n, self.head_dim]);
        let q = apply_rotary(
            split(linear3(&self.q_proj, x.clone()), self.num_heads),
            cos,
            sin,
        )
        .swap_dims(1, 2);
        let mut k = apply_rotary(
            split(linear3(&self.k_proj, x.clone()), self.num_kv_heads),
            cos,
            sin,
        )
        .swap_dims(1, 2);
        let mut v = split(linear3(&self.v_proj, x), self.num_kv_heads).swap_dims(1, 2);

        if let Some(cache) = cache {
            if let Some(past) = cache.take() {
                k = Tensor::cat(vec![past.keys, k], 2);
                v = Tensor::cat(vec![past.values, v], 2);
            }
            *cache = Some(LayerCache {
                keys: k.clone(),
                values: v.clone(),
            });
        }
        let keys = k.dims()[2];
        let groups = self.num_heads / self.num_kv_heads;

        // Grouped-query attention without repeating keys and values (Transformers'
        // `repeat_kv`): query head `h` reads kv head `h / groups`, so the `groups` query heads of
        // one kv head are stacked as one `[groups · seq]` block of rows over that head's keys.
        // Same products, but nothing of the cache is copied `groups` times per layer — a copy
        // that dominated batched decoding with a long cache.
        let grouped = |t: Tensor<B, 4>, width: usize| {
            t.reshape([batch, self.num_kv_heads, groups * seq, width])
        };
        let scale = (self.head_dim as f64).powf(-0.5);
        let scores = grouped(q, self.head_dim)
            .matmul(k.swap_dims(2, 3))
            .mul_scalar(scale)
            .reshape([batch, self.num_heads, seq, keys]);
        // Replace rather than add: a fully masked row (padding) then softmaxes to uniform
        // weights instead of NaN, as with Transformers' finfo.min.
        let masked = masked.clone().expand([batch, self.num_heads, seq, keys]);
        // The softmax runs in fp32 and its result is rounded to the values' format, as
        // Transformers' eager attention does (no-ops for fp32).
        let dtype = scores.dtype();
        let scores = scores.cast(FloatDType::F32);
        let probs = softmax(scores.mask_fill(masked, f32::MIN), 3).cast(dtype);
        let out = grouped(probs, keys)
            .matmul(v)
            .reshape([batch, self.num_heads, seq, self.head_dim])
            .swap_dims(1, 2)
            .reshape([batch, seq, self.num_heads * self.head_dim]);
        linear3(&self.o_proj, out)
    }
}
