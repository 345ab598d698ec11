//! A corpus of malformed inputs, each built by code into a fresh temporary
//! directory from the valid synthetic model, and each with the one-line
//! error it must get: exit status 1 (not 0, not a panic's 101, not a
//! signal), one line on stderr starting with `mwtop: error: ` that names
//! what is wrong, nothing on stdout. Every run has a timeout and an
//! address-space limit, so a hang or a memory blow-up fails its case
//! instead of the machine. All cases run in one test that reports every
//! failure together.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use candle_core::quantized::GgmlDType;
use mwtop::checkpoint::gguf::{self, GgufValue};
use mwtop::checkpoint::gguf_writer::{self, GgufTensorData};
use mwtop::synthetic::Spec;
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(30);
const ADDRESS_SPACE: u64 = 4 << 30;

type Meta = Vec<(String, GgufValue)>;
type Build = Box<dyn Fn(&Path) -> Vec<String>>;

struct Case {
    name: &'static str,
    /// What the error line must contain (case-insensitive).
    needles: &'static [&'static str],
    /// What it must not contain.
    absent: &'static [&'static str],
    build: Build,
}

fn case(
    name: &'static str,
    needles: &'static [&'static str],
    build: impl Fn(&Path) -> Vec<String> + 'static,
) -> Case {
    Case {
        name,
        needles,
        absent: &[],
        build: Box::new(build),
    }
}

fn s(p: &Path) -> String {
    p.to_str().expect("utf-8 temp path").to_string()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|a| a.to_string()).collect()
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
}

/// Replaces whatever is at `path` with a FIFO.
fn fifo_at(path: &Path) {
    let _ = std::fs::remove_file(path);
    mkfifo(path);
}

/// Replaces whatever is at `path` with a directory.
fn dir_at(path: &Path) {
    let _ = std::fs::remove_file(path);
    std::fs::create_dir(path).unwrap();
}

/// Replaces whatever is at `path` with a symlink loop (path -> x -> path).
fn loop_at(path: &Path) {
    let _ = std::fs::remove_file(path);
    let other = path.with_extension("loop");
    std::os::unix::fs::symlink(&other, path).unwrap();
    std::os::unix::fs::symlink(path, &other).unwrap();
}

/// A sparse file of `len` bytes.
fn sparse_at(path: &Path, len: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(len).unwrap();
}

fn find(bytes: &[u8], needle: &[u8]) -> usize {
    bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{:?} in the bytes", String::from_utf8_lossy(needle)))
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

#[path = "malformed/cli.rs"]
mod cli;
#[path = "malformed/gguf.rs"]
mod gguf_files;
#[path = "malformed/hf.rs"]
mod hf;

use gguf_files::*;
use hf::*;

/// Every case of the corpus.
fn cases() -> Vec<Case> {
    let mut v = gguf_files::cases();
    v.extend(hf::cases());
    v.extend(cli::cases());
    v
}

/// What is wrong with one case's run, if anything.
fn judge(c: &Case, run: &common::Bounded) -> Option<String> {
    let err = run.stderr.trim_end();
    let what = || {
        format!(
            "exit {:?}, signal {:?}, stderr {err:?}, stdout {:?}",
            run.code, run.signal, run.stdout
        )
    };
    if run.timed_out {
        return Some(format!("timed out after {TIMEOUT:?} ({})", what()));
    }
    if run.code != Some(1) {
        return Some(format!("expected exit status 1: {}", what()));
    }
    if err.lines().count() != 1 || !err.starts_with("mwtop: error: ") {
        return Some(format!(
            "expected one line starting with \"mwtop: error: \": {}",
            what()
        ));
    }
    if !run.stdout.is_empty() {
        return Some(format!("expected nothing on stdout: {}", what()));
    }
    let lower = err.to_lowercase();
    let missing: Vec<&str> = c
        .needles
        .iter()
        .copied()
        .filter(|n| !lower.contains(&n.to_lowercase()))
        .collect();
    if !missing.is_empty() {
        return Some(format!("{err:?} lacks {missing:?}"));
    }
    if let Some(a) = c.absent.iter().find(|a| lower.contains(&a.to_lowercase())) {
        return Some(format!("{err:?} should not mention {a:?}"));
    }
    None
}

#[test]
fn every_malformed_input_gets_its_one_line_error() {
    let cases = cases();
    assert!(
        cases.len() >= 60,
        "{} cases; the corpus needs at least 60",
        cases.len()
    );
    let mut names = std::collections::HashSet::new();
    for c in &cases {
        assert!(names.insert(c.name), "two cases are named {}", c.name);
    }
    let only = std::env::var("MALFORMED_CASE").ok();
    let mut failures = Vec::new();
    let mut ran = 0;
    for c in &cases {
        if only.as_deref().is_some_and(|o| !c.name.contains(o)) {
            continue;
        }
        let dir = common::tempdir();
        let a = (c.build)(dir.path());
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        let t0 = std::time::Instant::now();
        let run = common::mwtop_bounded(&refs, TIMEOUT, ADDRESS_SPACE);
        ran += 1;
        if std::env::var_os("MALFORMED_VERBOSE").is_some() {
            eprintln!(
                "{} ({:.2}s): {}",
                c.name,
                t0.elapsed().as_secs_f64(),
                run.stderr.trim_end()
            );
        }
        if let Some(why) = judge(c, &run) {
            failures.push(format!("{}: {why}", c.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {ran} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The control: the unbroken inputs the cases start from are accepted.
#[test]
fn the_unbroken_inputs_are_accepted() {
    let dir = common::tempdir();
    let g = write_gguf(dir.path(), &gguf_bytes());
    let q = dir.path().join("q.gguf");
    std::fs::write(&q, gguf_bytes_with(GgmlDType::Q8_0, |_, _| {})).unwrap();
    let m = hf(dir.path());
    let sharded = hf_sharded(&dir.path().join("sharded"));
    let t = text(dir.path());
    let (g, q, m, sharded, t) = (s(&g), s(&q), s(&m), s(&sharded), s(&t));
    for a in [
        vec!["inspect", &g],
        vec!["inspect", &m],
        vec!["inspect", &sharded],
        vec!["generate", &q, "--prompt", "hi", "--max-tokens", "2"],
        vec![
            "generate",
            &m,
            "--prompt",
            "hi",
            "--max-tokens",
            "2",
            "--temperature",
            "0.5",
            "--top-p",
            "0.9",
        ],
        vec!["eval", &m, "--text", &t, "--window", "8", "--stride", "7"],
        vec!["eval", &g, "--text", &t],
    ] {
        let run = common::mwtop_bounded(&a, TIMEOUT, ADDRESS_SPACE);
        assert_eq!(run.code, Some(0), "{a:?}: {}", run.stderr);
    }
}
