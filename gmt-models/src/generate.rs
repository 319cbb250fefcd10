//! Decoding with a KV cache: greedy, or temperature / top-p sampling with a seed.

use burn::tensor::backend::Backend;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{LlamaForCausalLm, ModelError};

/// How to pick tokens.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GenerationConfig {
    /// Upper bound on new tokens.
    pub max_new_tokens: usize,
    /// 0 = greedy (argmax); otherwise logits are divided by it before sampling.
    pub temperature: f64,
    /// Nucleus sampling: sample from the smallest set of tokens whose probability reaches
    /// `top_p` (1 = all tokens).
    pub top_p: f64,
    /// Seed of the sampler.
    pub seed: u64,
    /// Tokens that end generation (included in the output); empty = the model's EOS ids.
    pub stop_tokens: Vec<u32>,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 256,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop_tokens: Vec::new(),
        }
    }
}

/// What [`generate`] produced.
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    /// New tokens, the stop token included when one was produced.
    pub tokens: Vec<u32>,
    /// Whether a stop token ended generation (rather than `max_new_tokens`).
    pub stopped: bool,
}

/// Continues `prompt`, calling `on_token` with each new token as soon as it is chosen (for
/// streaming).
pub fn generate<B: Backend>(
    model: &LlamaForCausalLm<B>,
    prompt: &[u32],
    config: &GenerationConfig,
    mut on_token: impl FnMut(u32),
) -> Result<Generation, ModelError> {
    let mut generations = decode(model, &[prompt], config, |_, token| on_token(token))?;
    Ok(generations.pop().expect("one row"))
}

/// Continues several prompts at once. They are left-padded into one batch (padding takes no
/// position and is never attended to), so each row gets what [`generate`] would give it
/// alone, up to float rounding — while every layer runs one matrix product for all rows,
/// which on CPU backends is many times faster than one prompt after another. Rows that stop
/// early wait for the others. With sampling, row `r` draws from stream `r` of the seed (row
/// 0 as [`generate`] does).
pub fn generate_batch<B: Backend>(
    model: &LlamaForCausalLm<B>,
    prompts: &[&[u32]],
    config: &GenerationConfig,
) -> Result<Vec<Generation>, ModelError> {
    decode(model, prompts, config, |_, _| {})
}

/// The decoding loop shared by [`generate`] and [`generate_batch`]; `on_token(row, token)`.
fn decode<B: Backend>(
    model: &LlamaForCausalLm<B>,
    prompts: &[&[u32]],
    config: &GenerationConfig,
    mut on_token: impl FnMut(usize, u32),
) -> Result<Vec<Generation>, ModelError> {
    if prompts.is_empty() || prompts.iter().any(|p| p.is_empty()) {
        return Err(ModelError::InvalidInput(
            "generation needs non-empty prompts".into(),
        ));
    }
    if config.temperature.is_nan() || config.temperature < 0.0 {
        return Err(ModelError::InvalidInput(format!(
            "temperature must be ≥ 0, got {}",
            config.temperature
        )));
    }
    if !(config.top_p > 0.0 && config.top_p <= 1.0) {
        return Err(ModelError::InvalidInput(format!(
            "top_p must be in (0, 1], got {}",
            config.top_p
        )));
    }
    let stop = if config.stop_tokens.is_empty() {
        &model.config().eos_token_ids
    } else {
        &config.stop_tokens
    };
    let rows = prompts.len();
    let mut rngs: Vec<ChaCha8Rng> = (0..rows)
        .map(|row| {
            let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
            rng.set_stream(row as u64);
            rng
        })
        .collect();
    // Left padding: every row's last prompt token sits in the last slot.
    let width = prompts.iter().map(|p| p.len()).max().expect("non-empty");
    let mut ids = Vec::with_capacity(rows * width);
    let mut padding = Vec::with_capacity(rows * width);
    for prompt in prompts {
        let pad = width - prompt.len();
        ids.extend(std::iter::repeat_n(0, pad).chain(prompt.iter().copied()));
        padding
            .extend(std::iter::repeat_n(true, pad).chain(std::iter::repeat_n(false, prompt.len())));
    }
    let mut cache = model.new_cache();
    let mut logits = model.forward_cached_batch(&ids, &padding, rows, &mut cache)?;
    let mut out = vec![
        Generation {
            tokens: Vec::new(),
            stopped: false,
        };
        rows
    ];
    for step in 0..config.max_new_tokens {
        let [_, seq, vocab] = logits.dims();
        let last: Vec<f32> = logits
            .slice([0..rows, seq - 1..seq, 0..vocab])
            .into_data()
            .iter::<f32>()
            .collect();
        let mut next = Vec::with_capacity(rows);
        for (row, generation) in out.iter_mut().enumerate() {
            if generation.stopped {
                next.push(None);
                continue;
            }
            let logits = &last[row * vocab..(row + 1) * vocab];
            let token = if config.temperature == 0.0 {
                argmax(logits)
            } else {
                sample(logits, config.temperature, config.top_p, &mut rngs[row])
            };
            generation.tokens.push(token);
            generation.stopped = stop.contains(&token);
            on_token(row, token);
            next.push((!generation.stopped).then_some(token));
        }
        if next.iter().all(Option::is_none) || step + 1 == config.max_new_tokens {
            break;
        }
        let ids: Vec<u32> = next.iter().map(|t| t.unwrap_or(0)).collect();
        let padding: Vec<bool> = next.iter().map(Option::is_none).collect();
        logits = model.forward_cached_batch(&ids, &padding, rows, &mut cache)?;
    }
    Ok(out)
}

/// Index of the largest logit (the first one on ties, like `torch.argmax`).
fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

fn sample(logits: &[f32], temperature: f64, top_p: f64, rng: &mut impl Rng) -> u32 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let mut probs: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &v)| (i, ((v as f64 - max) / temperature).exp()))
        .collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= total);
    probs.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut kept = 0;
    let mut mass = 0.0;
    for p in &probs {
        kept += 1;
        mass += p.1;
        if mass >= top_p {
            break;
        }
    }
    let mut draw = rng.random::<f64>() * mass;
    for &(i, p) in &probs[..kept] {
        if draw < p {
            return i as u32;
        }
        draw -= p;
    }
    probs[kept - 1].0 as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.1, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn tiny_top_p_is_greedy_and_sampling_follows_the_seed() {
        let logits = [0.0, 2.0, 1.0, 1.9];
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..20 {
            assert_eq!(sample(&logits, 1.0, 1e-6, &mut rng), 1);
        }
        let draw = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..32)
                .map(|_| sample(&logits, 1.0, 1.0, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(5), draw(5));
        assert!(
            draw(5).iter().any(|&t| t != 1),
            "full-nucleus sampling explores"
        );
    }
}
