//! Examples → token ids and labels, with loss on the assistant turns.

use tokenizers::Tokenizer;

use crate::{ChatTemplate, DataError, Example, Message};

/// Label of a token that carries no loss.
pub const IGNORE: i64 = -100;

/// One tokenized example.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Encoded {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Per token: its own id where it is trained on, `-100` elsewhere. (Unshifted: the model
    /// shifts, as Transformers does.)
    pub labels: Vec<i64>,
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
                Ok(Encoded { ids, labels })
            }
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
                Ok(Encoded { ids, labels })
            }
        }
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
