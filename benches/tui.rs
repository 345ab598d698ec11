//! TUI figures on the demo model, 2 CPU cores:
//! - keypress (toggle) to the first new token of the attacked generation;
//! - drawing one 200x60 frame;
//! - CPU used by the idle UI (the real binary in a pseudo-terminal).
//!
//! Run: cargo bench --bench tui

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use candle_core::DType;
use mwtop::engine::EngineHandle;
use mwtop::tui::app::App;
use mwtop::tui::keys::Action;
use ratatui::backend::TestBackend;
use ratatui::Terminal;

fn main() {
    mwtop::pin_thread_count();
    let model = common::demo_model();
    let (tx, rx) = mpsc::channel();
    let engine = EngineHandle::spawn(
        move |e| drop(tx.send(e)),
        mwtop::analysis::perplexity::EVAL_TEXT.to_string(),
    );
    let mut app = App::new(
        Box::new(move |job| engine.submit(job)),
        mwtop::analysis::generate::DEFAULT_PROMPT,
    );
    app.start(
        Some(model.to_str().unwrap().to_string()),
        Some("cpu".to_string()),
        DType::F32,
    );
    let settle = |app: &mut App| {
        let deadline = Instant::now() + Duration::from_secs(300);
        while !(app.probe.is_some() && !app.generating && app.perplexity.1.is_some()) {
            assert!(Instant::now() < deadline);
            if let Ok(e) = rx.recv_timeout(Duration::from_millis(20)) {
                app.on_engine_event(e);
            }
        }
    };
    settle(&mut app);

    // Toggle while the previous generation and perplexity may still run, as a user does.
    let mut latencies = Vec::new();
    for i in 0..8 {
        app.act(if i % 2 == 0 {
            Action::Zero
        } else {
            Action::Keep
        });
        let t = Instant::now();
        while app.first_token_latency.is_none() {
            assert!(t.elapsed() < Duration::from_secs(60));
            if let Ok(e) = rx.recv_timeout(Duration::from_millis(1)) {
                app.on_engine_event(e);
            }
        }
        latencies.push(app.first_token_latency.unwrap().as_secs_f64() * 1e3);
        // Let it run a little before the next toggle.
        let until = Instant::now() + Duration::from_millis(400);
        while Instant::now() < until {
            if let Ok(e) = rx.recv_timeout(Duration::from_millis(5)) {
                app.on_engine_event(e);
            }
        }
    }
    settle(&mut app);
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());

    let mut term = Terminal::new(TestBackend::new(200, 60)).unwrap();
    let frames = 200;
    let t = Instant::now();
    for _ in 0..frames {
        term.draw(|f| mwtop::tui::ui::draw(f, &mut app)).unwrap();
    }
    let frame_ms = t.elapsed().as_secs_f64() * 1e3 / frames as f64;

    // Idle CPU of the real UI: settle, then read its CPU time over 5 s of nothing.
    let t = common::Pty::spawn(
        env!("CARGO_BIN_EXE_mwtop"),
        &[model.to_str().unwrap()],
        &[],
        40,
        120,
    );
    t.wait_for(r"original · ppl 22\.56", Duration::from_secs(300));
    t.wait_for(r"keep only", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(2));
    let pid = t.pid();
    let cpu0 = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(5));
    let cpu1 = cpu_ticks(pid);
    let hz = 100.0; // USER_HZ on Linux
    let idle_pct = (cpu1 - cpu0) as f64 / hz / 5.0 * 100.0;

    println!(
        "demo model, f32, {} CPU threads",
        candle_core::utils::get_num_threads()
    );
    println!(
        "  toggle to first new token: median {:.0} ms, min {:.0}, max {:.0} over {} toggles (goal <= 300 ms)",
        latencies[latencies.len() / 2],
        latencies[0],
        latencies[latencies.len() - 1],
        latencies.len()
    );
    println!("  draw one 200x60 frame: {frame_ms:.2} ms (goal <= 2 ms)");
    println!("  idle UI: {idle_pct:.2}% of one core over 5 s (utime+stime of the process)");
}

/// utime + stime of a process, in clock ticks (/proc/PID/stat fields 14 and 15).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}
