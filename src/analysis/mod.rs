//! The analysis layer: pure functions over what the model returns —
//! perplexity and generation here; detection of massive activations and
//! weights builds on the same runs. The TUI and the CLI share all of it.

pub mod attack;
pub mod generate;
pub mod massive;
pub mod perplexity;
