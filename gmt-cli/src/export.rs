//! `gmt export`: a model as a Hugging Face directory that other tools load directly.

use std::path::Path;

use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use gmt_data::ChatTemplate;
use gmt_models::{ExportDtype, LlamaForCausalLm, save_hf_dir, write_atomic};
use serde_json::json;
use tokenizers::Tokenizer;

use crate::model_source::token_text;

/// The files [`export_model`] writes.
const MODEL_FILES: [&str; 4] = [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
];

/// Refuses a directory that already holds any of the files [`export_model`] would replace.
pub fn ensure_no_model(dir: &Path) -> Result<()> {
    let existing: Vec<&str> = MODEL_FILES
        .into_iter()
        .filter(|f| dir.join(f).exists())
        .collect();
    anyhow::ensure!(
        existing.is_empty(),
        "{} already holds a model ({}): pass --force to replace it, or choose another --output",
        dir.display(),
        existing.join(", ")
    );
    Ok(())
}

/// Writes [`MODEL_FILES`]: `config.json`, `model.safetensors`, `tokenizer.json` and
/// `tokenizer_config.json` (with the chat template and special tokens) into `dir`.
pub fn export_model<B: Backend>(
    model: &LlamaForCausalLm<B>,
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    dir: &Path,
    dtype: ExportDtype,
) -> Result<()> {
    save_hf_dir(model, dir, dtype)
        .with_context(|| format!("exporting the model to {}", dir.display()))?;
    let tokenizer_json = tokenizer
        .to_string(true)
        .map_err(|e| anyhow::anyhow!("cannot serialize the tokenizer: {e}"))?;
    write_atomic(&dir.join("tokenizer.json"), tokenizer_json.as_bytes())?;
    let config = model.config();
    let token = |id| token_text(tokenizer, id);
    let tokenizer_config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token(config.bos_token_id),
        "eos_token": token(config.eos_token_ids.first().copied()),
        "pad_token": token(config.pad_token_id),
        "chat_template": template.source(),
        "model_max_length": config.max_position_embeddings,
    });
    let text = serde_json::to_string_pretty(&tokenizer_config).expect("JSON serializes");
    write_atomic(&dir.join("tokenizer_config.json"), text.as_bytes())?;
    Ok(())
}
