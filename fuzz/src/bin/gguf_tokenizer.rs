//! AFL target: see fuzz/targets.rs.
#[path = "../../targets.rs"]
mod targets;

fn main() {
    let scratch = targets::scratch();
    let _ = &scratch;
    afl::fuzz!(|data: &[u8]| {
        targets::gguf_tokenizer(data);
    });
}
