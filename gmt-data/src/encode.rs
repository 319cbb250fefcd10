//! Examples → token ids and labels, with loss on the assistant turns.

use tokenizers::Tokenizer;

use crate::{ChatTemplate, DataError, Example, Message, PreferencePair};

/// Label of a token that carries no loss.
pub const IGNORE: i64 = -100;

/// One tokenized example.
///
/// A preference pair is one `Encoded` too: `ids` hold the prompt then the chosen response,
/// with labels on the response only (so the prompt is the leading run of `-100` labels), and
/// `rejected` holds the rejected response's ids, which follow the same prompt.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Encoded {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Per token: its own id where it is trained on, `-100` elsewhere. (Unshifted: the model
    /// shifts, as Transformers does.)
    pub labels: Vec<i64>,
    /// For a preference pair: the rejected response's ids (after the same prompt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<Vec<u32>>,
}

impl Encoded {
    /// An example to imitate: `ids` with their `labels`.
    pub fn new(ids: Vec<u32>, labels: Vec<i64>) -> Self {
        Self {
            ids,
            labels,
            rejected: None,
        }
    }

    /// Whether this is a preference pair.
    pub fn is_pair(&self) -> bool {
        self.rejected.is_some()
    }

    /// Tokens before the first trained one: a pair's prompt.
    pub fn prompt_len(&self) -> usize {
        self.labels
            .iter()
            .position(|&l| l != IGNORE)
            .unwrap_or(self.labels.len())
    }

    /// Whether some token carries loss: a label after the first position (position 0 is
    /// never predicted, nothing comes before it). A pair needs one in both responses.
    pub fn has_target(&self) -> bool {
        let chosen = self.labels.iter().skip(1).any(|&l| l != IGNORE);
        match &self.rejected {
            Some(rejected) => {
                chosen && !rejected.is_empty() && self.prompt_len() + rejected.len() >= 2
            }
            None => chosen,
        }
    }

    /// The longest row it becomes: for a pair, the prompt with the longer response.
    pub fn max_len(&self) -> usize {
        match &self.rejected {
            Some(rejected) => self.ids.len().max(self.prompt_len() + rejected.len()),
            None => self.ids.len(),
        }
    }
}

/// Renders and tokenizes examples.
pub struct Encoder {
    tokenizer: Tokenizer,
    template: ChatTemplate,
    train_on_prompt: bool,
}

impl Encoder {
    /// `train_on_prompt = false` puts the loss on assistant turns only (every assistant turn
    /// of multi-turn data).
    pub fn new(tokenizer: Tokenizer, template: ChatTemplate, train_on_prompt: bool) -> Self {
        Self {
            tokenizer,
            template,
            train_on_prompt,
        }
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The chat template.
    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    /// Tokenizes one example.
    pub fn encode(&self, example: &Example) -> Result<Encoded, DataError> {
        match example {
            Example::Text(text) => {
                // Plain text gets the special tokens the tokenizer itself adds, nothing more.
                let encoding = self
                    .tokenizer
                    .encode(text.as_str(), true)
                    .map_err(|e| DataError::Tokenizer(e.to_string()))?;
                let ids = encoding.get_ids().to_vec();
                let labels = ids.iter().map(|&i| i as i64).collect();
                Ok(Encoded::new(ids, labels))
            }
            Example::Preference(pair) => self.encode_pair(pair),
            Example::Chat(messages) => {
                let (text, spans) = self.render_with_spans(messages)?;
                let encoding = self
                    .tokenizer
                    .encode(text.as_str(), false)
                    .map_err(|e| DataError::Tokenizer(e.to_string()))?;
                let ids = encoding.get_ids().to_vec();
                let labels = ids
                    .iter()
                    .zip(encoding.get_offsets())
                    .map(|(&id, &(start, _))| {
                        let trained = self.train_on_prompt
                            || spans.iter().any(|&(a, b)| start >= a && start < b);
                        if trained { id as i64 } else { IGNORE }
                    })
                    .collect();
                Ok(Encoded::new(ids, labels))
            }
        }
    }

    /// A preference pair: the prompt rendered with `add_generation_prompt`, each response as
    /// what the whole conversation's rendering adds to it. Prompt and responses are tokenized
    /// apart (as TRL does), so both rows share the prompt's tokens exactly.
    fn encode_pair(&self, pair: &PreferencePair) -> Result<Encoded, DataError> {
        let prompt = self.template.render(&pair.prompt, true)?;
        let response = |turns: &[Message]| -> Result<Vec<u32>, DataError> {
            let conversation: Vec<Message> = pair.prompt.iter().chain(turns).cloned().collect();
            let full = self.template.render(&conversation, false)?;
            let text = full.strip_prefix(prompt.as_str()).ok_or_else(|| {
                DataError::Template(
                    "rendering is not incremental: the prompt is not a prefix of the conversation, so the response cannot be located".into(),
                )
            })?;
            let ids = self.tokenize(text)?;
            if ids.is_empty() {
                return Err(DataError::Template("a response renders to no token".into()));
            }
            Ok(ids)
        };
        let chosen = response(&pair.chosen)?;
        let rejected = response(&pair.rejected)?;
        if chosen == rejected {
            return Err(DataError::Template(
                "chosen and rejected responses have the same tokens: the pair expresses no preference".into(),
            ));
        }
        let prompt = self.tokenize(&prompt)?;
        let labels = std::iter::repeat_n(IGNORE, prompt.len())
            .chain(chosen.iter().map(|&t| t as i64))
            .collect();
        Ok(Encoded {
            ids: prompt.into_iter().chain(chosen).collect(),
            labels,
            rejected: Some(rejected),
        })
    }

    /// Token ids of rendered text (the template wrote the special tokens).
    fn tokenize(&self, text: &str) -> Result<Vec<u32>, DataError> {
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| DataError::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The full rendering and the byte ranges of the assistant turns in it. An assistant
    /// turn spans from the end of the prompt that asks for it (rendered with
    /// `add_generation_prompt`) to the end of the conversation rendered through it, so the
    /// end-of-turn tokens are trained on too.
    pub fn render_with_spans(
        &self,
        messages: &[Message],
    ) -> Result<(String, Vec<(usize, usize)>), DataError> {
        let full = self.template.render(messages, false)?;
        let mut spans = Vec::new();
        for (i, message) in messages.iter().enumerate() {
            if message.role != "assistant" {
                continue;
            }
            let prompt = self.template.render(&messages[..i], true)?;
            let through = self.template.render(&messages[..=i], false)?;
            if !through.starts_with(&prompt) || !full.starts_with(&through) {
                return Err(DataError::Template(format!(
                    "rendering is not incremental at message {i}: the prompt for an assistant turn is not a prefix of the conversation, so its tokens cannot be located"
                )));
            }
            spans.push((prompt.len(), through.len()));
        }
        Ok((full, spans))
    }
}
