//! Memory stays bounded: measured as the peak resident size of the real
//! `mwtop` process (the kernel's `ru_maxrss`), not by timing anything.

mod common;
#[path = "common/harness.rs"]
mod harness;

use std::alloc::{GlobalAlloc, Layout, System};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Mutex;

use crossterm::event::{Event as TermEvent, KeyCode, KeyEvent};
use harness::Harness;
use mwtop::synthetic::Spec;
use ratatui::backend::TestBackend;
use ratatui::Terminal;

/// Counts the heap bytes live in this test process (the App, the engine
/// thread and the model's CPU tensors all allocate through it), so "memory
/// stays flat" is a count, not a guess from the resident size.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call forwards to the system allocator unchanged; only the
// byte count is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The tests of this file run one at a time, so one's allocations never
/// show up in another's count.
static SERIAL: Mutex<()> = Mutex::new(());

fn live_mib() -> f64 {
    LIVE.load(Ordering::Relaxed) as f64 / (1 << 20) as f64
}

/// A small deterministic generator for the storm (xorshift64).
struct Xorshift(u64);

impl Xorshift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Keys a user might hammer: attacks, k, layer and dim cursors, views, what
/// is shown, help and log (not quit, save, the editor or the task run,
/// which leave the session or write files).
const STORM_KEYS: [KeyCode; 20] = [
    KeyCode::Char('o'),
    KeyCode::Char('z'),
    KeyCode::Char('r'),
    KeyCode::Char('x'),
    KeyCode::Char('w'),
    KeyCode::Char('t'),
    KeyCode::Char('+'),
    KeyCode::Char('-'),
    KeyCode::Char(' '),
    KeyCode::Tab,
    KeyCode::BackTab,
    KeyCode::Char('c'),
    KeyCode::Char('g'),
    KeyCode::Char('L'),
    KeyCode::Char('?'),
    KeyCode::Left,
    KeyCode::Right,
    KeyCode::Up,
    KeyCode::Down,
    KeyCode::Esc,
];

/// Feeds `n` storm events (keys and resizes, drawing every 50th at the
/// size last resized to) without waiting for the engine in between.
fn storm(h: &mut Harness, rng: &mut Xorshift, n: usize) {
    let (mut w, mut ht) = (80u16, 24u16);
    for i in 0..n {
        let ev = if rng.below(10) == 0 {
            w = 20 + rng.below(200) as u16;
            ht = 5 + rng.below(60) as u16;
            TermEvent::Resize(w, ht)
        } else {
            let key = STORM_KEYS[rng.below(STORM_KEYS.len() as u64) as usize];
            TermEvent::Key(KeyEvent::from(key))
        };
        h.app.on_terminal_event(ev);
        while let Ok(e) = h.rx.try_recv() {
            h.app.on_engine_event(e);
        }
        if i % 50 == 0 {
            let mut t = Terminal::new(TestBackend::new(w, ht)).unwrap();
            t.draw(|f| mwtop::tui::ui::draw(f, &mut h.app)).unwrap();
        }
        assert!(!h.app.quit, "the storm never quits");
    }
}

/// 100,000 key and resize events: the engine keeps only the newest job of
/// each kind and the App holds no history, so what is live after the storm
/// is what was live before it.
#[test]
fn a_key_and_resize_storm_keeps_memory_flat() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut h = Harness::new();
    let mut rng = Xorshift(0x9e37_79b9_7f4a_7c15);
    storm(&mut h, &mut rng, 5_000);
    h.settle();
    let before = live_mib();
    storm(&mut h, &mut rng, 100_000);
    h.settle();
    let after = live_mib();
    assert!(h.app.error.is_none(), "{:?}", h.app.error);
    assert!(
        after - before < 4.0,
        "live heap grew from {before:.1} MiB to {after:.1} MiB over 100,000 events"
    );
}

/// A session of 1,000 attack toggles, each one run to the end (generation,
/// perplexity and the heatmap states of both models).
#[test]
fn a_thousand_toggles_keep_memory_flat() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // A short text and two tokens per toggle keep 1,000 complete runs quick.
    let mut h = Harness::with_workload("The river bends where the old mill stood.", 2);
    let cycle = [KeyCode::Char('z'), KeyCode::Char('r'), KeyCode::Char('o')];
    for key in cycle.iter().cycle().take(30) {
        h.key(*key);
    }
    let before = live_mib();
    for key in cycle.iter().cycle().take(1_000) {
        h.key(*key);
    }
    let after = live_mib();
    assert!(h.app.error.is_none(), "{:?}", h.app.error);
    assert!(
        after - before < 4.0,
        "live heap grew from {before:.1} MiB to {after:.1} MiB over 1,000 toggles"
    );
}

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
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
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
