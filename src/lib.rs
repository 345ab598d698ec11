//! mwtop: `top` for the inside of a language model.
//!
//! The library is layered as in `DESIGN.md`: [`checkpoint`] (memory-mapped
//! formats, configuration, tokenizer) is the bottom layer; [`runtime`]
//! opens a model and picks its device; [`model`], [`analysis`] and
//! [`engine`] build on them, and [`tui`] draws what the engine reports. The
//! headless subcommands live in the binary (`src/main.rs`, `src/cli/`),
//! which nothing in the library imports.

pub mod analysis;
pub mod checkpoint;
pub mod convert;
pub mod demo;
pub mod display;
pub mod engine;
pub mod export;
pub mod model;
pub mod palette;
pub mod rng;
pub mod runtime;
pub mod synthetic;
pub mod tasks;
pub mod train;
pub mod tui;

/// Fixes the CPU thread count once, at start-up, before any other thread exists.
///
/// candle asks for the thread count on every matmul and, unless
/// `RAYON_NUM_THREADS` is set, answers by parsing /proc/cpuinfo: measured at
/// 15% of decode time on SmolLM2. Setting the variable to the value candle
/// would compute keeps its choice and makes the lookup free.
pub fn pin_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = candle_core::utils::get_num_threads();
        // Called from main before any thread is spawned, so no one reads the
        // environment concurrently.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}
