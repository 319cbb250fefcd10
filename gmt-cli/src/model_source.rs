//! Opening what `--model` names: a Hugging Face directory, a GGUF file or a `gmt` checkpoint,
//! with the tokenizer and chat template that go with it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::backend::Backend;
use gmt_data::ChatTemplate;
use gmt_models::gguf::{GgufFile, gguf_chat_template, gguf_config, gguf_tokenizer, gguf_weights};
use gmt_models::{LlamaConfig, LlamaForCausalLm, load_hf_dir};
use tokenizers::Tokenizer;

use crate::checkpoint;

/// A model with its tokenizer and chat template.
pub struct LoadedModel<B: Backend> {
    /// The network.
    pub model: LlamaForCausalLm<B>,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// Its chat template (or the fallback, see [`load_model`]).
    pub template: ChatTemplate,
}

/// Where the tokenizer and template come from when not the model's own.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// A `tokenizer.json`, or a directory holding one.
    pub tokenizer: Option<PathBuf>,
    /// A built-in template name or a `.jinja` file.
    pub chat_template: Option<String>,
}

/// Loads `path`: a `.gguf` file, a Hugging Face directory (`config.json`, `*.safetensors`,
/// `tokenizer.json`), or a checkpoint directory written by `gmt train` (whose weights are
/// loaded into the base model it names).
pub fn load_model<B: Backend>(
    path: &Path,
    overrides: &Overrides,
    device: &B::Device,
) -> Result<LoadedModel<B>> {
    if !path.exists() {
        bail!("model {} does not exist", path.display());
    }
    if checkpoint::is_run_checkpoint(path) {
        let checkpoint = checkpoint::open(path)?;
        let settings = checkpoint::settings(&checkpoint)?;
        let base = settings
            .model
            .path
            .clone()
            .context("the checkpoint's config.toml names no base model")?;
        let mut merged = Overrides {
            tokenizer: settings.model.tokenizer.clone(),
            chat_template: settings.model.chat_template.clone(),
        };
        merged.tokenizer = overrides.tokenizer.clone().or(merged.tokenizer);
        merged.chat_template = overrides.chat_template.clone().or(merged.chat_template);
        let mut loaded = load_model::<B>(&base, &merged, device)
            .with_context(|| format!("loading the base model of checkpoint {}", path.display()))?;
        let weights = checkpoint.record(gmt_train::checkpoint::MODEL_FILE, device)?;
        loaded.model = loaded.model.load_record(weights);
        return Ok(loaded);
    }
    let (model, tokenizer, own_template) = if path.is_dir() {
        let model = load_hf_dir::<B>(path, device)
            .with_context(|| format!("loading Hugging Face model {}", path.display()))?;
        let tokenizer_file = path.join("tokenizer.json");
        let tokenizer = match &overrides.tokenizer {
            Some(_) => None,
            None => Some(read_tokenizer(&tokenizer_file)?),
        };
        let template = ChatTemplate::from_hf_dir(path)
            .with_context(|| format!("reading the chat template of {}", path.display()))?;
        (model, tokenizer, template)
    } else {
        let file = GgufFile::read(path)?;
        let config = gguf_config(&file)?;
        let model = LlamaForCausalLm::from_weights(&config, gguf_weights(&file, &config)?, device)?;
        let tokenizer = gguf_tokenizer(&file)?;
        let template = gguf_chat_template(&file)
            .map(|source| {
                let (bos, eos) = template_tokens(&tokenizer, &config);
                ChatTemplate::new(&source, &bos, &eos)
            })
            .transpose()
            .with_context(|| format!("compiling the chat template of {}", path.display()))?;
        (model, Some(tokenizer), template)
    };
    let tokenizer = match (&overrides.tokenizer, tokenizer) {
        (Some(path), _) => read_tokenizer(path)?,
        (None, Some(t)) => t,
        (None, None) => unreachable!("a tokenizer is read unless overridden"),
    };
    let template = match &overrides.chat_template {
        Some(name) => named_template(name, &tokenizer, model.config())?,
        None => match own_template {
            Some(t) => t,
            None => {
                tracing::warn!(
                    "{} defines no chat template; using the built-in `chatml` (set --chat-template to choose)",
                    path.display()
                );
                named_template("chatml", &tokenizer, model.config())?
            }
        },
    };
    let vocab = tokenizer.get_vocab_size(true);
    if vocab > model.config().vocab_size {
        bail!(
            "the tokenizer has {vocab} tokens but the model's vocabulary is {}: they do not belong together",
            model.config().vocab_size
        );
    }
    Ok(LoadedModel {
        model,
        tokenizer,
        template,
    })
}

/// The shape of the model `path` names, without loading its weights: a Hugging Face
/// directory or its `config.json`, a `.gguf` file, or a checkpoint written by `gmt train`
/// (its base model's).
pub fn model_config(path: &Path) -> Result<LlamaConfig> {
    if !path.exists() {
        bail!("model {} does not exist", path.display());
    }
    if checkpoint::is_run_checkpoint(path) {
        let settings = checkpoint::settings(&checkpoint::open(path)?)?;
        let base = settings
            .model
            .path
            .context("the checkpoint's config.toml names no base model")?;
        return model_config(&base)
            .with_context(|| format!("the base model of checkpoint {}", path.display()));
    }
    if path.is_dir() {
        return Ok(LlamaConfig::from_hf_file(path.join("config.json"))?);
    }
    if path.extension().is_some_and(|e| e == "json") {
        return Ok(LlamaConfig::from_hf_file(path)?);
    }
    // The whole file is read: gmt-models parses GGUF from memory.
    Ok(gguf_config(&GgufFile::read(path)?)?)
}

/// A `tokenizer.json`, or the one inside a directory.
pub fn read_tokenizer(path: &Path) -> Result<Tokenizer> {
    let file = if path.is_dir() {
        path.join("tokenizer.json")
    } else {
        path.to_path_buf()
    };
    Tokenizer::from_file(&file)
        .map_err(|e| anyhow::anyhow!("cannot read tokenizer {}: {e}", file.display()))
}

/// The text of token `id`, if the model names one and the tokenizer has it.
pub fn token_text(tokenizer: &Tokenizer, id: Option<u32>) -> Option<String> {
    id.and_then(|id| tokenizer.id_to_token(id))
}

/// The `bos_token` and `eos_token` a chat template is rendered with (empty where the model
/// has none, as Transformers passes them).
fn template_tokens(tokenizer: &Tokenizer, config: &LlamaConfig) -> (String, String) {
    (
        token_text(tokenizer, config.bos_token_id).unwrap_or_default(),
        token_text(tokenizer, config.eos_token_ids.first().copied()).unwrap_or_default(),
    )
}

/// A built-in template by name, or a `.jinja` file.
fn named_template(name: &str, tokenizer: &Tokenizer, config: &LlamaConfig) -> Result<ChatTemplate> {
    let (bos, eos) = template_tokens(tokenizer, config);
    let path = Path::new(name);
    if path.extension().is_some_and(|e| e == "jinja") || path.is_file() {
        let source = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read chat template {}", path.display()))?;
        return ChatTemplate::new(&source, &bos, &eos)
            .with_context(|| format!("in chat template {}", path.display()));
    }
    Ok(ChatTemplate::builtin(name, &bos, &eos)?)
}
