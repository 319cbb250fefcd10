//! Hugging Face checkpoints: `config.json` + `model.safetensors` (or shards listed in
//! `model.safetensors.index.json`), in and out.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use safetensors::{Dtype, SafeTensors, View, tensor::TensorView};
use serde_json::Value;

use crate::{HostTensor, LlamaConfig, LlamaForCausalLm, ModelError, WeightMap};

/// Element type of exported weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportDtype {
    /// 32-bit floats, exact.
    #[default]
    F32,
    /// bfloat16, half the size (rounded to nearest even).
    Bf16,
}

/// Loads a Hugging Face model directory. f32, f16 and bf16 weights are converted to f32.
pub fn load_hf_dir<B: Backend>(
    dir: impl AsRef<Path>,
    device: &B::Device,
) -> Result<LlamaForCausalLm<B>, ModelError> {
    let dir = dir.as_ref();
    let config = LlamaConfig::from_hf_file(dir.join("config.json"))?;
    let tensors = read_hf_weights(dir)?;
    LlamaForCausalLm::from_weights(
        &config,
        WeightMap::new(dir.display().to_string(), tensors),
        device,
    )
}

/// Reads every tensor of a model directory, single file or sharded.
pub fn read_hf_weights(dir: &Path) -> Result<BTreeMap<String, HostTensor>, ModelError> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    if single.exists() {
        return read_safetensors(&single);
    }
    if !index.exists() {
        return Err(ModelError::bad_weights(
            dir,
            "no model.safetensors or model.safetensors.index.json in this directory",
        ));
    }
    let text = std::fs::read_to_string(&index).map_err(|e| ModelError::io(&index, e))?;
    let value: Value = serde_json::from_str(&text).map_err(|source| ModelError::Json {
        path: index.clone(),
        source,
    })?;
    let map = value
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| ModelError::bad_weights(&index, "missing object `weight_map`"))?;
    let mut shards = BTreeSet::new();
    for (name, file) in map {
        let file = file.as_str().ok_or_else(|| {
            ModelError::bad_weights(&index, format!("`weight_map.{name}` is not a file name"))
        })?;
        shards.insert(file.to_string());
    }
    let mut all = BTreeMap::new();
    for shard in shards {
        all.extend(read_safetensors(&dir.join(shard))?);
    }
    for name in map.keys() {
        if !all.contains_key(name) {
            return Err(ModelError::bad_weights(
                &index,
                format!("`{name}` is listed but not in its shard"),
            ));
        }
    }
    Ok(all)
}

/// Reads one `.safetensors` file into f32 host tensors.
pub fn read_safetensors(path: &Path) -> Result<BTreeMap<String, HostTensor>, ModelError> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| ModelError::bad_weights(path, format!("not a valid safetensors file: {e}")))?;
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let data = to_f32(&view).ok_or_else(|| {
                ModelError::bad_weights(
                    path,
                    format!(
                        "tensor `{name}` has dtype {:?}; supported: F32, F16, BF16",
                        view.dtype()
                    ),
                )
            })?;
            Ok((
                name,
                HostTensor {
                    shape: view.shape().to_vec(),
                    data,
                },
            ))
        })
        .collect()
}

fn to_f32(view: &TensorView) -> Option<Vec<f32>> {
    let bytes = view.data();
    Some(match view.dtype() {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => return None,
    })
}

/// Writes `model` as a Hugging Face directory: `config.json` and `model.safetensors` with
/// Hugging Face names and layouts. Each file is written to a temporary name and renamed, so
/// an interrupted export never leaves a truncated file under the real name.
pub fn save_hf_dir<B: Backend>(
    model: &LlamaForCausalLm<B>,
    dir: impl AsRef<Path>,
    dtype: ExportDtype,
) -> Result<(), ModelError> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let mut config = model.config().to_hf_value();
    config["torch_dtype"] = Value::from(match dtype {
        ExportDtype::F32 => "float32",
        ExportDtype::Bf16 => "bfloat16",
    });
    let text = serde_json::to_string_pretty(&config).expect("JSON values serialize");
    write_atomic(&dir.join("config.json"), text.as_bytes())?;
    write_safetensors(&dir.join("model.safetensors"), &model.hf_weights(), dtype)
}

/// Writes named host tensors as one safetensors file (atomically). Each tensor is encoded
/// as the file is written, so no copy of all the weights is made besides `tensors`.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, HostTensor)],
    dtype: ExportDtype,
) -> Result<(), ModelError> {
    let views = tensors
        .iter()
        .map(|(name, tensor)| (name.as_str(), Encoded { tensor, dtype }));
    let metadata = Some(std::collections::HashMap::from([(
        "format".to_string(),
        "pt".to_string(),
    )]));
    let tmp = temporary_path(path);
    safetensors::serialize_to_file(views, metadata, &tmp).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        match e {
            safetensors::SafeTensorError::IoError(e) => ModelError::io(&tmp, e),
            e => ModelError::bad_weights(path, format!("cannot serialize: {e}")),
        }
    })?;
    std::fs::rename(&tmp, path).map_err(|e| ModelError::io(path, e))
}

/// One tensor of an export, encoded in the export's element type when it is written.
struct Encoded<'a> {
    tensor: &'a HostTensor,
    dtype: ExportDtype,
}

impl View for Encoded<'_> {
    fn dtype(&self) -> Dtype {
        match self.dtype {
            ExportDtype::F32 => Dtype::F32,
            ExportDtype::Bf16 => Dtype::BF16,
        }
    }

    fn shape(&self) -> &[usize] {
        &self.tensor.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        let values = self.tensor.data.iter();
        Cow::Owned(match self.dtype {
            ExportDtype::F32 => values.flat_map(|v| v.to_le_bytes()).collect(),
            ExportDtype::Bf16 => values
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
        })
    }

    fn data_len(&self) -> usize {
        let bytes = match self.dtype {
            ExportDtype::F32 => 4,
            ExportDtype::Bf16 => 2,
        };
        self.tensor.data.len() * bytes
    }
}

/// Where a file is written before it is renamed into place: beside it, `.tmp` added.
fn temporary_path(path: &Path) -> PathBuf {
    path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ))
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    let tmp = temporary_path(path);
    std::fs::write(&tmp, bytes).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        ModelError::io(&tmp, e)
    })?;
    std::fs::rename(&tmp, path).map_err(|e| ModelError::io(path, e))
}
