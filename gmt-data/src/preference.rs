//! Preference records: a prompt with a chosen and a rejected response, in the layouts that
//! preference datasets are published in.
//!
//! - `preference` — TRL's layouts: `prompt`, `chosen`, `rejected` as strings, or in the
//!   conversational form (`prompt` a list of messages ending with a user turn, `chosen` and
//!   `rejected` lists of assistant messages). UltraFeedback's published layout is read by the
//!   same format: `prompt` a string and `chosen` / `rejected` whole conversations whose first
//!   turns are the prompt, which is taken off them (and must agree with `prompt`).
//! - `hh` — Anthropic-HH: only `chosen` and `rejected`, two whole conversations that share
//!   everything up to the last assistant turn, as `"\n\nHuman: …\n\nAssistant: …"` text or as
//!   lists of messages. Each is split at its last assistant turn, and the two prefixes must
//!   agree.
//!
//! A pair whose responses are identical, or one of whose responses is empty, is a bad record.

use serde_json::Value;

use crate::format::{FieldError, field_error, kind, messages};
use crate::{Example, Message};

/// A prompt and two responses to it, the first preferred.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreferencePair {
    /// The conversation so far, ending with a user turn.
    pub prompt: Vec<Message>,
    /// The preferred response (assistant turns).
    pub chosen: Vec<Message>,
    /// The other response.
    pub rejected: Vec<Message>,
}

/// Reads a `preference` record (TRL or UltraFeedback layout).
pub(crate) fn parse_preference(record: &Value) -> Result<Example, FieldError> {
    let prompt = match record.get("prompt") {
        Some(Value::String(s)) => vec![Message::new("user", s.as_str())],
        Some(Value::Array(_)) => {
            let prompt = messages(record, "prompt", "role", "content")?;
            if prompt.last().is_none_or(|m| m.role != "user") {
                return Err(field_error("prompt", "a prompt must end with a user turn"));
            }
            prompt
        }
        None | Some(Value::Null) => return Err(field_error("prompt", "missing")),
        Some(other) => {
            return Err(field_error(
                "prompt",
                format!(
                    "expected a string or a list of messages, found {}",
                    kind(other)
                ),
            ));
        }
    };
    let response = |field: &str| -> Result<Vec<Message>, FieldError> {
        let turns = match record.get(field) {
            Some(Value::String(s)) => vec![Message::new("assistant", s.as_str())],
            Some(Value::Array(_)) => {
                let turns = messages(record, field, "role", "content")?;
                strip_prompt(field, turns, &prompt)?
            }
            None | Some(Value::Null) => return Err(field_error(field, "missing")),
            Some(other) => {
                return Err(field_error(
                    field,
                    format!(
                        "expected a string or a list of messages, found {}",
                        kind(other)
                    ),
                ));
            }
        };
        check_response(field, &turns)?;
        Ok(turns)
    };
    pair(prompt.clone(), response("chosen")?, response("rejected")?)
}

/// UltraFeedback's responses begin with the prompt's turns; TRL's do not.
fn strip_prompt(
    field: &str,
    turns: Vec<Message>,
    prompt: &[Message],
) -> Result<Vec<Message>, FieldError> {
    if turns.first().is_none_or(|m| m.role == "assistant") {
        return Ok(turns);
    }
    if turns.len() <= prompt.len() || turns[..prompt.len()] != *prompt {
        return Err(field_error(
            field,
            "the conversation does not begin with the record's prompt",
        ));
    }
    Ok(turns[prompt.len()..].to_vec())
}

/// A response is at least one assistant turn, the first non-empty.
fn check_response(field: &str, turns: &[Message]) -> Result<(), FieldError> {
    match turns.first() {
        None => Err(field_error(field, "empty response")),
        Some(m) if m.role != "assistant" => Err(field_error(
            &format!("{field}[0].role"),
            format!(
                "a response begins with an assistant turn, not \"{}\"",
                m.role
            ),
        )),
        Some(m) if m.content.trim().is_empty() => Err(field_error(field, "empty response")),
        Some(_) => Ok(()),
    }
}

fn pair(
    prompt: Vec<Message>,
    chosen: Vec<Message>,
    rejected: Vec<Message>,
) -> Result<Example, FieldError> {
    if chosen == rejected {
        return Err(field_error(
            "rejected",
            "identical to chosen: the pair expresses no preference",
        ));
    }
    Ok(Example::Preference(PreferencePair {
        prompt,
        chosen,
        rejected,
    }))
}

/// Reads an `hh` record: two whole conversations split at their last assistant turns.
pub(crate) fn parse_hh(record: &Value) -> Result<Example, FieldError> {
    let conversation = |field: &str| -> Result<Vec<Message>, FieldError> {
        match record.get(field) {
            Some(Value::String(text)) => hh_turns(field, text),
            Some(Value::Array(_)) => messages(record, field, "role", "content"),
            None | Some(Value::Null) => Err(field_error(field, "missing")),
            Some(other) => Err(field_error(
                field,
                format!(
                    "expected a conversation (text or messages), found {}",
                    kind(other)
                ),
            )),
        }
    };
    let split = |field: &str| -> Result<(Vec<Message>, Vec<Message>), FieldError> {
        let mut turns = conversation(field)?;
        let last = turns
            .iter()
            .rposition(|m| m.role == "assistant")
            .ok_or_else(|| field_error(field, "no assistant turn"))?;
        let response = turns.split_off(last);
        if turns.last().is_none_or(|m| m.role != "user") {
            return Err(field_error(
                field,
                "the last assistant turn does not answer a user turn",
            ));
        }
        check_response(field, &response)?;
        Ok((turns, response))
    };
    let (prompt, chosen) = split("chosen")?;
    let (other, rejected) = split("rejected")?;
    if prompt != other {
        let turn = prompt
            .iter()
            .zip(&other)
            .position(|(a, b)| a != b)
            .unwrap_or(prompt.len().min(other.len()));
        return Err(field_error(
            "rejected",
            format!("chosen and rejected do not share their prompt: they differ at turn {turn}"),
        ));
    }
    pair(prompt, chosen, rejected)
}

/// Anthropic-HH text: `"\n\nHuman: …\n\nAssistant: …"` turns.
fn hh_turns(field: &str, text: &str) -> Result<Vec<Message>, FieldError> {
    const MARKERS: [(&str, &str); 2] = [("\n\nHuman:", "user"), ("\n\nAssistant:", "assistant")];
    let mut turns: Vec<Message> = Vec::new();
    let mut rest = text;
    let next_marker = |s: &str| {
        MARKERS
            .iter()
            .filter_map(|&(marker, role)| s.find(marker).map(|at| (at, marker, role)))
            .min_by_key(|(at, ..)| *at)
    };
    match next_marker(rest) {
        Some((at, ..)) if rest[..at].trim().is_empty() => rest = &rest[at..],
        _ => {
            return Err(field_error(
                field,
                "expected Anthropic-HH text starting with \"\\n\\nHuman:\"",
            ));
        }
    }
    while let Some((at, marker, role)) = next_marker(rest) {
        debug_assert_eq!(at, 0);
        let body = &rest[marker.len()..];
        let end = next_marker(body).map_or(body.len(), |(at, ..)| at);
        turns.push(Message::new(role, body[..end].trim()));
        rest = &body[end..];
    }
    Ok(turns)
}
