//! Writes the planted synthetic checkpoint (the tests' tiny model): a
//! Hugging Face directory, or with a GGUF type name (q4_0, q4_1, q5_0,
//! q5_1, q8_0, q4_k, q5_k, q6_k, f16, f32) one .gguf file whose matrices
//! are quantized to it (scripts/gpu-blocks.sh runs each on the GPU).
//! Usage: cargo run --example write_planted -- OUT [GGUF_TYPE]
use candle_core::quantized::GgmlDType;

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: write_planted OUT [GGUF_TYPE]";
    let out = args.next().expect(usage);
    let spec = mwtop::synthetic::Spec::planted();
    let path = std::path::Path::new(&out);
    match args.next() {
        None => spec
            .write_hf_dir(path, safetensors::Dtype::F32)
            .expect("written"),
        Some(name) => {
            let format = match name.to_ascii_lowercase().as_str() {
                "q4_0" => GgmlDType::Q4_0,
                "q4_1" => GgmlDType::Q4_1,
                "q5_0" => GgmlDType::Q5_0,
                "q5_1" => GgmlDType::Q5_1,
                "q8_0" => GgmlDType::Q8_0,
                "q4_k" => GgmlDType::Q4K,
                "q5_k" => GgmlDType::Q5K,
                "q6_k" => GgmlDType::Q6K,
                "f16" => GgmlDType::F16,
                "f32" => GgmlDType::F32,
                other => panic!("unknown GGUF type {other}; {usage}"),
            };
            spec.write_gguf(path, format).expect("written");
        }
    }
}
