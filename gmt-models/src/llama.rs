//! Llama and Mistral causal language models (one architecture: Mistral adds a sliding
//! attention window). Names follow Hugging Face Transformers' `modeling_llama.py`.

use burn::module::{Module, Param};
use burn::nn::{Embedding, Linear};
use burn::tensor::{Bool, Int, Tensor, TensorData, backend::Backend};

use crate::attention::{Attention, LayerCache};
use crate::loss::causal_lm_loss;
use crate::{
    HostTensor, LlamaConfig, Mlp, ModelError, RmsNorm, RotaryEmbedding, TokenBatch, WeightMap,
};

/// One pre-norm transformer block.
#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    /// `self_attn`.
    pub self_attn: Attention<B>,
    /// `mlp`.
    pub mlp: Mlp<B>,
    /// Norm before attention.
    pub input_layernorm: RmsNorm<B>,
    /// Norm before the MLP.
    pub post_attention_layernorm: RmsNorm<B>,
}

/// A Llama or Mistral causal LM. Module paths equal Hugging Face names without the `model.`
/// prefix (`layers.3.self_attn.q_proj.weight`), so GMT filters read naturally; see
/// [`hf_name`].
#[derive(Module, Debug)]
pub struct LlamaForCausalLm<B: Backend> {
    /// Token embeddings `[vocab, hidden]`.
    pub embed_tokens: Embedding<B>,
    /// Decoder blocks.
    pub layers: Vec<DecoderLayer<B>>,
    /// Final norm.
    pub norm: RmsNorm<B>,
    /// Output projection; `None` when tied to `embed_tokens`.
    pub lm_head: Option<Linear<B>>,
    #[module(skip)]
    config: LlamaConfig,
    #[module(skip)]
    rope: RotaryEmbedding,
}

/// Logits, and with labels the loss and the number of tokens it averages over.
#[derive(Debug)]
pub struct CausalLmOutput<B: Backend> {
    /// `[batch, seq, vocab]`.
    pub logits: Tensor<B, 3>,
    /// Mean next-token cross-entropy over counted tokens (0 when none count).
    pub loss: Option<Tensor<B, 1>>,
    /// Tokens the loss averages over, for token-weighted gradient accumulation.
    pub tokens: usize,
}

/// The per-layer caches of incremental decoding: keys and values of every slot fed so far,
/// for each row of the batch, and the position of each slot (`None` for padding).
#[derive(Clone, Debug)]
pub struct KvCache<B: Backend> {
    layers: Vec<Option<LayerCache<B>>>,
    /// `[batch][len]`; empty until the first call fixes the batch size.
    slots: Vec<Vec<Option<usize>>>,
}

