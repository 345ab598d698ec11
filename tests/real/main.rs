//! The real-model tier: every test that needs a demo model
//! (SmolLM2-135M-Instruct, Q4_1 GGUF; Gemma 3 270M, Q4_K_M GGUF), fetched
//! through the same code `mwtop` uses. They fail, never skip, without it. Run this tier alone with
//! `cargo test --test real`; the fast tier is `cargo test --no-default-features`.
//! Tests here share one loaded model ([`demo`]) instead of loading it again.

#[path = "../common/mod.rs"]
mod common;

mod blocks;
mod checkpoint;
mod cli;
mod convert;
mod gemma3;
mod massive;
mod pty;
mod reference;
mod tape;
mod tasks;
mod train;

use std::sync::OnceLock;

use candle_core::{DType, Device};
use mwtop::checkpoint::Checkpoint;
use mwtop::model::Model;

/// The demo model, opened and loaded once (f32 on the CPU).
pub struct Demo {
    pub ckpt: Checkpoint,
    pub model: Model,
    pub tok: tokenizers::Tokenizer,
}

pub fn demo() -> &'static Demo {
    static DEMO: OnceLock<Demo> = OnceLock::new();
    DEMO.get_or_init(|| {
        let ckpt = Checkpoint::open_path(&common::demo_model()).unwrap();
        let model = fresh_model(&ckpt);
        let tok = ckpt.tokenizer().unwrap();
        Demo { ckpt, model, tok }
    })
}

/// The second demo model, Gemma 3 270M (Q4_K_M GGUF), opened and loaded once.
pub fn gemma3() -> &'static Demo {
    static DEMO: OnceLock<Demo> = OnceLock::new();
    DEMO.get_or_init(|| {
        let path = mwtop::demo::ensure_model(&mwtop::demo::GEMMA3)
            .unwrap_or_else(|e| panic!("the gemma3 demo model is required: {e}"));
        let ckpt = Checkpoint::open_path(&path).unwrap();
        let model = fresh_model(&ckpt);
        let tok = ckpt.tokenizer().unwrap();
        Demo { ckpt, model, tok }
    })
}

/// A model of one's own, for tests that change the loaded weights.
pub fn fresh_model(ckpt: &Checkpoint) -> Model {
    Model::load(ckpt, &Device::Cpu, DType::F32, |_, _| {}).unwrap()
}
