//! What mwtop hands to papers and lectures: figures (PNG, SVG) and one
//! self-contained HTML report. Everything is written under a temporary
//! name beside the destination and renamed, so a reader never sees half a
//! file and an interrupted run leaves the old one.

pub mod figure;
pub mod report;
pub mod views;

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{0}")]
    Format(String),
    #[error("drawing the figure failed: {0}")]
    Draw(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Writes `bytes` to `path` through a temporary sibling and a rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ExportError> {
    let tmp = crate::checkpoint::temp_sibling(path);
    let io = |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(&tmp, bytes).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })
}
