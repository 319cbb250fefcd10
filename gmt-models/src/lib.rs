//! # gmt-models: trainable Llama and Mistral for burn
//!
//! Causal language models that match Hugging Face Transformers numerically, generic over
//! burn's `Backend` and trainable under autodiff, with loading from Hugging Face checkpoints
//! and GGUF files and export back to Hugging Face format.
//!
//! ## Map
//! - [`LlamaConfig`] from/to `config.json` — `config.rs`
//! - [`LlamaForCausalLm`] (Llama and Mistral), [`KvCache`], [`hf_name`] — `llama.rs`
//!   built from [`Attention`] (`attention.rs`), [`Mlp`] (`mlp.rs`), [`RmsNorm`]
//!   (`rms_norm.rs`) and [`RotaryEmbedding`] (`rope.rs`)
//! - [`TokenBatch`]: ids, padding, positions, packing, labels — `batch.rs`
//! - [`causal_lm_loss`], [`sequence_log_probs`] — `loss.rs`
//! - Hugging Face directories: [`load_hf_dir`], [`save_hf_dir`] — `hf_checkpoint.rs`
//! - [`WeightMap`], [`HostTensor`]: named weights with mismatch reporting — `weights.rs`
//! - [`named_weights`], [`named_gradients`]: tensors under Hugging Face names — `named.rs`
//! - [`gguf`]: GGUF files — container, dequantization, config, tokenizer — `gguf/`
//! - [`generate`], [`generate_batch`]: greedy and sampled decoding with a KV cache, one
//!   prompt or a left-padded batch — `generate.rs`
//! - [`ModelError`] — `error.rs`

#![warn(missing_docs)]

mod attention;
mod batch;
mod config;
mod error;
mod generate;
pub mod gguf;
mod hf_checkpoint;
mod llama;
mod loss;
mod mlp;
mod named;
mod rms_norm;
mod rope;
mod weights;

pub use attention::{Attention, LayerCache};
pub use batch::TokenBatch;
pub use config::{Architecture, Llama3RopeScaling, LlamaConfig};
pub use error::ModelError;
pub use generate::{Generation, GenerationConfig, generate, generate_batch};
pub use hf_checkpoint::{
    ExportDtype, load_hf_dir, read_hf_weights, read_safetensors, save_hf_dir, write_atomic,
    write_safetensors,
};
pub use llama::{CausalLmOutput, DecoderLayer, KvCache, LlamaForCausalLm, hf_name};
pub use loss::{IGNORE_INDEX, causal_lm_loss, sequence_log_probs};
pub use mlp::Mlp;
pub use named::{named_gradients, named_weights};
pub use rms_norm::RmsNorm;
pub use rope::{RotaryEmbedding, apply_rotary};
pub use weights::{HostTensor, WeightMap};
