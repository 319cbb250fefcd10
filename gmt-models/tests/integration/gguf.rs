//! GGUF files written by the test itself: exact dequantization of known blocks, a tiny Llama
//! converted the way llama.cpp converts it (Q/K rows permuted) loading to the same logits as
//! its Hugging Face original, and truncated files failing clearly.

use crate::hf_fixture;
use burn::backend::NdArray;
use gmt_models::gguf::{GgmlType, GgufFile, load_gguf};
use gmt_models::{LlamaForCausalLm, TokenBatch, load_hf_dir, read_hf_weights};
use half::{bf16, f16};

/// A minimal GGUF v3 writer.
#[derive(Default)]
struct Writer {
    kv: Vec<u8>,
    kv_count: u64,
    tensors: Vec<(String, Vec<usize>, GgmlType, Vec<u8>)>,
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

impl Writer {
    fn key(&mut self, key: &str, kind: u32) {
        string(&mut self.kv, key);
        self.kv.extend(kind.to_le_bytes());
        self.kv_count += 1;
    }
    fn u32(&mut self, key: &str, v: u32) {
        self.key(key, 4);
        self.kv.extend(v.to_le_bytes());
    }
    fn f32(&mut self, key: &str, v: f32) {
        self.key(key, 6);
        self.kv.extend(v.to_le_bytes());
    }
    fn str(&mut self, key: &str, v: &str) {
        self.key(key, 8);
        string(&mut self.kv, v);
    }
    /// `shape` outermost first, as Hugging Face writes it.
    fn tensor(&mut self, name: &str, shape: &[usize], kind: GgmlType, data: Vec<u8>) {
        self.tensors.push((name.into(), shape.to_vec(), kind, data));
    }
    fn bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend(self.kv_count.to_le_bytes());
        out.extend(&self.kv);
        let mut offset = 0u64;
        for (name, shape, kind, data) in &self.tensors {
            string(&mut out, name);
            out.extend((shape.len() as u32).to_le_bytes());
            for d in shape.iter().rev() {
                out.extend((*d as u64).to_le_bytes());
            }
            out.extend(kind.id().to_le_bytes());
            out.extend(offset.to_le_bytes());
            offset += (data.len() as u64).div_ceil(32) * 32;
        }
        out.resize(out.len().div_ceil(32) * 32, 0);
        for (_, _, _, data) in &self.tensors {
            out.extend(data);
            out.resize(out.len().div_ceil(32) * 32, 0);
        }
        out
    }
}

fn f16_bytes(v: f32) -> [u8; 2] {
    f16::from_f32(v).to_le_bytes()
}

fn tensor(file: &GgufFile, name: &str) -> Vec<f32> {
    file.tensor(file.info(name).unwrap()).unwrap().data
}

