//! Cross-crate and cross-backend tests, in one test binary (each file would otherwise compile
//! and link the model for every backend on its own).

mod core_as_a_library;
mod cross_backend;
mod data_to_model;
mod dpo_parity;
mod reproducible;

use gmt_models::{Architecture, LlamaConfig};

/// A small Llama configuration (1 layer, hidden 32, 4 query and 2 key/value heads, tied
/// embeddings) for models of random weights; tests change what they need with `..`.
pub(crate) fn small_llama_config(vocab_size: usize) -> LlamaConfig {
    LlamaConfig {
        architecture: Architecture::Llama,
        vocab_size,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 1,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 8,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_scaling: None,
        max_position_embeddings: 512,
        tie_word_embeddings: true,
        attention_bias: false,
        mlp_bias: false,
        sliding_window: None,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
        pad_token_id: Some(2),
    }
}
