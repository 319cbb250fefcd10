//! Record formats: how a JSON record becomes a conversation or a plain text.

use serde_json::Value;

use crate::DataError;
use crate::preference::{PreferencePair, parse_hh, parse_preference};

/// One turn of a conversation. Roles are `system`, `user` or `assistant`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl Message {
    /// A message.
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// What a record holds once interpreted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Example {
    /// Rendered with the chat template; loss on assistant turns by default.
    Chat(Vec<Message>),
    /// Plain language-model text; loss on every token.
    Text(String),
    /// A preference pair (for DPO): loss on the responses only.
    Preference(PreferencePair),
}

/// Maps fields of any record shape to a user turn and an assistant turn, e.g. GSM8K's
/// `question` → user, `answer` → assistant.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FieldMapping {
    /// Field holding the system prompt, if any.
    pub system: Option<String>,
    /// Field holding the user turn.
    pub user: String,
    /// Field holding the assistant turn.
    pub assistant: String,
}

/// The record shapes gmt reads.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordFormat {
    /// `instruction`, optional `input`, `output` (optional `system`).
    Alpaca,
    /// `messages`: a list of `{role, content}`.
    Messages,
    /// `conversations`: a list of `{from, value}` (`human`/`gpt`/`system`).
    Sharegpt,
    /// `prompt`, `completion`.
    PromptCompletion,
    /// `text`: plain language-model text.
    Text,
    /// Any other shape, through a field mapping.
    Fields(FieldMapping),
    /// Preference pairs: `prompt`, `chosen`, `rejected` (TRL's string and conversational
    /// layouts, UltraFeedback's). See [`PreferencePair`].
    Preference,
    /// Preference pairs as Anthropic-HH publishes them: `chosen` and `rejected` whole
    /// conversations that differ in their last assistant turn.
    Hh,
}

/// A problem with one field of a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The field (with a path into lists, e.g. `messages[2].role`).
    pub field: Option<String>,
    /// What is wrong.
    pub reason: String,
}

pub(crate) fn field_error(field: &str, reason: impl Into<String>) -> FieldError {
    FieldError {
        field: Some(field.into()),
        reason: reason.into(),
    }
}

fn string<'a>(record: &'a Value, field: &str) -> Result<&'a str, FieldError> {
    match record.get(field) {
        None | Some(Value::Null) => Err(field_error(field, "missing")),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(field_error(
            field,
            format!("expected a string, found {}", kind(other)),
        )),
    }
}

fn optional_string<'a>(record: &'a Value, field: &str) -> Result<Option<&'a str>, FieldError> {
    match record.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => string(record, field).map(Some),
    }
}

pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

impl std::str::FromStr for RecordFormat {
    type Err = DataError;

    /// A format by its [`name`](RecordFormat::name). `fields` needs the field names, so it
    /// is built as `RecordFormat::Fields(FieldMapping { … })` instead.
    fn from_str(name: &str) -> Result<Self, DataError> {
        let format = match name {
            "alpaca" => Self::Alpaca,
            "messages" => Self::Messages,
            "sharegpt" => Self::Sharegpt,
            "prompt_completion" => Self::PromptCompletion,
            "text" => Self::Text,
            "preference" => Self::Preference,
            "hh" => Self::Hh,
            "fields" => {
                return Err(DataError::InvalidConfig {
                    key: "format",
                    reason: "format `fields` needs a user field and an assistant field".into(),
                });
            }
            other => {
                return Err(DataError::InvalidConfig {
                    key: "format",
                    reason: format!(
                        "unknown data format `{other}`: expected alpaca, messages, sharegpt, prompt_completion, text, fields, preference or hh"
                    ),
                });
            }
        };
        Ok(format)
    }
}

