//! Rotary position embeddings, Hugging Face style (rotate-half), with Llama-3 scaling.

use std::f64::consts::PI;

use burn::tensor::{Tensor, TensorData, backend::Backend};

use crate::LlamaConfig;

/// The inverse frequencies of one head, computed once from the config.
#[derive(Clone, Debug)]
pub struct RotaryEmbedding {
    inv_freq: Vec<f32>,
}

impl RotaryEmbedding {
    /// Frequencies for `config.head_dim`, `rope_theta` and optional Llama-3 scaling, in `f32`
    /// as Transformers computes them.
    pub fn new(config: &LlamaConfig) -> Self {
        let dim = config.head_dim;
        let base = config.rope_theta as f32;
        let mut inv_freq: Vec<f32> = (0..dim)
            .step_by(2)
            .map(|i| 1.0 / base.powf(i as f32 / dim as f32))
            .collect();
        if let Some(s) = &config.rope_scaling {
            let old_context = s.original_max_position_embeddings as f64;
            let low_freq_wavelen = old_context / s.low_freq_factor;
            let high_freq_wavelen = old_context / s.high_freq_factor;
            for f in &mut inv_freq {
                let freq = *f as f64;
                let wavelen = 2.0 * PI / freq;
                *f = if wavelen < high_freq_wavelen {
                    freq
                } else if wavelen > low_freq_wavelen {
                    freq / s.factor
                } else {
                    let smooth = (old_context / wavelen - s.low_freq_factor)
                        / (s.high_freq_factor - s.low_freq_factor);
                    (1.0 - smooth) * freq / s.factor + smooth * freq
                } as f32;
            }
        }
        Self { inv_freq }
    }

    /// `cos` and `sin` tables `[batch, seq, 1, head_dim]` for per-token positions
    /// (`positions[b · seq + s]`), broadcast over the heads of `[batch, seq, heads, head_dim]`.
    pub fn tables<B: Backend>(
        &self,
        positions: &[usize],
        batch: usize,
        seq: usize,
        device: &B::Device,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let half = self.inv_freq.len();
        let dim = half * 2;
        let mut cos = Vec::with_capacity(positions.len() * dim);
        let mut sin = Vec::with_capacity(positions.len() * dim);
        for &p in positions {
            // emb = cat(freqs, freqs), as in Transformers.
            for _ in 0..2 {
                for &f in &self.inv_freq {
                    let angle = p as f32 * f;
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        let shape = [batch, seq, 1, dim];
        (
            Tensor::from_data(TensorData::new(cos, shape), device),
            Tensor::from_data(TensorData::new(sin, shape), device),
        )
    }
}

/// x·cos + rotate_half(x)·sin for `x: [batch, seq, heads, head_dim]`, the layout the
/// projections produce: rotating before the heads are moved forward keeps every operand
/// contiguous (on a transposed `x`, each product walked it entry by entry, ~4% of a CPU
/// training step).
pub fn apply_rotary<B: Backend>(
    x: Tensor<B, 4>,
    cos: &Tensor<B, 4>,
    sin: &Tensor<B, 4>,
) -> Tensor<B, 4> {
    let [b, s, h, d] = x.dims();
    let half = d / 2;
    let x1 = x.clone().slice([0..b, 0..s, 0..h, 0..half]);
    let x2 = x.clone().slice([0..b, 0..s, 0..h, half..d]);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos.clone() + rotated * sin.clone()
}
