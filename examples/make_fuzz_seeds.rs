//! Writes the starting corpus (fuzz/seeds/<target>/): tiny synthetic
//! models in several storage types, and the metadata of the family fixtures
//! that gguf-py (llama.cpp's writer) wrote, re-written without tensors.
//! Run from the repository root: `cargo run --no-default-features --example make_fuzz_seeds`.

use std::path::Path;

use candle_core::quantized::GgmlDType;
use mwtop::checkpoint::gguf;
use mwtop::checkpoint::gguf_writer;
use mwtop::synthetic::Spec;

fn tiny() -> Spec {
    Spec {
        n_layers: 1,
        d_model: 32,
        d_ff: 64,
        n_heads: 2,
        n_kv_heads: 1,
        ..Spec::default()
    }
}

fn hf_input(config: &[u8], index: &[u8], weights: &[u8]) -> Vec<u8> {
    let mut out = (config.len() as u16).to_le_bytes().to_vec();
    out.extend_from_slice(&(index.len() as u16).to_le_bytes());
    out.extend_from_slice(config);
    out.extend_from_slice(index);
    out.extend_from_slice(weights);
    out
}

fn main() {
    let root = Path::new("fuzz/seeds");
    for t in ["gguf_file", "hf_dir", "gguf_tokenizer"] {
        std::fs::create_dir_all(root.join(t)).unwrap();
    }
    let tmp = std::env::temp_dir().join(format!("mwtop-seeds-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let spec = tiny();
    for (dtype, name) in [
        (GgmlDType::F32, "f32"),
        (GgmlDType::F16, "f16"),
        (GgmlDType::Q8_0, "q8_0"),
    ] {
        let p = tmp.join(format!("{name}.gguf"));
        spec.write_gguf(&p, dtype).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(
            root.join("gguf_file").join(format!("tiny_{name}.gguf")),
            &bytes,
        )
        .unwrap();
        if name == "f32" {
            let header = gguf::parse(&p, &bytes).unwrap();
            let meta: Vec<_> = header.metadata.into_iter().collect();
            std::fs::write(
                root.join("gguf_tokenizer").join("tiny_byte_level.gguf"),
                gguf_writer::to_bytes(&meta, &[]),
            )
            .unwrap();
        }
    }
    // The family fixtures' metadata (architectures, RoPE settings,
    // tokenizers as gguf-py writes them), without their tensors.
    let fixtures = Path::new("tests/fixtures/families");
    for entry in std::fs::read_dir(fixtures).unwrap() {
        let dir = entry.unwrap().path();
        let family = dir.file_name().unwrap().to_str().unwrap().to_string();
        let g = dir.join("model.gguf");
        if g.is_file() {
            let bytes = std::fs::read(&g).unwrap();
            let header = gguf::parse(&g, &bytes).unwrap();
            let meta: Vec<_> = header.metadata.into_iter().collect();
            let out = gguf_writer::to_bytes(&meta, &[]);
            std::fs::write(
                root.join("gguf_tokenizer").join(format!("{family}.gguf")),
                &out,
            )
            .unwrap();
            std::fs::write(
                root.join("gguf_file")
                    .join(format!("{family}_no_tensors.gguf")),
                &out,
            )
            .unwrap();
        }
    }
    // Hugging Face directories: the tiny model (f16 and bf16, one file and
    // sharded), and each family's config.json over the tiny weights.
    for (dtype, name) in [
        (safetensors::Dtype::F16, "f16"),
        (safetensors::Dtype::BF16, "bf16"),
    ] {
        let d = tmp.join(format!("hf_{name}"));
        spec.write_hf_dir(&d, dtype).unwrap();
        let config = std::fs::read(d.join("config.json")).unwrap();
        let weights = std::fs::read(d.join("model.safetensors")).unwrap();
        std::fs::write(
            root.join("hf_dir").join(format!("tiny_{name}")),
            hf_input(&config, &[], &weights),
        )
        .unwrap();
        if name == "f16" {
            for entry in std::fs::read_dir(fixtures).unwrap() {
                let fdir = entry.unwrap().path();
                let family = fdir.file_name().unwrap().to_str().unwrap().to_string();
                if let Ok(cfg) = std::fs::read(fdir.join("config.json")) {
                    std::fs::write(
                        root.join("hf_dir").join(format!("{family}_config")),
                        hf_input(&cfg, &[], &weights),
                    )
                    .unwrap();
                }
            }
        }
    }
    let d = tmp.join("hf_sharded");
    spec.write_hf_dir_sharded(&d, safetensors::Dtype::F16, 2)
        .unwrap();
    let config = std::fs::read(d.join("config.json")).unwrap();
    let index = std::fs::read(d.join("model.safetensors.index.json")).unwrap();
    let first = std::fs::read(d.join("model-00001-of-00002.safetensors")).unwrap();
    std::fs::write(
        root.join("hf_dir").join("tiny_sharded"),
        hf_input(&config, &index, &first),
    )
    .unwrap();
    std::fs::remove_dir_all(&tmp).unwrap();
}