#[test]
fn known_blocks_dequantize_exactly() {
    let mut w = Writer::default();
    // Q8_0: d = 0.5, q = -16..16.
    let mut q8 = f16_bytes(0.5).to_vec();
    q8.extend((-16i8..16).map(|q| q as u8));
    w.tensor("q8", &[32], GgmlType::Q8_0, q8);
    // Q4_0: d = 0.25; byte i holds entry i (low nibble) and entry i + 16 (high nibble).
    let mut q4 = f16_bytes(0.25).to_vec();
    q4.extend((0u8..16).map(|i| i | ((15 - i) << 4)));
    w.tensor("q4_0", &[32], GgmlType::Q4_0, q4);
    // Q4_1: d = 0.5, m = -1.
    let mut q41 = f16_bytes(0.5).to_vec();
    q41.extend(f16_bytes(-1.0));
    q41.extend((0u8..16).map(|i| i | (i << 4)));
    w.tensor("q4_1", &[32], GgmlType::Q4_1, q41);
    w.tensor(
        "f16",
        &[3],
        GgmlType::F16,
        [1.5f32, -2.0, 0.125]
            .iter()
            .flat_map(|v| f16_bytes(*v))
            .collect(),
    );
    w.tensor(
        "bf16",
        &[2],
        GgmlType::Bf16,
        [3.0f32, -0.5]
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect(),
    );
    w.tensor(
        "f32",
        &[2, 2],
        GgmlType::F32,
        [1.0f32, 2.0, 3.0, 4.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
    );
    // Q4_K: d = 1, dmin = 0.5; sub-blocks 0-3 scale 2 / min 1, sub-blocks 4-7 scale 3 / min 1
    // (6-bit packing of llama.cpp's get_scale_min_k4); every quant byte 0x21 (low 1, high 2).
    let mut q4k = f16_bytes(1.0).to_vec();
    q4k.extend(f16_bytes(0.5));
    q4k.extend([2, 2, 2, 2, 1, 1, 1, 1, 0x13, 0x13, 0x13, 0x13]);
    q4k.extend([0x21u8; 128]);
    w.tensor("q4_k", &[256], GgmlType::Q4K, q4k);
    // Q6_K: all quants 0 (→ −32), scales 1..16, d = 0.5.
    let mut q6k = vec![0u8; 192];
    q6k.extend((1i8..=16).map(|s| s as u8));
    q6k.extend(f16_bytes(0.5));
    w.tensor("q6_k", &[256], GgmlType::Q6K, q6k);

    let file = GgufFile::parse(w.bytes(), "test.gguf").unwrap();
    assert_eq!(
        tensor(&file, "q8"),
        (-16..16).map(|q| q as f32 * 0.5).collect::<Vec<_>>()
    );
    let expected: Vec<f32> = (0..16)
        .map(|i| (i - 8) as f32 * 0.25)
        .chain((0..16).map(|i| (7 - i) as f32 * 0.25))
        .collect();
    assert_eq!(tensor(&file, "q4_0"), expected);
    let expected: Vec<f32> = (0..2)
        .flat_map(|_| (0..16).map(|i| i as f32 * 0.5 - 1.0))
        .collect();
    assert_eq!(tensor(&file, "q4_1"), expected);
    assert_eq!(tensor(&file, "f16"), vec![1.5, -2.0, 0.125]);
    assert_eq!(tensor(&file, "bf16"), vec![3.0, -0.5]);
    assert_eq!(
        file.tensor(file.info("f32").unwrap()).unwrap().shape,
        vec![2, 2]
    );
    let expected: Vec<f32> = [1.5, 3.5, 1.5, 3.5, 2.5, 5.5, 2.5, 5.5]
        .iter()
        .flat_map(|v| [*v; 32])
        .collect();
    assert_eq!(tensor(&file, "q4_k"), expected);
    // Entry e of Q6_K sub-block s (16 entries each) is 0.5 · scale[s] · −32; the two
    // 128-entry halves interleave their sub-blocks as llama.cpp lays them out.
    let q6 = tensor(&file, "q6_k");
    for half in 0..2 {
        for l in 0..32 {
            for (k, slot) in [0, 32, 64, 96].iter().enumerate() {
                let scale = (half * 8 + l / 16 + 2 * k + 1) as f32;
                assert_eq!(
                    q6[half * 128 + slot + l],
                    0.5 * scale * -32.0,
                    "half {half} l {l} k {k}"
                );
            }
        }
    }
}

#[test]
fn truncated_or_corrupt_files_are_clear_errors() {
    let mut w = Writer::default();
    w.str("general.architecture", "llama");
    w.tensor("x", &[64], GgmlType::F32, vec![0u8; 256]);
    let bytes = w.bytes();
    for cut in [3, 10, 40, bytes.len() - 8] {
        let err = GgufFile::parse(bytes[..cut].to_vec(), "cut.gguf")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("cut.gguf: "), "{err}");
        assert!(
            err.contains("truncated") || err.contains("not a GGUF"),
            "{cut}: {err}"
        );
    }
    let mut bad = bytes.clone();
    bad[4] = 9; // version 9
    let err = GgufFile::parse(bad, "v9.gguf").unwrap_err().to_string();
    assert!(err.contains("version 9"), "{err}");
}

