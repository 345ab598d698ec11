//! The fuzz targets' bodies, shared by the AFL binaries (fuzz/src/bin) and
//! the regression test that replays the committed corpus
//! (tests/fuzz_corpus.rs). Each takes any bytes and must return, never
//! panic: a malformed input is an `Err`, which is fine.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use mwtop::checkpoint::{gguf, gguf_tokenizer, Checkpoint};

/// A scratch directory of this process (in /dev/shm when it exists, so
/// files written per input cost no disk).
pub fn scratch() -> PathBuf {
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("mwtop-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

/// What an opened checkpoint is asked, so the checks after the header run
/// too: every tensor's table entry and the tokenizer's vocabulary.
fn exercise(ckpt: &Checkpoint) {
    let _ = ckpt.parameter_count();
    for t in ckpt.tensors() {
        let _ = (t.elements(), &t.shape);
    }
}

/// A whole GGUF file: header, hyper-parameters, tensor table, vocabulary
/// checks, as `mwtop inspect FILE.gguf` opens it.
pub fn gguf_file(data: &[u8], scratch: &Path) {
    let path = scratch.join("model.gguf");
    std::fs::write(&path, data).expect("scratch write");
    if let Ok(ckpt) = Checkpoint::open_path(&path) {
        exercise(&ckpt);
    }
}

/// A Hugging Face directory: `data` is [u16 len of config.json][u16 len
/// of model.safetensors.index.json (0: none)] config, index, then the
/// safetensors bytes (the only shard, named as the index names its first
/// shard, else model.safetensors).
pub fn hf_dir(data: &[u8], scratch: &Path) {
    let dir = scratch.join("hf");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    if data.len() < 4 {
        return;
    }
    let config_len = u16::from_le_bytes([data[0], data[1]]) as usize;
    let index_len = u16::from_le_bytes([data[2], data[3]]) as usize;
    let rest = &data[4..];
    if rest.len() < config_len + index_len {
        return;
    }
    let (config, rest) = rest.split_at(config_len);
    let (index, weights) = rest.split_at(index_len);
    std::fs::write(dir.join("config.json"), config).expect("scratch write");
    let mut shard = "model.safetensors".to_string();
    if index_len > 0 {
        std::fs::write(dir.join("model.safetensors.index.json"), index).expect("scratch write");
        if let Some(first) = serde_json::from_slice::<serde_json::Value>(index)
            .ok()
            .and_then(|v| {
                v["weight_map"]
                    .as_object()
                    .and_then(|m| m.values().next().and_then(|f| f.as_str().map(String::from)))
            })
            .filter(|f| !f.contains('/') && !f.is_empty() && f != "config.json")
        {
            shard = first;
        }
    }
    std::fs::write(dir.join(&shard), weights).expect("scratch write");
    if let Ok(ckpt) = Checkpoint::open_path(&dir) {
        exercise(&ckpt);
    }
}

/// The tokenizer a GGUF's metadata describes, built and used: encode and
/// decode a text with specials and bytes outside ASCII.
pub fn gguf_tokenizer(data: &[u8]) {
    let path = Path::new("fuzz.gguf");
    let Ok(header) = gguf::parse(path, data) else {
        return;
    };
    let vocab = match header.metadata.get("tokenizer.ggml.tokens") {
        Some(gguf::GgufValue::Array(_, a)) => a.len(),
        _ => 0,
    };
    if gguf_tokenizer::check(path, &header.metadata, vocab).is_err() {
        return;
    }
    if let Ok(tok) = gguf_tokenizer::build(path, &header.metadata) {
        if let Ok(enc) = tok.encode("Héllo <|im_start|> wörld\n\t 123 ∑", true) {
            let _ = tok.decode(enc.get_ids(), false);
        }
    }
}
