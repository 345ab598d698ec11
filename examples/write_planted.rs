//! Writes the planted synthetic checkpoint (the tests' tiny model): a
//! Hugging Face directory, or with a GGUF type name as `inspect` prints it
//! (q4_0, q4_1, q5_0, q5_1, q8_0, q4_k, q5_k, q6_k, f16, ...) one .gguf file
//! whose matrices are quantized to it (scripts/gpu-blocks.sh runs each on the GPU).
//! Usage: cargo run --example write_planted -- OUT [GGUF_TYPE]
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
            // GGUF's own type names, as `mwtop inspect` prints them.
            let format = (0..=40)
                .filter_map(mwtop::checkpoint::gguf::ggml_dtype_from_id)
                .find(|&d| mwtop::checkpoint::gguf::ggml_dtype_name(d).eq_ignore_ascii_case(&name))
                .unwrap_or_else(|| panic!("unknown GGUF type {name}; {usage}"));
            spec.write_gguf(path, format).expect("written");
        }
    }
}
