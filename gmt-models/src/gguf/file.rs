//! The GGUF container.

use std::collections::BTreeMap;
use std::path::Path;

use super::GgmlType;
use crate::{HostTensor, ModelError};

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    /// Any unsigned integer type.
    Uint(u64),
    /// Any signed integer type.
    Int(i64),
    /// f32 or f64.
    Float(f64),
    /// bool.
    Bool(bool),
    /// UTF-8 string.
    String(String),
    /// Array of values.
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// As a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::Uint(v) => Some(v),
            Self::Int(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }

    /// As a float (integers convert).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::Float(v) => Some(v),
            Self::Uint(v) => Some(v as f64),
            Self::Int(v) => Some(v as f64),
            _ => None,
        }
    }

    /// As a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// As an array.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One entry of the tensor table.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufTensorInfo {
    /// llama.cpp's name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Shape, outermost first (GGUF stores it innermost first; this is reversed).
    pub shape: Vec<usize>,
    /// Element or block type.
    pub ggml_type: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
}

/// A parsed GGUF file, its bytes held in memory.
#[derive(Debug)]
pub struct GgufFile {
    source_name: String,
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata by key.
    pub metadata: BTreeMap<String, GgufValue>,
    /// Tensor table, in file order.
    pub tensors: Vec<GgufTensorInfo>,
    bytes: Vec<u8>,
    data_start: usize,
}

impl GgufFile {
    /// Reads and parses `path`.
    pub fn read(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
        Self::parse(bytes, &path.display().to_string())
    }

    /// Parses GGUF bytes; `source_name` names them in errors.
    pub fn parse(bytes: Vec<u8>, source_name: &str) -> Result<Self, ModelError> {
        let mut r = Reader {
            bytes: &bytes,
            pos: 0,
            source_name,
        };
        if r.take(4, "magic")? != b"GGUF" {
            return Err(r.error("not a GGUF file (magic bytes are not \"GGUF\")"));
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(r.error(&format!(
                "GGUF version {version} is not supported (2 and 3 are)"
            )));
        }
        let tensor_count = r.u64("tensor count")?;
        let kv_count = r.u64("metadata count")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..kv_count {
            let key = r.string("metadata key")?;
            let kind = r.u32("metadata type")?;
            let value = r.value(kind, &key, 0)?;
            metadata.insert(key, value);
        }
        let mut tensors = Vec::new();
        for _ in 0..tensor_count {
            let name = r.string("tensor name")?;
            let rank = r.u32("tensor rank")? as usize;
            if rank > 4 {
                return Err(r.error(&format!(
                    "tensor `{name}` has rank {rank}; GGUF allows at most 4"
                )));
            }
            let mut shape = Vec::with_capacity(rank);
            for _ in 0..rank {
                shape.push(r.u64("tensor dimension")? as usize);
            }
            shape.reverse();
            let kind = r.u32("tensor type")?;
            let ggml_type = GgmlType::from_id(kind)
                .ok_or_else(|| r.error(&format!("tensor `{name}` has unknown ggml type {kind}")))?;
            let offset = r.u64("tensor offset")?;
            tensors.push(GgufTensorInfo {
                name,
                shape,
                ggml_type,
                offset,
            });
        }
        let alignment = metadata
            .get("general.alignment")
            .and_then(GgufValue::as_u64)
            .unwrap_or(32) as usize;
        if alignment == 0 {
            return Err(r.error("general.alignment is 0"));
        }
        let data_start = r.pos.div_ceil(alignment) * alignment;
        let file = Self {
            source_name: source_name.to_string(),
            version,
            metadata,
            tensors,
            bytes,
            data_start,
        };
        for info in &file.tensors {
            file.tensor_bytes(info)?; // every tensor must lie inside the file
        }
        Ok(file)
    }

