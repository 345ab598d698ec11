//! The analysis layer: pure functions over what the model returns —
//! detection of massive activations and weights, the attack target, the
//! attacks, perplexity, sweeps and generation. The TUI and the CLI share all
//! of it.

pub mod attack;
pub mod generate;
pub mod massive;
pub mod norms;
pub mod perplexity;
pub mod states;
pub mod sweep;
pub mod target;
pub mod zero_shot;
