//! Export round trips and bad-file errors for Hugging Face checkpoints.

use std::path::Path;

use crate::hf_fixture;
use burn::backend::NdArray;
use gmt_models::{
    ExportDtype, LlamaConfig, LlamaForCausalLm, ModelError, TokenBatch, load_hf_dir, save_hf_dir,
};

fn temp_dir(tag: &str) -> gmt_tests::TempDir {
    gmt_tests::TempDir::new(&format!("models-{tag}"))
}

fn logits(model: &LlamaForCausalLm<NdArray>) -> Vec<f32> {
    let batch = TokenBatch::new((0..24).map(|i| (i * 5 % 96) as u32).collect(), 2, 12);
    model
        .forward(&batch)
        .unwrap()
        .logits
        .into_data()
        .to_vec()
        .unwrap()
}

fn load(dir: &Path) -> Result<LlamaForCausalLm<NdArray>, ModelError> {
    load_hf_dir(dir, &Default::default())
}

#[test]
fn exported_dirs_load_back_with_identical_logits() {
    for name in ["llama-tiny", "llama3-tiny", "mistral-tiny"] {
        let original = load(&hf_fixture(name)).unwrap();
        let out = temp_dir(name);
        save_hf_dir(&original, &out, ExportDtype::F32).unwrap();
        let reloaded = load(&out).unwrap();
        assert_eq!(
            reloaded.config(),
            original.config(),
            "{name}: config survives"
        );
        assert_eq!(
            logits(&reloaded),
            logits(&original),
            "{name}: f32 export is exact"
        );
        // Same tensor names as Transformers wrote (tied models without lm_head).
        let names = |dir: &Path| {
            let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
            let mut n: Vec<String> = safetensors::SafeTensors::deserialize(&bytes)
                .unwrap()
                .names()
                .into_iter()
                .map(String::from)
                .collect();
            n.sort();
            n
        };
        assert_eq!(names(&out), names(&hf_fixture(name)), "{name}: HF names");

        save_hf_dir(&original, &out, ExportDtype::Bf16).unwrap();
        let bf16 = logits(&load(&out).unwrap());
        let worst = bf16
            .iter()
            .zip(logits(&original))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 0.05, "{name}: bf16 export close ({worst})");
        std::fs::remove_dir_all(&out).ok();
    }
}

fn copy_fixture(name: &str, tag: &str) -> gmt_tests::TempDir {
    let dir = temp_dir(tag);
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(hf_fixture(name).join(file), dir.join(file)).unwrap();
    }
    dir
}

#[test]
fn truncated_safetensors_is_a_clear_error() {
    let dir = copy_fixture("llama-tiny", "truncated");
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = load(&dir).unwrap_err().to_string();
    assert!(
        err.contains("model.safetensors") && err.contains("not a valid safetensors file"),
        "{err}"
    );
}

#[test]
fn config_errors_name_the_key() {
    let dir = copy_fixture("llama-tiny", "config");
    let path = dir.join("config.json");
    let original: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();

    let mut missing = original.clone();
    missing.as_object_mut().unwrap().remove("hidden_size");
    std::fs::write(&path, missing.to_string()).unwrap();
    let err = load(&dir).unwrap_err().to_string();
    assert!(
        err.ends_with("config.json: missing required key `hidden_size`"),
        "{err}"
    );

    let mut rope = original.clone();
    rope["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0});
    std::fs::write(&path, rope.to_string()).unwrap();
    let err = load(&dir).unwrap_err().to_string();
    assert!(err.contains("`rope_scaling.rope_type` = \"yarn\""), "{err}");

    let mut arch = original.clone();
    arch["model_type"] = serde_json::json!("gpt2");
    std::fs::write(&path, arch.to_string()).unwrap();
    let err = load(&dir).unwrap_err().to_string();
    assert!(err.contains("unsupported `model_type` = \"gpt2\""), "{err}");

    let mut typed = original;
    typed["num_attention_heads"] = serde_json::json!("four");
    std::fs::write(&path, typed.to_string()).unwrap();
    let err = load(&dir).unwrap_err().to_string();
    assert!(
        err.contains("`num_attention_heads` has invalid value \"four\""),
        "{err}"
    );

    std::fs::write(&path, "{\"model_type\": \"llama\",").unwrap();
    let err = load(&dir).unwrap_err().to_string();
    assert!(
        err.contains("invalid JSON") && err.contains("line 1"),
        "{err}"
    );
}

#[test]
fn mismatched_weights_list_every_problem_by_hf_name() {
    let dir = copy_fixture("llama-tiny", "shape");
    // The same weights under a config that expects a wider MLP and a tied head.
    let path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["intermediate_size"] = serde_json::json!(48);
    config["tie_word_embeddings"] = serde_json::json!(true);
    std::fs::write(&path, config.to_string()).unwrap();
    let err = load(&dir).unwrap_err().to_string();
    assert!(err.contains("wrong shape (6)"), "{err}");
    assert!(
        err.contains("model.layers.0.mlp.up_proj.weight: shape [64, 32], expected [48, 32]"),
        "{err}"
    );
    assert!(err.contains("unexpected (1): lm_head.weight"), "{err}");

    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let err = load(&dir).unwrap_err().to_string();
    assert!(err.contains("no model.safetensors"), "{err}");
}

#[test]
fn both_rope_key_styles_are_read() {
    let legacy = LlamaConfig::from_hf_file(hf_fixture("llama3-tiny").join("config.json")).unwrap();
    assert_eq!(legacy.rope_theta, 500000.0);
    assert_eq!(legacy.rope_scaling.as_ref().unwrap().factor, 8.0);
    let newer = LlamaConfig::from_hf_file(hf_fixture("mistral-tiny").join("config.json")).unwrap();
    assert_eq!((newer.rope_theta, newer.sliding_window), (10000.0, Some(5)));
    // Round trip through our own config.json.
    let again = LlamaConfig::from_hf_value(&legacy.to_hf_value(), "again").unwrap();
    assert_eq!(again, legacy);
}
