//! GGUF → Llama: config from metadata, tensors under Hugging Face names and layouts.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::backend::Backend;

use super::{GgufFile, GgufValue};
use crate::{Architecture, HostTensor, LlamaConfig, LlamaForCausalLm, ModelError, WeightMap};

/// Loads a Llama-architecture GGUF file as a model (tensors dequantized to `f32`).
pub fn load_gguf<B: Backend>(
    path: impl AsRef<Path>,
    device: &B::Device,
) -> Result<LlamaForCausalLm<B>, ModelError> {
    let file = GgufFile::read(path)?;
    let config = gguf_config(&file)?;
    let weights = gguf_weights(&file, &config)?;
    LlamaForCausalLm::from_weights(&config, weights, device)
}

fn meta<'a>(file: &'a GgufFile, key: &str) -> Result<&'a GgufValue, ModelError> {
    file.get(key).ok_or_else(|| ModelError::MissingKey {
        source_name: file.source_name().into(),
        key: key.into(),
    })
}

fn meta_usize(file: &GgufFile, key: &str) -> Result<usize, ModelError> {
    let value = meta(file, key)?;
    value
        .as_u64()
        .map(|v| v as usize)
        .ok_or_else(|| ModelError::InvalidValue {
            source_name: file.source_name().into(),
            key: key.into(),
            value: format!("{value:?}"),
            reason: "expected a non-negative integer".into(),
        })
}

fn opt_usize(file: &GgufFile, key: &str) -> Result<Option<usize>, ModelError> {
    match file.get(key) {
        None => Ok(None),
        Some(_) => meta_usize(file, key).map(Some),
    }
}

fn opt_f64(file: &GgufFile, key: &str) -> Result<Option<f64>, ModelError> {
    match file.get(key) {
        None => Ok(None),
        Some(value) => value
            .as_f64()
            .map(Some)
            .ok_or_else(|| ModelError::InvalidValue {
                source_name: file.source_name().into(),
                key: key.into(),
                value: format!("{value:?}"),
                reason: "expected a number".into(),
            }),
    }
}