/// llama.cpp's `permute` of Q/K rows: within a head, Hugging Face row `half·hd/2 + i`
/// becomes row `2i + half`.
fn permute(data: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let hd = rows / heads;
    let mut out = vec![0f32; data.len()];
    for h in 0..heads {
        for half in 0..2 {
            for i in 0..hd / 2 {
                let src = h * hd + half * hd / 2 + i;
                let dst = h * hd + 2 * i + half;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

#[test]
fn tiny_llama_as_gguf_gives_the_same_logits_as_its_hf_original() {
    let dir = hf_fixture("llama-tiny");
    let mut w = Writer::default();
    w.str("general.architecture", "llama");
    for (key, v) in [
        ("llama.embedding_length", 32),
        ("llama.feed_forward_length", 64),
        ("llama.block_count", 2),
        ("llama.attention.head_count", 4),
        ("llama.attention.head_count_kv", 2),
        ("llama.context_length", 64),
        ("llama.vocab_size", 96),
    ] {
        w.u32(key, v);
    }
    w.f32("llama.rope.freq_base", 10000.0);
    w.f32("llama.attention.layer_norm_rms_epsilon", 1e-5);
    for (name, t) in read_hf_weights(&dir).unwrap() {
        let gguf_name = name
            .replace("model.embed_tokens", "token_embd")
            .replace("model.norm", "output_norm")
            .replace("lm_head", "output")
            .replace("model.layers.", "blk.")
            .replace("self_attn.q_proj", "attn_q")
            .replace("self_attn.k_proj", "attn_k")
            .replace("self_attn.v_proj", "attn_v")
            .replace("self_attn.o_proj", "attn_output")
            .replace("mlp.gate_proj", "ffn_gate")
            .replace("mlp.up_proj", "ffn_up")
            .replace("mlp.down_proj", "ffn_down")
            .replace("post_attention_layernorm", "ffn_norm")
            .replace("input_layernorm", "attn_norm");
        let data = match gguf_name.rsplit('.').nth(1) {
            Some("attn_q") => permute(&t.data, t.shape[0], t.shape[1], 4),
            Some("attn_k") => permute(&t.data, t.shape[0], t.shape[1], 2),
            _ => t.data.clone(),
        };
        w.tensor(
            &gguf_name,
            &t.shape,
            GgmlType::F32,
            data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        );
    }
    let path = std::env::temp_dir().join(format!("gmt-tiny-{}.gguf", std::process::id()));
    std::fs::write(&path, w.bytes()).unwrap();

    let device = Default::default();
    let from_gguf: LlamaForCausalLm<NdArray> = load_gguf(&path, &device).unwrap();
    std::fs::remove_file(&path).ok();
    let from_hf: LlamaForCausalLm<NdArray> = load_hf_dir(&dir, &device).unwrap();
    let batch = TokenBatch::new((0..24).map(|i| (i * 7 % 96) as u32).collect(), 2, 12);
    let a: Vec<f32> = from_gguf
        .forward(&batch)
        .unwrap()
        .logits
        .into_data()
        .to_vec()
        .unwrap();
    let b: Vec<f32> = from_hf
        .forward(&batch)
        .unwrap()
        .logits
        .into_data()
        .to_vec()
        .unwrap();
    assert_eq!(
        a, b,
        "same weights after un-permuting, so bit-identical logits"
    );
}

/// A small GGUF of every metadata kind and tensor type the loader reads, to damage.
fn every_kind() -> Vec<u8> {
    let mut w = Writer::default();
    w.str("general.architecture", "llama");
    w.u32("llama.block_count", 2);
    w.f32("llama.rope.freq_base", 10000.0);
    // An array of strings (type 9 of type 8), as tokenizer vocabularies are stored.
    w.key("tokenizer.ggml.tokens", 9);
    w.kv.extend(8u32.to_le_bytes());
    w.kv.extend(3u64.to_le_bytes());
    for token in ["a", "bc", "<s>"] {
        string(&mut w.kv, token);
    }
    let mut q8 = f16_bytes(0.5).to_vec();
    q8.extend((-16i8..16).map(|q| q as u8));
    w.tensor("q8", &[32], GgmlType::Q8_0, q8);
    w.tensor("f32", &[2, 2], GgmlType::F32, vec![0x3f; 16]);
    let mut q4k = f16_bytes(1.0).to_vec();
    q4k.extend(f16_bytes(0.5));
    q4k.extend([7u8; 140]);
    w.tensor("q4_k", &[256], GgmlType::Q4K, q4k);
    w.bytes()
}

/// Parses `bytes` and, when they parse, dequantizes every tensor: either step may refuse the
/// file, neither may panic.
fn parse_everything(bytes: Vec<u8>) {
    if let Ok(file) = GgufFile::parse(bytes, "fuzz.gguf") {
        for info in &file.tensors {
            let _ = file.tensor(info);
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, ..Default::default() })]

    /// A valid file with bytes changed (counts, lengths, types, shapes, offsets alike):
    /// an error or a file whose every tensor lies inside it, never a panic or a huge
    /// allocation.
    #[test]
    fn damaged_gguf_files_are_errors_not_panics(
        edits in proptest::collection::vec(
            (proptest::prelude::any::<proptest::sample::Index>(), proptest::prelude::any::<u8>()),
            1..8,
        ),
    ) {
        let mut bytes = every_kind();
        for (at, byte) in edits {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        parse_everything(bytes);
    }

    /// Arbitrary bytes after a valid magic and version.
    #[test]
    fn arbitrary_gguf_bodies_are_errors_not_panics(
        body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
    ) {
        let mut bytes = b"GGUF".to_vec();
        bytes.extend(3u32.to_le_bytes());
        bytes.extend(body);
        parse_everything(bytes);
    }
}

/// Every 8-byte field set to all-ones in turn (counts, lengths, dimensions, offsets at their
/// largest): the overflow cases random edits rarely reach.
#[test]
fn maximal_counts_and_offsets_are_errors_not_panics() {
    let intact = every_kind();
    for i in 0..intact.len().saturating_sub(8) {
        let mut bytes = intact.clone();
        bytes[i..i + 8].fill(0xff);
        parse_everything(bytes);
    }
}
