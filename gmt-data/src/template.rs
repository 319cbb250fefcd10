//! Chat templates: Jinja with Hugging Face's conventions, rendered by `minijinja`.

use std::path::Path;

use minijinja::{Environment, Error, ErrorKind, Value, context};

use crate::{DataError, Message};

/// Templates for models that ship none, by name.
pub const BUILTIN_TEMPLATES: &[(&str, &str)] = &[
    (
        "chatml",
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
    ),
    (
        "llama-3",
        "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
    ),
    (
        "llama-2",
        "{% if messages[0]['role'] == 'system' %}{% set system = '<<SYS>>\n' + messages[0]['content'] + '\n<</SYS>>\n\n' %}{% set messages = messages[1:] %}{% else %}{% set system = '' %}{% endif %}{% for message in messages %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + (system if loop.first else '') + message['content'] | trim + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] | trim + ' ' + eos_token }}{% endif %}{% endfor %}",
    ),
    (
        "mistral",
        "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}",
    ),
    (
        "plain",
        "{% for message in messages %}{% if message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% else %}{{ message['content'] + '\n' }}{% endif %}{% endfor %}",
    ),
];

/// A compiled chat template plus the special tokens it may use.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish()
    }
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

impl ChatTemplate {
    /// Compiles `source`. `bos_token`/`eos_token` are what the template sees under those names.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, DataError> {
        let mut env = Environment::new();
        // Python string methods (`.strip()`, `.startswith()`, …) that HF templates use.
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| DataError::Template(format!("does not compile: {e:#}")))?;
        Ok(Self {
            env,
            source: source.to_string(),
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        })
    }

    /// A built-in template by name (see [`BUILTIN_TEMPLATES`]).
    pub fn builtin(name: &str, bos_token: &str, eos_token: &str) -> Result<Self, DataError> {
        let source = BUILTIN_TEMPLATES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| *s)
            .ok_or_else(|| {
                let names: Vec<&str> = BUILTIN_TEMPLATES.iter().map(|(n, _)| *n).collect();
                DataError::InvalidConfig {
                    key: "template",
                    reason: format!(
                        "unknown built-in template `{name}`; known: {}",
                        names.join(", ")
                    ),
                }
            })?;
        Self::new(source, bos_token, eos_token)
    }

    /// The template of a Hugging Face tokenizer directory: `chat_template.jinja` if present,
    /// else `chat_template` in `tokenizer_config.json`; with that file's `bos_token` and
    /// `eos_token`. `Ok(None)` when the directory defines no template.
    pub fn from_hf_dir(dir: &Path) -> Result<Option<Self>, DataError> {
        let config_path = dir.join("tokenizer_config.json");
        let config: serde_json::Value = match std::fs::read_to_string(&config_path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                DataError::Template(format!("{}: invalid JSON: {e}", config_path.display()))
            })?,
            Err(_) => serde_json::Value::Null,
        };
        let token = |key: &str| match config.get(key) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Object(o)) => o
                .get("content")
                .and_then(|c| c.as_str())
                .unwrap_or_default()
                .to_string(),
            _ => String::new(),
        };
        let jinja = dir.join("chat_template.jinja");
        let source = if jinja.exists() {
            Some(std::fs::read_to_string(&jinja).map_err(|e| DataError::io(&jinja, e))?)
        } else {
            match config.get("chat_template") {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                // A list of named templates: take `default`.
                Some(serde_json::Value::Array(items)) => items
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .and_then(|t| {
                        t.get("template")
                            .and_then(|s| s.as_str())
                            .map(str::to_string)
                    }),
                _ => None,
            }
        };
        source
            .map(|s| Self::new(&s, &token("bos_token"), &token("eos_token")))
            .transpose()
    }

    /// The Jinja source (e.g. to write into an exported `tokenizer_config.json`).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The text the template sees as `bos_token`.
    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }

    /// The text the template sees as `eos_token`.
    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends where the assistant's
    /// reply would begin.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, DataError> {
        let template = self.env.get_template("chat").expect("added in new");
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| DataError::Template(format!("{e:#}")))
    }
}
