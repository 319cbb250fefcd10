//! Model configuration, read from and written to Hugging Face `config.json`.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::ModelError;

/// The architectures gmt implements. Mistral is Llama with sliding-window attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    /// `LlamaForCausalLM` (Llama 1, 2, 3, 3.1, 3.2, SmolLM, …).
    Llama,
    /// `MistralForCausalLM`.
    Mistral,
}

impl Architecture {
    /// Hugging Face `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Mistral => "mistral",
        }
    }

    /// Hugging Face class name in `architectures`.
    pub fn hf_class(self) -> &'static str {
        match self {
            Self::Llama => "LlamaForCausalLM",
            Self::Mistral => "MistralForCausalLM",
        }
    }
}

/// Llama 3.1-style frequency-dependent RoPE scaling (`rope_type = "llama3"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Llama3RopeScaling {
    /// Scale of the low frequencies.
    pub factor: f64,
    /// Wavelength bound (in context lengths) below which frequencies are scaled.
    pub low_freq_factor: f64,
    /// Wavelength bound above which frequencies are kept.
    pub high_freq_factor: f64,
    /// Context length the model was pre-trained with.
    pub original_max_position_embeddings: usize,
}

/// Configuration of a Llama or Mistral causal language model, with Hugging Face's meanings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Llama or Mistral.
    pub architecture: Architecture,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA when fewer than query heads, MQA when 1).
    pub num_key_value_heads: usize,
    /// Width of one head; may differ from `hidden_size / num_attention_heads`.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// Optional Llama-3 RoPE scaling.
    pub rope_scaling: Option<Llama3RopeScaling>,
    /// Longest context the model was trained for.
    pub max_position_embeddings: usize,
    /// Whether the LM head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v/o projections.
    pub attention_bias: bool,
    /// Bias on the MLP projections.
    pub mlp_bias: bool,
    /// Mistral's sliding attention window: a token attends to itself and the
    /// `sliding_window − 1` tokens before it.
    pub sliding_window: Option<usize>,
    /// Beginning-of-sequence token.
    pub bos_token_id: Option<u32>,
    /// Tokens that end generation.
    pub eos_token_ids: Vec<u32>,
    /// Padding token, if the model has one.
    pub pad_token_id: Option<u32>,
}

