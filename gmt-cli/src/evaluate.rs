//! GSM8K-style answer accuracy by generation (mean loss is `gmt_train::evaluate`).

use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use gmt_data::{ChatTemplate, Example, Message};
use gmt_models::{GenerationConfig, LlamaForCausalLm, generate_batch};
use serde::Serialize;
use tokenizers::Tokenizer;

/// Generation accuracy on question/answer data.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AccuracyReport {
    /// correct / total.
    pub accuracy: f64,
    /// Answers whose last number equals the reference.
    pub correct: usize,
    /// Problems tried.
    pub total: usize,
}

/// The reference answer of a GSM8K-style solution: the number after `####`.
pub fn reference_answer(solution: &str) -> Option<f64> {
    let (_, tail) = solution.rsplit_once("####")?;
    parse_number(tail.split_whitespace().next()?)
}

/// The last number in `text` (`1,234`, `-5`, `3.5`; a trailing `.` is punctuation).
pub fn last_number(text: &str) -> Option<f64> {
    let mut last = None;
    let mut current = String::new();
    for c in text.chars().chain(std::iter::once(' ')) {
        let continues = c.is_ascii_digit()
            || (c == '-' && current.is_empty())
            || ((c == ',' || c == '.') && !current.is_empty());
        if continues {
            current.push(c);
        } else if !current.is_empty() {
            if let Some(n) = parse_number(&current) {
                last = Some(n);
            }
            current.clear();
        }
    }
    last
}

fn parse_number(token: &str) -> Option<f64> {
    let cleaned: String = token
        .trim_end_matches(['.', ','])
        .chars()
        .filter(|&c| c != ',' && c != '$')
        .collect();
    cleaned.parse().ok()
}

/// One problem of an accuracy run, for logs.
#[derive(Clone, Debug, Serialize)]
pub struct Attempt {
    /// The user's question.
    pub question: String,
    /// What the model wrote.
    pub completion: String,
    /// Whether its last number matched.
    pub correct: bool,
}

/// Prompts answered together by [`answer_accuracy`]: one left-padded batch shares each
/// layer's matrix products, many times faster on CPU than one prompt at a time, while a
/// batch's KV cache stays small.
const GENERATION_BATCH: usize = 64;

/// Greedy answers to each example's last user turn, scored against the number after `####`
/// in its assistant turn. Examples without such a number are an error naming the example.
pub fn answer_accuracy<B: Backend>(
    model: &LlamaForCausalLm<B>,
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    examples: &[Example],
    max_new_tokens: usize,
    mut on_attempt: impl FnMut(usize, &Attempt),
) -> Result<AccuracyReport> {
    struct Problem {
        ids: Vec<u32>,
        expected: f64,
        question: String,
    }
    let problems = examples
        .iter()
        .enumerate()
        .map(|(i, example)| {
            let Example::Chat(messages) = example else {
                anyhow::bail!(
                    "example {}: answer accuracy needs question/answer data, not plain text",
                    i + 1
                );
            };
            let (prompt, reference) =
                split_last_answer(messages).with_context(|| format!("example {}", i + 1))?;
            let expected = reference_answer(&reference.content).with_context(|| {
                format!(
                    "example {}: the reference answer has no `#### <number>`",
                    i + 1
                )
            })?;
            let text = template.render(prompt, true)?;
            let ids = tokenizer
                .encode(text.as_str(), false)
                .map_err(|e| anyhow::anyhow!("tokenizing example {}: {e}", i + 1))?
                .get_ids()
                .to_vec();
            let question = prompt.last().map(|m| m.content.clone()).unwrap_or_default();
            Ok(Problem {
                ids,
                expected,
                question,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let config = GenerationConfig {
        max_new_tokens,
        ..GenerationConfig::default()
    };
    let mut correct = 0;
    for (chunk, batch) in problems.chunks(GENERATION_BATCH).enumerate() {
        let prompts: Vec<&[u32]> = batch.iter().map(|p| p.ids.as_slice()).collect();
        let generations = generate_batch(model, &prompts, &config)?;
        for (j, (problem, generation)) in batch.iter().zip(generations).enumerate() {
            let completion = tokenizer
                .decode(&generation.tokens, true)
                .map_err(|e| anyhow::anyhow!("decoding: {e}"))?;
            let ok = last_number(&completion).is_some_and(|n| (n - problem.expected).abs() < 1e-6);
            correct += ok as usize;
            on_attempt(
                chunk * GENERATION_BATCH + j,
                &Attempt {
                    question: problem.question.clone(),
                    completion,
                    correct: ok,
                },
            );
        }
    }
    Ok(AccuracyReport {
        accuracy: correct as f64 / examples.len().max(1) as f64,
        correct,
        total: examples.len(),
    })
}

fn split_last_answer(messages: &[Message]) -> Result<(&[Message], &Message)> {
    match messages.split_last() {
        Some((last, prompt)) if last.role == "assistant" && !prompt.is_empty() => {
            Ok((prompt, last))
        }
        _ => anyhow::bail!("the conversation does not end with an assistant answer to a prompt"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_read_like_gsm8k_graders_do() {
        assert_eq!(reference_answer("2 + 3 = 5\n#### 5"), Some(5.0));
        assert_eq!(reference_answer("#### 1,234"), Some(1234.0));
        assert_eq!(reference_answer("no marker 7"), None);
        assert_eq!(last_number("So she has 12 apples."), Some(12.0));
        assert_eq!(last_number("It costs $1,250.50 in total"), Some(1250.5));
        assert_eq!(last_number("from 3 to -4"), Some(-4.0));
        assert_eq!(last_number("none"), None);
    }
}
