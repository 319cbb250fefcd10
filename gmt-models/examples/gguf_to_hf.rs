//! Converts a Llama GGUF file to a Hugging Face directory (f32 safetensors + config.json):
//! `cargo run --release -p gmt-models --example gguf_to_hf -- MODEL.gguf OUT_DIR`
//! (`gmt export` will do this for checkpoints; this is the bare conversion.)
use burn::backend::NdArray;
use gmt_models::{ExportDtype, LlamaForCausalLm, gguf::load_gguf, save_hf_dir};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, input, output] = args.as_slice() else {
        return Err("usage: gguf_to_hf MODEL.gguf OUT_DIR".into());
    };
    let model: LlamaForCausalLm<NdArray> = load_gguf(input, &Default::default())?;
    save_hf_dir(&model, output, ExportDtype::F32)?;
    println!("wrote {output}");
    Ok(())
}