    /// Where the bytes came from.
    pub fn source_name(&self) -> &str {
        &self.source_name
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    /// The table entry of `name`.
    pub fn info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    fn tensor_bytes(&self, info: &GgufTensorInfo) -> Result<&[u8], ModelError> {
        let bad = |reason: String| ModelError::bad_weights(&self.source_name, reason);
        // Shapes and offsets come from the file: checked arithmetic, so that a damaged table
        // is an error rather than an overflow.
        let numel = info
            .shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or_else(|| {
                bad(format!(
                    "tensor `{}`: shape {:?} is too large",
                    info.name, info.shape
                ))
            })?;
        let size = info.ggml_type.byte_size(numel).ok_or_else(|| {
            bad(format!(
                "tensor `{}`: {numel} entries is not a whole number of {:?} blocks",
                info.name, info.ggml_type
            ))
        })?;
        let start = usize::try_from(info.offset)
            .ok()
            .and_then(|o| self.data_start.checked_add(o));
        let range = start.and_then(|s| Some(s..s.checked_add(size)?));
        range
            .and_then(|r| self.bytes.get(r))
            .ok_or_else(|| {
                bad(format!(
                    "tensor `{}` needs {size} bytes at offset {} past the data start, but the file has {} bytes (truncated?)",
                    info.name,
                    info.offset,
                    self.bytes.len()
                ))
            })
    }

    /// The tensor, dequantized to `f32`.
    pub fn tensor(&self, info: &GgufTensorInfo) -> Result<HostTensor, ModelError> {
        let data = super::dequantize(info.ggml_type, self.tensor_bytes(info)?);
        Ok(HostTensor {
            shape: info.shape.clone(),
            data,
        })
    }
}

/// A bounds-checked little-endian cursor.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    source_name: &'a str,
}

impl<'a> Reader<'a> {
    fn error(&self, reason: &str) -> ModelError {
        ModelError::bad_weights(self.source_name, format!("{reason} (at byte {})", self.pos))
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], ModelError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let out = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(out)
            }
            None => Err(self.error(&format!("file ends while reading {what} (truncated?)"))),
        }
    }

    fn u32(&mut self, what: &str) -> Result<u32, ModelError> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self, what: &str) -> Result<u64, ModelError> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }

    fn string(&mut self, what: &str) -> Result<String, ModelError> {
        let len = self.u64(what)? as usize;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| self.error(&format!("{what} is not valid UTF-8")))
    }

    fn value(&mut self, kind: u32, key: &str, depth: usize) -> Result<GgufValue, ModelError> {
        let what = format!("value of `{key}`");
        Ok(match kind {
            0 => GgufValue::Uint(self.take(1, &what)?[0] as u64),
            1 => GgufValue::Int(self.take(1, &what)?[0] as i8 as i64),
            2 => GgufValue::Uint(
                u16::from_le_bytes(self.take(2, &what)?.try_into().expect("2")) as u64,
            ),
            3 => GgufValue::Int(
                i16::from_le_bytes(self.take(2, &what)?.try_into().expect("2")) as i64,
            ),
            4 => GgufValue::Uint(self.u32(&what)? as u64),
            5 => GgufValue::Int(self.u32(&what)? as i32 as i64),
            6 => GgufValue::Float(f32::from_bits(self.u32(&what)?) as f64),
            7 => GgufValue::Bool(self.take(1, &what)?[0] != 0),
            8 => GgufValue::String(self.string(&what)?),
            9 => {
                if depth > 2 {
                    return Err(self.error(&format!("`{key}`: arrays nested too deeply")));
                }
                let item_kind = self.u32(&what)?;
                let len = self.u64(&what)? as usize;
                // Every item takes at least one byte: a length beyond the file is corrupt.
                if len > self.bytes.len() - self.pos {
                    return Err(
                        self.error(&format!("`{key}`: array length {len} exceeds the file"))
                    );
                }
                // Items may be far larger in memory than their minimum byte: grow as read.
                let mut items = Vec::with_capacity(len.min(1 << 16));
                for _ in 0..len {
                    items.push(self.value(item_kind, key, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::Uint(self.u64(&what)?),
            11 => GgufValue::Int(self.u64(&what)? as i64),
            12 => GgufValue::Float(f64::from_bits(self.u64(&what)?)),
            other => return Err(self.error(&format!("`{key}` has unknown metadata type {other}"))),
        })
    }
}