impl<B: Backend> KvCache<B> {
    /// Slots (tokens and padding) cached per row so far.
    pub fn len(&self) -> usize {
        self.slots.first().map_or(0, Vec::len)
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The Hugging Face name of a module path (`layers.0.mlp.up_proj.weight` →
/// `model.layers.0.mlp.up_proj.weight`; `lm_head.weight` stays).
pub fn hf_name(path: &str) -> String {
    if path.starts_with("lm_head.") {
        path.to_string()
    } else {
        format!("model.{path}")
    }
}

impl<B: Backend> LlamaForCausalLm<B> {
    /// Builds the model from Hugging Face-named weights, consuming them; any missing,
    /// misshapen or unused tensor is an error listing them all.
    pub fn from_weights(
        config: &LlamaConfig,
        mut weights: WeightMap,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        let c = config;
        let (h, q_out, kv_out) = (
            c.hidden_size,
            c.num_attention_heads * c.head_dim,
            c.num_key_value_heads * c.head_dim,
        );
        let w = &mut weights;
        let linear =
            |w: &mut WeightMap, name: &str, d_in: usize, d_out: usize, bias: bool| Linear {
                // HF stores [out, in]; burn's Linear multiplies by [in, out].
                weight: Param::from_tensor(
                    w.take::<B, 2>(&format!("{name}.weight"), [d_out, d_in], device)
                        .transpose(),
                ),
                bias: bias.then(|| {
                    Param::from_tensor(w.take::<B, 1>(&format!("{name}.bias"), [d_out], device))
                }),
            };
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let self_attn = Attention {
                q_proj: linear(
                    w,
                    &format!("{p}.self_attn.q_proj"),
                    h,
                    q_out,
                    c.attention_bias,
                ),
                k_proj: linear(
                    w,
                    &format!("{p}.self_attn.k_proj"),
                    h,
                    kv_out,
                    c.attention_bias,
                ),
                v_proj: linear(
                    w,
                    &format!("{p}.self_attn.v_proj"),
                    h,
                    kv_out,
                    c.attention_bias,
                ),
                o_proj: linear(
                    w,
                    &format!("{p}.self_attn.o_proj"),
                    q_out,
                    h,
                    c.attention_bias,
                ),
                num_heads: c.num_attention_heads,
                num_kv_heads: c.num_key_value_heads,
                head_dim: c.head_dim,
            };
            let mlp = Mlp {
                gate_proj: linear(
                    w,
                    &format!("{p}.mlp.gate_proj"),
                    h,
                    c.intermediate_size,
                    c.mlp_bias,
                ),
                up_proj: linear(
                    w,
                    &format!("{p}.mlp.up_proj"),
                    h,
                    c.intermediate_size,
                    c.mlp_bias,
                ),
                down_proj: linear(
                    w,
                    &format!("{p}.mlp.down_proj"),
                    c.intermediate_size,
                    h,
                    c.mlp_bias,
                ),
            };
            let norm = |w: &mut WeightMap, name: &str| {
                RmsNorm::new(
                    w.take(&format!("{p}.{name}.weight"), [h], device),
                    c.rms_norm_eps,
                )
            };
            layers.push(DecoderLayer {
                self_attn,
                mlp,
                input_layernorm: norm(w, "input_layernorm"),
                post_attention_layernorm: norm(w, "post_attention_layernorm"),
            });
        }
        let embed_tokens = Embedding {
            weight: Param::from_tensor(w.take(
                "model.embed_tokens.weight",
                [c.vocab_size, h],
                device,
            )),
        };
        let norm = RmsNorm::new(w.take("model.norm.weight", [h], device), c.rms_norm_eps);
        let lm_head =
            (!c.tie_word_embeddings).then(|| linear(w, "lm_head", h, c.vocab_size, false));
        weights.finish()?;
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            config: config.clone(),
            rope: RotaryEmbedding::new(config),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Every weight under its Hugging Face name and layout (Linear weights `[out, in]`); tied
    /// models have no `lm_head.weight`.
    pub fn hf_weights(&self) -> Vec<(String, HostTensor)> {
        crate::named::named_weights(self)
    }

    /// Training forward (no cache): logits, and the loss when the batch has labels.
    pub fn forward(&self, batch: &TokenBatch) -> Result<CausalLmOutput<B>, ModelError> {
        let logits = self.logits(batch)?;
        let (loss, tokens) = match &batch.labels {
            Some(labels) => {
                let (loss, tokens) = causal_lm_loss(logits.clone(), labels);
                (Some(loss), tokens)
            }
            None => (None, 0),
        };
        Ok(CausalLmOutput {
            logits,
            loss,
            tokens,
        })
    }

    /// Training forward (no cache) without a loss: logits `[batch, seq_len, vocab]`. Labels,
    /// if any, are ignored.
    pub fn logits(&self, batch: &TokenBatch) -> Result<Tensor<B, 3>, ModelError> {
        batch.validate(self.config().vocab_size)?;
        let device = self.devices()[0].clone();
        let (b, s) = (batch.batch, batch.seq_len);
        let (cos, sin) = self.rope.tables(&batch.positions(), b, s, &device);
        let blocked = bool_tensor(
            batch.blocked(self.config().sliding_window),
            [b, 1, s, s],
            &device,
        );
        Ok(self.run(
            ids_tensor(&batch.input_ids, b, s, &device),
            &cos,
            &sin,
            &blocked,
            None,
        ))
    }

    /// An empty cache for [`forward_cached`](Self::forward_cached) and
    /// [`forward_cached_batch`](Self::forward_cached_batch).
    pub fn new_cache(&self) -> KvCache<B> {
        KvCache {
            layers: vec![None; self.layers.len()],
            slots: Vec::new(),
        }
    }

    /// Incremental decoding of one sequence: feeds `ids` after the cached tokens and returns
    /// their logits `[1, ids.len(), vocab]`.
    pub fn forward_cached(
        &self,
        ids: &[u32],
        cache: &mut KvCache<B>,
    ) -> Result<Tensor<B, 3>, ModelError> {
        self.forward_cached_batch(ids, &vec![false; ids.len()], 1, cache)
    }

    /// Incremental decoding of `batch` sequences at once: feeds `ids` (`[batch, seq]`, row
    /// major) after the cached slots and returns their logits `[batch, seq, vocab]`.
    /// `padding` (same shape) marks fed slots that are not tokens — the left padding of
    /// shorter prompts, or rows that have finished: they take no position, and no token
    /// attends to them, so each row computes what it would alone.
    pub fn forward_cached_batch(
        &self,
        ids: &[u32],
        padding: &[bool],
        batch: usize,
        cache: &mut KvCache<B>,
    ) -> Result<Tensor<B, 3>, ModelError> {
        if batch == 0
            || ids.is_empty()
            || !ids.len().is_multiple_of(batch)
            || padding.len() != ids.len()
        {
            return Err(ModelError::InvalidInput(format!(
                "{} ids and {} padding flags do not form {batch} non-empty rows",
                ids.len(),
                padding.len()
            )));
        }
        if !cache.is_empty() && cache.slots.len() != batch {
            return Err(ModelError::InvalidInput(format!(
                "the cache holds {} rows, not {batch}",
                cache.slots.len()
            )));
        }
        let s = ids.len() / batch;
        TokenBatch::new(ids.to_vec(), batch, s).validate(self.config().vocab_size)?;
        let device = self.devices()[0].clone();
        let (past, total) = (cache.len(), cache.len() + s);
        cache.slots.resize_with(batch, Vec::new);
        let mut positions = Vec::with_capacity(batch * s);
        for (row, pads) in cache.slots.iter_mut().zip(padding.chunks(s)) {
            let mut next = row.iter().flatten().count();
            for &pad in pads {
                row.push((!pad).then_some(next));
                next += !pad as usize;
            }
            // Padding slots get position 0: their rotation is irrelevant, nothing sees them.
            positions.extend(row[past..].iter().map(|p| p.unwrap_or(0)));
        }
        let (cos, sin) = self.rope.tables(&positions, batch, s, &device);
        let window = self.config().sliding_window;
        let mut blocked = Vec::with_capacity(batch * s * total);
        for row in &cache.slots {
            for query in past..total {
                blocked.extend((0..total).map(|key| match (row[query], row[key]) {
                    (_, None) => true,
                    _ if key > query => true,
                    (Some(q), Some(k)) => window.is_some_and(|w| q - k >= w),
                    (None, Some(_)) => false,
                }));
            }
        }
        let blocked = bool_tensor(blocked, [batch, 1, s, total], &device);
        let logits = self.run(
            ids_tensor(ids, batch, s, &device),
            &cos,
            &sin,
            &blocked,
            Some(&mut cache.layers),
        );
        Ok(logits)
    }

    fn run(
        &self,
        ids: Tensor<B, 2, Int>,
        cos: &Tensor<B, 4>,
        sin: &Tensor<B, 4>,
        blocked: &Tensor<B, 4, Bool>,
        mut caches: Option<&mut Vec<Option<LayerCache<B>>>>,
    ) -> Tensor<B, 3> {
        let mut x = self.embed_tokens.forward(ids);
        // The rotary tables are computed in fp32 and rounded to the weights' format, as in
        // Transformers (a no-op for fp32 weights).
        let (cos, sin) = (&cos.clone().cast(x.dtype()), &sin.clone().cast(x.dtype()));
        for (i, layer) in self.layers.iter().enumerate() {
            let cache = caches.as_deref_mut().map(|c| &mut c[i]);
            let attn = layer.self_attn.forward(
                layer.input_layernorm.forward(x.clone()),
                cos,
                sin,
                blocked,
                cache,
            );
            let h = x + attn;
            x = h.clone() + layer.mlp.forward(layer.post_attention_layernorm.forward(h));
        }
        let x = self.norm.forward(x);
        match &self.lm_head {
            Some(head) => crate::mlp::linear3(head, x),
            None => {
                let [b, s, h] = x.dims();
                let weight = self.embed_tokens.weight.val(); // [vocab, hidden]
                let vocab = weight.dims()[0];
                x.reshape([b * s, h])
                    .matmul(weight.transpose())
                    .reshape([b, s, vocab])
            }
        }
    }
}

fn ids_tensor<B: Backend>(
    ids: &[u32],
    batch: usize,
    seq: usize,
    device: &B::Device,
) -> Tensor<B, 2, Int> {
    let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    Tensor::from_data(TensorData::new(ids, [batch, seq]), device)
}

fn bool_tensor<B: Backend>(
    values: Vec<bool>,
    shape: [usize; 4],
    device: &B::Device,
) -> Tensor<B, 4, Bool> {
    Tensor::from_data(TensorData::new(values, shape), device)
}
