//! Writes the planted synthetic checkpoint (the tests' tiny model) to a directory.
//! Usage: cargo run --example write_planted -- OUTDIR
fn main() {
    let out = std::env::args()
        .nth(1)
        .expect("usage: write_planted OUTDIR");
    mwtop::synthetic::Spec::planted()
        .write_hf_dir(std::path::Path::new(&out), safetensors::Dtype::F32)
        .expect("written");
}