impl RecordFormat {
    /// A short name for messages (`alpaca`, `messages`, …); [`str::parse`] reads it back
    /// (all but `fields`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Alpaca => "alpaca",
            Self::Messages => "messages",
            Self::Sharegpt => "sharegpt",
            Self::PromptCompletion => "prompt_completion",
            Self::Text => "text",
            Self::Fields(_) => "fields",
            Self::Preference => "preference",
            Self::Hh => "hh",
        }
    }

    /// Whether records of this format are preference pairs (for DPO) rather than examples
    /// to imitate.
    pub fn is_preference(&self) -> bool {
        matches!(self, Self::Preference | Self::Hh)
    }

    /// Guesses the format from a record's keys. Besides the named formats, two common
    /// question/answer shapes map to fields: `question`/`answer` (GSM8K) and
    /// `query`/`response` (MetaMathQA).
    pub fn detect(record: &Value) -> Option<Self> {
        let has = |k: &str| record.get(k).is_some();
        let fields = |user: &str, assistant: &str| {
            Self::Fields(FieldMapping {
                system: None,
                user: user.into(),
                assistant: assistant.into(),
            })
        };
        Some(if has("chosen") && has("rejected") {
            if has("prompt") {
                Self::Preference
            } else {
                Self::Hh
            }
        } else if has("messages") {
            Self::Messages
        } else if has("conversations") {
            Self::Sharegpt
        } else if has("instruction") && has("output") {
            Self::Alpaca
        } else if has("prompt") && has("completion") {
            Self::PromptCompletion
        } else if has("text") {
            Self::Text
        } else if has("question") && has("answer") {
            fields("question", "answer")
        } else if has("query") && has("response") {
            fields("query", "response")
        } else {
            return None;
        })
    }

    /// Interprets one record.
    pub fn parse(&self, record: &Value) -> Result<Example, FieldError> {
        if !record.is_object() {
            return Err(FieldError {
                field: None,
                reason: format!("a record must be a JSON object, found {}", kind(record)),
            });
        }
        let chat = |system: Option<&str>, user: &str, assistant: &str| {
            let mut messages = Vec::new();
            if let Some(system) = system.filter(|s| !s.is_empty()) {
                messages.push(Message::new("system", system));
            }
            messages.push(Message::new("user", user));
            messages.push(Message::new("assistant", assistant));
            Example::Chat(messages)
        };
        match self {
            Self::Alpaca => {
                let instruction = string(record, "instruction")?;
                let user = match optional_string(record, "input")? {
                    Some(input) if !input.is_empty() => format!("{instruction}\n\n{input}"),
                    _ => instruction.to_string(),
                };
                Ok(chat(
                    optional_string(record, "system")?,
                    &user,
                    string(record, "output")?,
                ))
            }
            Self::PromptCompletion => Ok(chat(
                None,
                string(record, "prompt")?,
                string(record, "completion")?,
            )),
            Self::Text => Ok(Example::Text(string(record, "text")?.to_string())),
            Self::Fields(map) => {
                let system = match &map.system {
                    Some(field) => optional_string(record, field)?,
                    None => None,
                };
                Ok(chat(
                    system,
                    string(record, &map.user)?,
                    string(record, &map.assistant)?,
                ))
            }
            Self::Messages => {
                chat_turns(messages(record, "messages", "role", "content")?, "messages")
            }
            Self::Sharegpt => {
                let turns = message_list(
                    record,
                    "conversations",
                    "from",
                    "value",
                    |from| match from {
                        "system" => Some("system"),
                        "human" | "user" => Some("user"),
                        "gpt" | "assistant" => Some("assistant"),
                        _ => None,
                    },
                )?;
                chat_turns(turns, "conversations")
            }
            Self::Preference => parse_preference(record),
            Self::Hh => parse_hh(record),
        }
    }
}

/// A conversation to train on: at least one assistant turn.
fn chat_turns(messages: Vec<Message>, list: &str) -> Result<Example, FieldError> {
    if !messages.iter().any(|m| m.role == "assistant") {
        return Err(field_error(list, "no assistant turn to train on"));
    }
    Ok(Example::Chat(messages))
}

/// The non-empty list `list` of `{role, content}` messages (roles system, user, assistant).
pub(crate) fn messages(
    record: &Value,
    list: &str,
    role_key: &str,
    content_key: &str,
) -> Result<Vec<Message>, FieldError> {
    message_list(record, list, role_key, content_key, |role| match role {
        "system" => Some("system"),
        "user" => Some("user"),
        "assistant" => Some("assistant"),
        _ => None,
    })
}

/// The non-empty list `list` of messages, with roles mapped by `role_of`.
fn message_list(
    record: &Value,
    list: &str,
    role_key: &str,
    content_key: &str,
    role_of: impl Fn(&str) -> Option<&'static str>,
) -> Result<Vec<Message>, FieldError> {
    let items = match record.get(list) {
        None | Some(Value::Null) => return Err(field_error(list, "missing")),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(field_error(
                list,
                format!("expected a list, found {}", kind(other)),
            ));
        }
    };
    if items.is_empty() {
        return Err(field_error(list, "empty conversation"));
    }
    let mut messages = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = |key: &str| format!("{list}[{i}].{key}");
        let role = match item.get(role_key) {
            Some(Value::String(r)) => r.as_str(),
            Some(other) => {
                return Err(field_error(
                    &at(role_key),
                    format!("expected a string, found {}", kind(other)),
                ));
            }
            None => return Err(field_error(&at(role_key), "missing")),
        };
        let role = role_of(role)
            .ok_or_else(|| field_error(&at(role_key), format!("unknown role \"{role}\"")))?;
        let content = match item.get(content_key) {
            Some(Value::String(c)) => c.clone(),
            Some(other) => {
                return Err(field_error(
                    &at(content_key),
                    format!("expected a string, found {}", kind(other)),
                ));
            }
            None => return Err(field_error(&at(content_key), "missing")),
        };
        messages.push(Message::new(role, content));
    }
    Ok(messages)
}
