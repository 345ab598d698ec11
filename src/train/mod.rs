//! LoRA fine-tuning with MacDrop (DESIGN.md's `train`): the model's own
//! forward with differentiable ops, frozen base weights, adapters and
//! MacDrop's masks as parts of each run, AdamW with transformers'
//! schedule, resumable checkpoints in PEFT's format.

pub mod data;
pub mod loss;
pub mod macdrop;
pub mod optim;
mod run;

pub use run::{
    adapter_file, read_state, train, Outcome, StepReport, TrainConfig, TrainState, STATE_FILE,
};

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    #[error(transparent)]
    Fetch(#[from] crate::demo::DemoError),
    #[error("train: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Data(String),
    #[error("{0}")]
    Config(String),
    /// The loss became NaN or infinite: the run stops rather than train on.
    #[error("the loss is {loss} at update {step}: stopping (lower --lr, or check the data)")]
    NonFinite { step: usize, loss: f64 },
}

pub type Result<T> = std::result::Result<T, TrainError>;