impl LlamaConfig {
    /// Reads a Hugging Face `config.json`.
    pub fn from_hf_file(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let value: Value = serde_json::from_str(&text).map_err(|source| ModelError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_hf_value(&value, &path.display().to_string())
    }

    /// Reads a parsed `config.json`; `source_name` names it in errors.
    ///
    /// Both RoPE key styles found in published checkpoints are accepted: `rope_theta` +
    /// `rope_scaling`, and the newer `rope_parameters`.
    pub fn from_hf_value(value: &Value, source_name: &str) -> Result<Self, ModelError> {
        let keys = Keys {
            map: value.as_object(),
            source_name,
        };
        if keys.map.is_none() {
            return Err(ModelError::InvalidValue {
                source_name: source_name.into(),
                key: "(root)".into(),
                value: truncate(value),
                reason: "a config must be a JSON object".into(),
            });
        }
        let architecture = match keys.string("model_type")?.as_str() {
            "llama" => Architecture::Llama,
            "mistral" => Architecture::Mistral,
            other => {
                return Err(ModelError::Unsupported {
                    source_name: source_name.into(),
                    key: "model_type".into(),
                    value: format!("\"{other}\""),
                    supported: "\"llama\", \"mistral\"".into(),
                });
            }
        };
        if let Some(act) = keys.opt_string("hidden_act")?
            && act != "silu"
        {
            return Err(keys.unsupported("hidden_act", &format!("\"{act}\""), "\"silu\""));
        }
        let hidden_size = keys.usize("hidden_size")?;
        let num_attention_heads = keys.usize("num_attention_heads")?;
        let head_dim = keys
            .opt_usize("head_dim")?
            .unwrap_or(hidden_size / num_attention_heads.max(1));
        let (rope_theta, rope_scaling) = rope(&keys)?;
        let sliding_window = match architecture {
            Architecture::Mistral => keys.opt_usize("sliding_window")?,
            Architecture::Llama => None,
        };
        let config = Self {
            architecture,
            vocab_size: keys.usize("vocab_size")?,
            hidden_size,
            intermediate_size: keys.usize("intermediate_size")?,
            num_hidden_layers: keys.usize("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads: keys
                .opt_usize("num_key_value_heads")?
                .unwrap_or(num_attention_heads),
            head_dim,
            rms_norm_eps: keys.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: keys.opt_usize("max_position_embeddings")?.unwrap_or(2048),
            tie_word_embeddings: keys.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            attention_bias: keys.opt_bool("attention_bias")?.unwrap_or(false),
            mlp_bias: keys.opt_bool("mlp_bias")?.unwrap_or(false),
            sliding_window,
            bos_token_id: keys.opt_usize("bos_token_id")?.map(|v| v as u32),
            eos_token_ids: keys.token_ids("eos_token_id")?,
            pad_token_id: keys.opt_usize("pad_token_id")?.map(|v| v as u32),
        };
        config.validate(source_name)?;
        Ok(config)
    }

    /// Checks the sizes fit together.
    pub fn validate(&self, source_name: &str) -> Result<(), ModelError> {
        let invalid = |key: &str, value: usize, reason: &str| ModelError::InvalidValue {
            source_name: source_name.into(),
            key: key.into(),
            value: value.to_string(),
            reason: reason.into(),
        };
        for (key, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
        ] {
            if value == 0 {
                return Err(invalid(key, value, "must be positive"));
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(invalid(
                "num_key_value_heads",
                self.num_key_value_heads,
                &format!(
                    "must divide num_attention_heads = {}",
                    self.num_attention_heads
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(invalid(
                "head_dim",
                self.head_dim,
                "rotary embeddings need an even head_dim",
            ));
        }
        if self.sliding_window == Some(0) {
            return Err(invalid("sliding_window", 0, "must be positive"));
        }
        Ok(())
    }

    /// The number of trainable parameters of the model this config builds (counted from the
    /// shapes, without building it): what memory plans for models too large to load are
    /// computed from.
    pub fn num_parameters(&self) -> u64 {
        let (h, i, d) = (
            self.hidden_size as u64,
            self.intermediate_size as u64,
            self.head_dim as u64,
        );
        let (q, kv) = (
            self.num_attention_heads as u64 * d,
            self.num_key_value_heads as u64 * d,
        );
        let attention = h * q + 2 * h * kv + q * h + self.attention_bias as u64 * (q + 2 * kv);
        let mlp = 3 * h * i + self.mlp_bias as u64 * (2 * i + h);
        let layer = attention + mlp + 2 * h;
        let embeddings = self.vocab_size as u64 * h;
        let head = if self.tie_word_embeddings {
            0
        } else {
            embeddings
        };
        embeddings + self.num_hidden_layers as u64 * layer + h + head
    }

    /// The number of entries of the largest single weight tensor (the embedding table in
    /// every model gmt knows): bounds the optimizer's and the mask's per-tensor temporaries.
    pub fn largest_parameter(&self) -> u64 {
        let (h, i) = (self.hidden_size as u64, self.intermediate_size as u64);
        let q = (self.num_attention_heads * self.head_dim) as u64;
        (self.vocab_size as u64 * h).max(h * i).max(h * q)
    }

    /// The Hugging Face `config.json` of this model (legacy `rope_theta` + `rope_scaling`
    /// keys, which every Transformers version reads).
    pub fn to_hf_value(&self) -> Value {
        let mut v = json!({
            "architectures": [self.architecture.hf_class()],
            "model_type": self.architecture.model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": "float32",
        });
        let map = v.as_object_mut().expect("object literal");
        map.insert(
            "eos_token_id".into(),
            match self.eos_token_ids.as_slice() {
                [one] => json!(one),
                many => json!(many),
            },
        );
        if let Some(s) = &self.rope_scaling {
            map.insert(
                "rope_scaling".into(),
                json!({
                    "rope_type": "llama3",
                    "factor": s.factor,
                    "low_freq_factor": s.low_freq_factor,
                    "high_freq_factor": s.high_freq_factor,
                    "original_max_position_embeddings": s.original_max_position_embeddings,
                }),
            );
        }
        match self.architecture {
            Architecture::Llama => {
                map.insert("attention_bias".into(), json!(self.attention_bias));
                map.insert("mlp_bias".into(), json!(self.mlp_bias));
            }
            Architecture::Mistral => {
                map.insert("sliding_window".into(), json!(self.sliding_window));
            }
        }
        v
    }
}

/// RoPE settings from either key style.
fn rope(keys: &Keys) -> Result<(f64, Option<Llama3RopeScaling>), ModelError> {
    if let Some(params) = keys.object("rope_parameters")? {
        let nested = Keys {
            map: Some(params),
            source_name: keys.source_name,
        };
        let theta = nested
            .opt_f64("rope_theta")?
            .or(keys.opt_f64("rope_theta")?)
            .unwrap_or(10_000.0);
        return Ok((theta, rope_scaling(&nested, "rope_parameters")?));
    }
    let theta = keys.opt_f64("rope_theta")?.unwrap_or(10_000.0);
    match keys.object("rope_scaling")? {
        None => Ok((theta, None)),
        Some(scaling) => {
            let nested = Keys {
                map: Some(scaling),
                source_name: keys.source_name,
            };
            Ok((theta, rope_scaling(&nested, "rope_scaling")?))
        }
    }
}

fn rope_scaling(keys: &Keys, prefix: &str) -> Result<Option<Llama3RopeScaling>, ModelError> {
    // Transformers accepts both `rope_type` and the older `type`.
    let kind = match keys.opt_string("rope_type")? {
        Some(kind) => Some(kind),
        None => keys.opt_string("type")?,
    };
    match kind.as_deref() {
        None | Some("default") => Ok(None),
        Some("llama3") => {
            let field = |name: &str| {
                keys.opt_f64(name)?.ok_or_else(|| ModelError::MissingKey {
                    source_name: keys.source_name.into(),
                    key: format!("{prefix}.{name}"),
                })
            };
            Ok(Some(Llama3RopeScaling {
                factor: field("factor")?,
                low_freq_factor: field("low_freq_factor")?,
                high_freq_factor: field("high_freq_factor")?,
                original_max_position_embeddings: field("original_max_position_embeddings")?
                    as usize,
            }))
        }
        Some(other) => Err(keys.unsupported(
            &format!("{prefix}.rope_type"),
            &format!("\"{other}\""),
            "\"default\", \"llama3\"",
        )),
    }
}

/// Typed access to a JSON object, with errors that name the key.
struct Keys<'a> {
    map: Option<&'a Map<String, Value>>,
    source_name: &'a str,
}

impl Keys<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.map.and_then(|m| m.get(key)).filter(|v| !v.is_null())
    }

    fn missing(&self, key: &str) -> ModelError {
        ModelError::MissingKey {
            source_name: self.source_name.into(),
            key: key.into(),
        }
    }

    fn invalid(&self, key: &str, value: &Value, reason: &str) -> ModelError {
        ModelError::InvalidValue {
            source_name: self.source_name.into(),
            key: key.into(),
            value: truncate(value),
            reason: reason.into(),
        }
    }

    fn unsupported(&self, key: &str, value: &str, supported: &str) -> ModelError {
        ModelError::Unsupported {
            source_name: self.source_name.into(),
            key: key.into(),
            value: value.into(),
            supported: supported.into(),
        }
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>, ModelError> {
        self.get(key)
            .map(|v| {
                v.as_u64()
                    .map(|n| n as usize)
                    .ok_or_else(|| self.invalid(key, v, "expected a non-negative integer"))
            })
            .transpose()
    }

    fn usize(&self, key: &str) -> Result<usize, ModelError> {
        self.opt_usize(key)?.ok_or_else(|| self.missing(key))
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>, ModelError> {
        self.get(key)
            .map(|v| {
                v.as_f64()
                    .ok_or_else(|| self.invalid(key, v, "expected a number"))
            })
            .transpose()
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>, ModelError> {
        self.get(key)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| self.invalid(key, v, "expected true or false"))
            })
            .transpose()
    }

    fn opt_string(&self, key: &str) -> Result<Option<String>, ModelError> {
        self.get(key)
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| self.invalid(key, v, "expected a string"))
            })
            .transpose()
    }

    fn string(&self, key: &str) -> Result<String, ModelError> {
        self.opt_string(key)?.ok_or_else(|| self.missing(key))
    }

    fn object(&self, key: &str) -> Result<Option<&Map<String, Value>>, ModelError> {
        self.get(key)
            .map(|v| {
                v.as_object()
                    .ok_or_else(|| self.invalid(key, v, "expected an object"))
            })
            .transpose()
    }

    /// An id or a list of ids (`eos_token_id` is either).
    fn token_ids(&self, key: &str) -> Result<Vec<u32>, ModelError> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_u64()
                        .map(|n| n as u32)
                        .ok_or_else(|| self.invalid(key, v, "expected token ids"))
                })
                .collect(),
            Some(v) => Ok(vec![
                v.as_u64()
                    .ok_or_else(|| self.invalid(key, v, "expected a token id"))?
                    as u32,
            ]),
        }
    }
}

fn truncate(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 80 {
        format!("{}…", text.chars().take(80).collect::<String>())
    } else {
        text
    }
}
