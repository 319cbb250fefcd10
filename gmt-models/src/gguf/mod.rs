//! GGUF (llama.cpp's format, versions 2 and 3): metadata, tensors (dequantized), the model
//! config and the tokenizer.
//!
//! - `file.rs`: the container — header, typed metadata, tensor table, data section
//! - `dequantize.rs`: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K and Q6_K blocks to `f32`
//! - `llama.rs`: metadata → [`LlamaConfig`](crate::LlamaConfig), GGUF names → Hugging Face
//!   names, and llama.cpp's Q/K row permutation undone
//! - `tokenizer.rs`: the byte-level BPE tokenizer and chat template from `tokenizer.*`

mod dequantize;
mod file;
mod llama;
mod tokenizer;

pub use dequantize::{GgmlType, dequantize};
pub use file::{GgufFile, GgufTensorInfo, GgufValue};
pub use llama::{gguf_config, gguf_weights, load_gguf};
pub use tokenizer::{gguf_chat_template, gguf_tokenizer};
