//! Shared pieces of gmt's criterion benchmarks (`benches/`): model-shaped parameter sets and
//! reproducible gradients.

use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use gmt_models::{Architecture, LlamaConfig, LlamaForCausalLm, TokenBatch, WeightMap};

/// Parameter shapes of SmolLM2-135M (HF names, Linear weights as [out, in]):
/// 30 layers of q/o 576×576, k/v 192×576, gate/up 1536×576, down 576×1536, two RMSNorms of
/// 576, the final norm, and the tied 49152×576 embedding. About 134.5M entries.
pub fn smollm2_135m_shapes() -> Vec<(String, Vec<usize>)> {
    let mut shapes = vec![("model.embed_tokens.weight".to_string(), vec![49152, 576])];
    for layer in 0..30 {
        let p = format!("model.layers.{layer}");
        for (name, dims) in [
            ("self_attn.q_proj.weight", vec![576, 576]),
            ("self_attn.k_proj.weight", vec![192, 576]),
            ("self_attn.v_proj.weight", vec![192, 576]),
            ("self_attn.o_proj.weight", vec![576, 576]),
            ("mlp.gate_proj.weight", vec![1536, 576]),
            ("mlp.up_proj.weight", vec![1536, 576]),
            ("mlp.down_proj.weight", vec![576, 1536]),
            ("input_layernorm.weight", vec![576]),
            ("post_attention_layernorm.weight", vec![576]),
        ] {
            shapes.push((format!("{p}.{name}"), dims));
        }
    }
    shapes.push(("model.norm.weight".to_string(), vec![576]));
    shapes
}

/// A module holding one parameter per shape: enough for optimizer benchmarks, which never
/// run a forward pass. Matrices and vectors are kept apart because burn parameters have a
/// static rank.
#[derive(Module, Debug)]
pub struct ShapedParams<B: Backend> {
    /// Rank-2 parameters.
    pub matrices: Vec<Param<Tensor<B, 2>>>,
    /// Rank-1 parameters.
    pub vectors: Vec<Param<Tensor<B, 1>>>,
}

impl<B: Backend> ShapedParams<B> {
    /// Parameters with the given shapes, filled with small random values.
    pub fn new(shapes: &[(String, Vec<usize>)], device: &B::Device, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut matrices = Vec::new();
        let mut vectors = Vec::new();
        for (_, dims) in shapes {
            match dims.as_slice() {
                [r, c] => matrices.push(Param::from_tensor(random_tensor(
                    &mut rng,
                    [*r, *c],
                    0.02,
                    device,
                ))),
                [n] => vectors.push(Param::from_tensor(random_tensor(
                    &mut rng,
                    [*n],
                    1.0,
                    device,
                ))),
                other => panic!("unsupported rank {}", other.len()),
            }
        }
        Self { matrices, vectors }
    }
}

/// Uniform values in (−scale, scale).
pub fn random_values(rng: &mut impl Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * scale)
        .collect()
}

/// A tensor of [`random_values`].
pub fn random_tensor<B: Backend, const D: usize>(
    rng: &mut impl Rng,
    dims: [usize; D],
    scale: f32,
    device: &B::Device,
) -> Tensor<B, D> {
    let n = dims.iter().product();
    Tensor::from_data(TensorData::new(random_values(rng, n, scale), dims), device)
}

/// Random gradients for every parameter of `model`, kept on the host so each benchmark
/// iteration hands out fresh, uniquely owned tensors, as a backward pass does (a shared
/// tensor would force CPU backends to copy where they could work in place).
pub struct FixedGradients {
    data: Vec<TensorData>,
}

impl FixedGradients {
    /// Gradients shaped like `model`'s parameters (matrices, then vectors), values
    /// ~ U(−1e-3, 1e-3).
    pub fn new<B: Backend>(model: &ShapedParams<B>, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let dims = model
            .matrices
            .iter()
            .map(|p| p.shape().dims::<2>().to_vec())
            .chain(model.vectors.iter().map(|p| p.shape().dims::<1>().to_vec()));
        let data = dims
            .map(|d| TensorData::new(random_values(&mut rng, d.iter().product(), 1e-3), d))
            .collect();
        Self { data }
    }

    /// `GradientsParams` for one step (copies the host data into new tensors).
    pub fn params<B: AutodiffBackend>(&self, model: &ShapedParams<B>) -> GradientsParams {
        let device = model.devices()[0].clone();
        let mut grads = GradientsParams::new();
        let mut data = self.data.iter().cloned();
        for p in &model.matrices {
            let g: Tensor<B::InnerBackend, 2> =
                Tensor::from_data(data.next().expect("one per matrix"), &device);
            grads.register(p.id, g);
        }
        for p in &model.vectors {
            let g: Tensor<B::InnerBackend, 1> =
                Tensor::from_data(data.next().expect("one per vector"), &device);
            grads.register(p.id, g);
        }
        grads
    }
}

/// SmolLM2-135M-Instruct's configuration (as its GGUF metadata gives it).
pub fn smollm2_135m_config() -> LlamaConfig {
    LlamaConfig {
        architecture: Architecture::Llama,
        vocab_size: 49152,
        hidden_size: 576,
        intermediate_size: 1536,
        num_hidden_layers: 30,
        num_attention_heads: 9,
        num_key_value_heads: 3,
        head_dim: 64,
        rms_norm_eps: 1e-5,
        rope_theta: 100_000.0,
        rope_scaling: None,
        max_position_embeddings: 8192,
        tie_word_embeddings: true,
        attention_bias: false,
        mlp_bias: false,
        sliding_window: None,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
        pad_token_id: Some(2),
    }
}

/// A model with `config` and small random weights, built through the same loader as real
/// checkpoints.
pub fn random_model<B: Backend>(
    config: &LlamaConfig,
    device: &B::Device,
    seed: u64,
) -> LlamaForCausalLm<B> {
    LlamaForCausalLm::from_weights(config, WeightMap::random(seed), device)
        .expect("random weights fit any config")
}

/// A `batch` × `seq` micro-batch of deterministic token ids spread over a vocabulary of
/// `vocab`, every token labelled (its own id): what the profiling examples train on, where a
/// step's time and memory do not depend on which ids it sees.
pub fn labelled_batch(vocab: usize, batch: usize, seq: usize) -> TokenBatch {
    let ids: Vec<u32> = (0..batch * seq)
        .map(|i| (i * 7919 % vocab) as u32)
        .collect();
    let labels = ids.iter().map(|&i| i as i64).collect();
    TokenBatch::new(ids, batch, seq).with_labels(labels)
}

/// The median of `values` (the mean of the middle two for an even count); what the profiling
/// examples report per phase.
///
/// # Panics
/// If `values` is empty.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}
