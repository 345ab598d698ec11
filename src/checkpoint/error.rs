//! Typed errors of the checkpoint layer.
//!
//! Every variant names the file it is about, so the binary can print one clear
//! line without a backtrace.

use std::path::PathBuf;

/// What can go wrong while opening or reading a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{}: no such file or directory", path.display())]
    NotFound { path: PathBuf },

    /// A FIFO, a device or a directory where a file was expected.
    #[error("{}: not a regular file ({kind})", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },

    /// A file read whole that is larger than mwtop reads.
    #[error("{}: {size}, more than the {limit} limit for {what}", path.display())]
    TooLarge {
        path: PathBuf,
        size: String,
        limit: String,
        what: String,
    },

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The file exists but its bytes do not form what its format promises.
    #[error("{}: {message}", path.display())]
    Malformed { path: PathBuf, message: String },

    /// Well-formed, but something mwtop does not handle (a dtype, an architecture).
    #[error("{}: unsupported: {message}", path.display())]
    Unsupported { path: PathBuf, message: String },

    /// config.json (or GGUF metadata) and the tensors disagree.
    #[error("{}: {message}", path.display())]
    Inconsistent { path: PathBuf, message: String },

    #[error("{}: no tensor named {name}", path.display())]
    MissingTensor { path: PathBuf, name: String },

    /// What the user named cannot name a checkpoint (an empty path).
    #[error("{message}")]
    Usage { message: String },

    #[error("hub: {message}")]
    Hub { message: String },

    #[error("{}: tokenizer: {message}", path.display())]
    Tokenizer { path: PathBuf, message: String },

    #[error("{}: tensor {name}: {source}", path.display())]
    Candle {
        path: PathBuf,
        name: String,
        #[source]
        source: Box<candle_core::Error>,
    },
}

impl CheckpointError {
    pub(crate) fn malformed(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Malformed {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn unsupported(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Unsupported {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn inconsistent(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Inconsistent {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            Self::NotFound { path }
        } else {
            Self::Io { path, source }
        }
    }
}

pub type Result<T, E = CheckpointError> = std::result::Result<T, E>;
