//! Headless subcommands: human text by default, JSON with `--json`.
//! stdout carries only the result; progress and logs go to stderr.

pub mod attack;
pub mod bench;
pub mod generate;
pub mod inspect;
pub mod load;
pub mod scan;

use std::path::PathBuf;

use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::demo::{self, DemoError};

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("demo model: {0}")]
    Demo(#[from] DemoError),
}

/// Opens what the user named, or the demo model when nothing was named.
pub fn open_model(model: Option<&str>) -> Result<Checkpoint, OpenError> {
    match model {
        Some(spec) => Ok(Checkpoint::open(spec)?),
        None => {
            let path: PathBuf = demo::ensure()?;
            Ok(Checkpoint::open_path(&path)?)
        }
    }
}
