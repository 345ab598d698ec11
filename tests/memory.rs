//! Memory stays bounded: measured as the peak resident size of the real
//! `mwtop` process (the kernel's `ru_maxrss`), not by timing anything.

mod common;

use std::process::{Command, Stdio};

use mwtop::synthetic::Spec;

/// Runs mwtop with `args` and returns (exit status, stdout, stderr, peak
/// resident set size in MiB) of that one child.
fn run_measured(args: &[&str]) -> (i32, String, String, f64) {
    let child = Command::new(env!("CARGO_BIN_EXE_mwtop"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mwtop starts");
    let pid = child.id() as libc::pid_t;
    // Read the pipes on threads so a full pipe cannot stall the child.
    let mut child = child;
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let read = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            r.read_to_string(&mut s).unwrap();
            s
        })
    };
    let (out, err) = (read(Box::new(out)), read(Box::new(err)));
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid out-parameter for wait4.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our own child, status and usage are valid pointers.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4 on the child");
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    (
        code,
        out.join().unwrap(),
        err.join().unwrap(),
        usage.ru_maxrss as f64 / 1024.0,
    )
}

/// A window of 8192 tokens: whole score matrices would take 2 GiB (4 heads
/// x 8192^2 x 4 bytes, scores and softmax) plus a 256 MiB mask; in tiles
/// the whole run stays far below that.
#[test]
fn eval_at_window_8192_stays_within_bounded_memory() {
    let dir = common::tempdir();
    let model = dir.path().join("model");
    Spec::default()
        .write_hf_dir(&model, safetensors::Dtype::F32)
        .unwrap();
    let cfg_path = model.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["max_position_embeddings"] = 8192.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    // Byte-level tokens: one token per byte, 9000 of them.
    let text: String = "The river bends where the old mill stood. "
        .chars()
        .cycle()
        .take(9000)
        .collect();
    let text_path = dir.path().join("long.txt");
    std::fs::write(&text_path, text).unwrap();
    let (code, out, err, peak_mib) = run_measured(&[
        "eval",
        common::path_str(&model),
        "--text",
        common::path_str(&text_path),
        "--window",
        "8192",
        "--stride",
        "4096",
        "--json",
    ]);
    assert_eq!(code, 0, "stderr: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let result = &v;
    assert_eq!(result["window"], 8192, "{v}");
    assert_eq!(result["scored"], 8999, "{v}");
    assert!(result["perplexity"].as_f64().unwrap().is_finite(), "{v}");
    assert!(
        peak_mib < 512.0,
        "peak resident memory {peak_mib:.0} MiB at window 8192"
    );
}
