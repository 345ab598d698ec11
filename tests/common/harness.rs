//! The TUI driven in-process: the App with the real engine on the planted
//! synthetic checkpoint, fed key events, waiting for the engine's results.
#![allow(dead_code)]

use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use candle_core::DType;
use crossterm::event::{Event as TermEvent, KeyCode, KeyEvent};
use mwtop::engine::{EngineHandle, Event};
use mwtop::synthetic::Spec;
use mwtop::tui::app::App;
use mwtop::tui::ui;
use ratatui::backend::TestBackend;
use ratatui::Terminal;

use crate::common;

pub struct Harness {
    pub _dir: tempfile::TempDir,
    pub app: App,
    pub rx: Receiver<Event>,
}

impl Harness {
    pub fn new() -> Self {
        Self::with_adapters(|_| Vec::new())
    }

    /// The planted model with the adapters `make` writes beside it.
    pub fn with_adapters(make: impl FnOnce(&std::path::Path) -> Vec<std::path::PathBuf>) -> Self {
        Self::build(make, mwtop::analysis::perplexity::EVAL_TEXT, 12)
    }

    /// A session that scores `eval_text` and generates `max_tokens` per
    /// toggle (long sessions of many toggles use short ones).
    pub fn with_workload(eval_text: &str, max_tokens: usize) -> Self {
        Self::build(|_| Vec::new(), eval_text, max_tokens)
    }

    fn build(
        make: impl FnOnce(&std::path::Path) -> Vec<std::path::PathBuf>,
        eval_text: &str,
        max_tokens: usize,
    ) -> Self {
        let dir = common::tempdir();
        let path = dir.path().join("planted");
        Spec::planted()
            .write_hf_dir(&path, safetensors::Dtype::F32)
            .unwrap();
        let adapters = make(&path);
        let (tx, rx) = mpsc::channel();
        let engine = EngineHandle::spawn(move |e| drop(tx.send(e)), eval_text.to_string());
        let mut app = App::new(Box::new(move |job| engine.submit(job)), "Hi");
        app.max_tokens = max_tokens;
        app.start_with_adapters(
            Some(path.to_str().unwrap().to_string()),
            Some("cpu".to_string()),
            DType::F32,
            adapters,
        );
        let mut h = Self { _dir: dir, app, rx };
        h.settle();
        h
    }

    /// Feeds engine events to the app until everything asked for has arrived.
    pub fn settle(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let a = &self.app;
            let done = a.error.is_some()
                || (a.probe.is_some()
                    && a.detail.as_ref().is_some_and(|d| d.layer == a.layer)
                    && a.states.as_ref().is_some_and(|s| s.layer() == a.layer)
                    && !a.generating
                    && a.perplexity.1.is_some());
            if done {
                // Drain anything still queued (stale epochs are ignored by the app).
                while let Ok(e) = self.rx.recv_timeout(Duration::from_millis(50)) {
                    self.app.on_engine_event(e);
                }
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the engine did not finish in time"
            );
            if let Ok(e) = self.rx.recv_timeout(Duration::from_millis(100)) {
                self.app.on_engine_event(e);
            }
        }
    }

    pub fn key(&mut self, code: KeyCode) {
        self.app
            .on_terminal_event(TermEvent::Key(KeyEvent::from(code)));
        self.settle();
    }

    pub fn screen(&mut self, w: u16, h: u16) -> String {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| ui::draw(f, &mut self.app)).unwrap();
        t.backend().to_string()
    }

    /// The drawn cells, colours included.
    pub fn cells(&mut self, w: u16, h: u16) -> ratatui::buffer::Buffer {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| ui::draw(f, &mut self.app)).unwrap();
        t.backend().buffer().clone()
    }
}
