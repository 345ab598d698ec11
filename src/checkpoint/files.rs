//! Opening what the user named, safely: only regular files (after following
//! symlinks; a loop is the OS's ELOOP error, named as such) are opened, so a
//! FIFO, a device or a directory under a file's name is refused instead of
//! blocking or reading forever; files read whole are bounded by a stated limit,
//! checked on the size and again while reading.

use std::fs::{File, Metadata};
use std::io::Read;
use std::path::Path;

use super::error::{CheckpointError, Result};

/// config.json, the index, adapter_config.json, tokenizer_config.json.
pub const JSON_LIMIT: u64 = 64 << 20;
/// tokenizer.json (the largest on the hub are about 35 MB).
pub const TOKENIZER_LIMIT: u64 = 256 << 20;
/// A text to score (`eval --text`, `check --text`, `plot --text`).
pub const TEXT_LIMIT: u64 = 256 << 20;
/// Fine-tuning data read whole (alpaca_gpt4_en is about 40 MB).
pub const DATA_LIMIT: u64 = 1 << 30;

/// What a non-regular file is, for messages.
fn kind(meta: &Metadata) -> &'static str {
    let ft = meta.file_type();
    if ft.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return "a FIFO";
        }
        if ft.is_char_device() {
            return "a character device";
        }
        if ft.is_block_device() {
            return "a block device";
        }
        if ft.is_socket() {
            return "a socket";
        }
    }
    "neither a file nor a directory"
}

/// A size in the unit the limits are stated in.
pub fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes >> 20)
}

/// Whether anything is at `path`, a dangling or looping symlink included (so
/// that opening it then says what is wrong instead of "not here").
pub fn present(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// The metadata of `path` (symlinks followed), which must be a regular file.
pub fn regular_file(path: &Path) -> Result<Metadata> {
    let meta = std::fs::metadata(path).map_err(|e| CheckpointError::io(path, e))?;
    check_regular(path, &meta)?;
    Ok(meta)
}

fn check_regular(path: &Path, meta: &Metadata) -> Result<()> {
    if meta.is_file() {
        Ok(())
    } else {
        Err(CheckpointError::NotRegular {
            path: path.to_path_buf(),
            kind: kind(meta),
        })
    }
}

/// Opens a regular file for reading: checked before the open (so a FIFO
/// never blocks) and after it (in case the name was swapped in between).
pub fn open_regular(path: &Path) -> Result<(File, u64)> {
    regular_file(path)?;
    let file = File::open(path).map_err(|e| CheckpointError::io(path, e))?;
    let meta = file.metadata().map_err(|e| CheckpointError::io(path, e))?;
    check_regular(path, &meta)?;
    Ok((file, meta.len()))
}

/// The bytes of a regular file of at most `limit` bytes; `what` names the
/// kind of file in the error.
pub fn read_limited(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>> {
    let too_large = |size: String| CheckpointError::TooLarge {
        path: path.to_path_buf(),
        size,
        limit: mib(limit),
        what: what.to_string(),
    };
    let (file, len) = open_regular(path)?;
    if len > limit {
        return Err(too_large(format!("{len} bytes")));
    }
    let mut buf = Vec::with_capacity(len as usize);
    file.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|e| CheckpointError::io(path, e))?;
    if buf.len() as u64 > limit {
        return Err(too_large("more bytes than its size said".into()));
    }
    Ok(buf)
}

/// [`read_limited`] as UTF-8 text.
pub fn read_text(path: &Path, limit: u64, what: &str) -> Result<String> {
    let bytes = read_limited(path, limit, what)?;
    String::from_utf8(bytes).map_err(|e| {
        CheckpointError::malformed(
            path,
            format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}
