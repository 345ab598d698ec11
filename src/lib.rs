//! mwtop: `top` for the inside of a language model.
//!
//! The library is layered as in `DESIGN.md`: [`checkpoint`] (memory-mapped
//! formats, configuration, tokenizer) is the bottom layer; the model, analysis
//! and engine layers build on it. The binary (`src/main.rs`) is a thin clap
//! front-end over [`cli`].

pub mod analysis;
pub mod checkpoint;
pub mod cli;
pub mod convert;
pub mod demo;
pub mod model;
pub mod synthetic;