/// The model config from `general.architecture` and `llama.*` metadata.
pub fn gguf_config(file: &GgufFile) -> Result<LlamaConfig, ModelError> {
    let arch = meta(file, "general.architecture")?
        .as_str()
        .unwrap_or_default()
        .to_string();
    if arch != "llama" {
        return Err(ModelError::Unsupported {
            source_name: file.source_name().into(),
            key: "general.architecture".into(),
            value: format!("\"{arch}\""),
            supported: "\"llama\"".into(),
        });
    }
    for key in ["llama.rope.scaling.type"] {
        if let Some(kind) = file
            .get(key)
            .and_then(GgufValue::as_str)
            .filter(|k| *k != "none")
        {
            return Err(ModelError::Unsupported {
                source_name: file.source_name().into(),
                key: key.into(),
                value: format!("\"{kind}\""),
                supported: "\"none\"".into(),
            });
        }
    }
    if file.info("rope_freqs.weight").is_some() {
        return Err(ModelError::Unsupported {
            source_name: file.source_name().into(),
            key: "rope_freqs.weight".into(),
            value: "(Llama 3.1 RoPE scaling factors)".into(),
            supported: "GGUF files without rope_freqs; load the Hugging Face checkpoint instead"
                .into(),
        });
    }
    let hidden_size = meta_usize(file, "llama.embedding_length")?;
    let heads = meta_usize(file, "llama.attention.head_count")?;
    let vocab_size = match opt_usize(file, "llama.vocab_size")? {
        Some(v) => v,
        None => meta(file, "tokenizer.ggml.tokens")?
            .as_array()
            .map_or(0, |a| a.len()),
    };
    let head_dim = match opt_usize(file, "llama.attention.key_length")? {
        Some(d) => d,
        None => hidden_size / heads.max(1),
    };
    let token = |key: &str| file.get(key).and_then(GgufValue::as_u64).map(|v| v as u32);
    let config = LlamaConfig {
        architecture: Architecture::Llama,
        vocab_size,
        hidden_size,
        intermediate_size: meta_usize(file, "llama.feed_forward_length")?,
        num_hidden_layers: meta_usize(file, "llama.block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: opt_usize(file, "llama.attention.head_count_kv")?.unwrap_or(heads),
        head_dim,
        rms_norm_eps: opt_f64(file, "llama.attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5),
        rope_theta: opt_f64(file, "llama.rope.freq_base")?.unwrap_or(10_000.0),
        rope_scaling: None,
        max_position_embeddings: opt_usize(file, "llama.context_length")?.unwrap_or(2048),
        tie_word_embeddings: file.info("output.weight").is_none(),
        attention_bias: file.info("blk.0.attn_q.bias").is_some(),
        mlp_bias: file.info("blk.0.ffn_up.bias").is_some(),
        sliding_window: None,
        bos_token_id: token("tokenizer.ggml.bos_token_id"),
        eos_token_ids: token("tokenizer.ggml.eos_token_id").into_iter().collect(),
        pad_token_id: token("tokenizer.ggml.padding_token_id"),
    };
    config.validate(file.source_name())?;
    Ok(config)
}

/// The Hugging Face name of a llama.cpp tensor name.
fn hf_name(name: &str) -> Option<String> {
    let fixed = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(fixed) = fixed {
        return Some(fixed.to_string());
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (part, kind) = rest.rsplit_once('.')?;
    let hf = match part {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// Every tensor dequantized and renamed to Hugging Face conventions, with llama.cpp's
/// reordering of Q and K projection rows undone so one forward serves both formats.
pub fn gguf_weights(file: &GgufFile, config: &LlamaConfig) -> Result<WeightMap, ModelError> {
    let mut tensors = BTreeMap::new();
    for info in &file.tensors {
        // Unknown names are kept as-is so the weight check reports them as unexpected.
        let name = hf_name(&info.name).unwrap_or_else(|| info.name.clone());
        let mut tensor = file.tensor(info)?;
        if name.ends_with("q_proj.weight") || name.ends_with("q_proj.bias") {
            tensor = unpermute(tensor, config.num_attention_heads);
        } else if name.ends_with("k_proj.weight") || name.ends_with("k_proj.bias") {
            tensor = unpermute(tensor, config.num_key_value_heads);
        }
        tensors.insert(name, tensor);
    }
    Ok(WeightMap::new(file.source_name(), tensors))
}

/// Inverse of llama.cpp's `permute`: within each head, GGUF row `2i + half` is Hugging Face
/// row `half · head_dim/2 + i` (interleaved rotary pairs back to rotate-half order).
fn unpermute(tensor: HostTensor, heads: usize) -> HostTensor {
    let rows = tensor.shape[0];
    let cols: usize = tensor.shape[1..].iter().product();
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut data = vec![0f32; tensor.data.len()];
    for h in 0..heads {
        for i in 0..half {
            for part in 0..2 {
                let src = h * head_dim + 2 * i + part;
                let dst = h * head_dim + part * half + i;
                data[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&tensor.data[src * cols..(src + 1) * cols]);
            }
        }
    }
    HostTensor {
        shape: tensor.shape,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(heads, 2, hd/2, cols).swapaxes(1, 2).reshape(rows, cols)
        let (heads, head_dim, cols) = (2, 4, 3);
        let rows = heads * head_dim;
        let hf: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
        let mut gguf = vec![0f32; hf.len()];
        for h in 0..heads {
            for part in 0..2 {
                for i in 0..head_dim / 2 {
                    let src = h * head_dim + part * head_dim / 2 + i; // [h, part, i]
                    let dst = h * head_dim + i * 2 + part; // [h, i, part]
                    gguf[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&hf[src * cols..(src + 1) * cols]);
                }
            }
        }
        let back = unpermute(
            HostTensor {
                shape: vec![rows, cols],
                data: gguf,
            },
            heads,
        );
        assert_eq!(back.data, hf);
    }

    #[test]
    fn names_map_to_hugging_face() {
        assert_eq!(
            hf_name("blk.12.attn_k.weight").as_deref(),
            Some("model.layers.12.self_attn.k_proj.weight")
        );
        assert_eq!(
            hf_name("token_embd.weight").as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert_eq!(hf_name("blk.0.mystery.weight"), None);
    }
}
