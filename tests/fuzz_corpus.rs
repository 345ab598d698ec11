//! The fuzzers' inputs replayed as regression tests: the seeds
//! (fuzz/seeds/<target>/), what AFL++ found that adds coverage
//! (fuzz/corpus/<target>/, minimized by afl-cmin) and every crash it ever
//! found (fuzz/crashes/<target>/, kept after the fix) go through the same
//! target code (fuzz/targets.rs) and must return without a panic.

mod common;

#[path = "../fuzz/targets.rs"]
mod targets;

use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut out = Vec::new();
    for kind in ["seeds", "corpus", "crashes"] {
        let Ok(dir) = std::fs::read_dir(root.join(kind).join(target)) else {
            continue;
        };
        out.extend(dir.map(|e| e.unwrap().path()).filter(|p| p.is_file()));
    }
    out.sort();
    out
}

/// Runs `run` on every input of `target`, reporting each that panics.
fn replay(target: &str, min_inputs: usize, run: impl Fn(&[u8], &Path)) {
    let scratch = common::tempdir();
    let files = inputs(target);
    assert!(
        files.len() >= min_inputs,
        "{target}: {} inputs, the committed corpus has more",
        files.len()
    );
    let mut failed = Vec::new();
    for f in &files {
        let data = std::fs::read(f).unwrap();
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&data, scratch.path())));
        if outcome.is_err() {
            failed.push(f.display().to_string());
        }
    }
    assert!(failed.is_empty(), "{target}: panics on {failed:?}");
}

#[test]
fn gguf_file_corpus() {
    replay("gguf_file", 8, targets::gguf_file);
}

#[test]
fn hf_dir_corpus() {
    replay("hf_dir", 13, targets::hf_dir);
}

#[test]
fn gguf_tokenizer_corpus() {
    replay("gguf_tokenizer", 6, |data, _| targets::gguf_tokenizer(data));
}
