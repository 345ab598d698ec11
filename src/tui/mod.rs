//! The terminal UI: ratatui + crossterm on a tokio event loop. The model
//! lives on the engine thread; this loop only reacts to keys, mouse and
//! engine events, and draws when something changed (idle means asleep).

pub mod app;
pub mod heatmap;
pub mod keys;
pub mod tour;
pub mod ui;

use std::time::Duration;

use candle_core::DType;
use crossterm::event::{DisableMouseCapture, EnableMouseCapture, EventStream};
use crossterm::execute;
use futures::StreamExt;

use crate::analysis::generate::DEFAULT_PROMPT;
use crate::analysis::perplexity::EVAL_TEXT;
use crate::engine::{EngineHandle, Event};
use app::App;

/// Routes `tracing` into the log panel (tui-logger).
pub fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let _ = tui_logger::init_logger(tui_logger::LevelFilter::Info);
    tui_logger::set_default_level(tui_logger::LevelFilter::Info);
    let _ = tracing_subscriber::registry()
        .with(tui_logger::TuiTracingSubscriberLayer)
        .try_init();
}

/// What the UI opens and how: the command line's choices.
pub struct Launch {
    /// The model (None: the demo model).
    pub spec: Option<String>,
    pub device: Option<String>,
    pub dtype: DType,
    /// How the matrices are held; None: the device's default.
    pub weights: Option<crate::model::WeightPrecision>,
    pub prompt: Option<String>,
    /// LoRA adapters shown beside the base model.
    pub adapters: Vec<std::path::PathBuf>,
    /// Start the guided tour once the model is scanned.
    pub tour: bool,
}

/// Runs the UI until the user quits. The terminal is restored on return and
/// on panic (ratatui's hook, installed after color-eyre's).
pub fn run(launch: Launch) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut terminal = ratatui::init();
    let _ = execute!(std::io::stdout(), EnableMouseCapture);
    let result = rt.block_on(event_loop(&mut terminal, launch));
    let _ = execute!(std::io::stdout(), DisableMouseCapture);
    ratatui::restore();
    result
}

async fn event_loop(
    terminal: &mut ratatui::DefaultTerminal,
    launch: Launch,
) -> std::io::Result<()> {
    let Launch {
        spec,
        device,
        dtype,
        weights,
        prompt,
        adapters,
        tour,
    } = launch;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    let engine = EngineHandle::spawn(move |e| drop(tx.send(e)), EVAL_TEXT.to_string());
    let mut app = App::new(
        Box::new(move |job| engine.submit(job)),
        prompt.as_deref().unwrap_or(DEFAULT_PROMPT),
    );
    app.tour_on_start = tour;
    app.weights = weights;
    app.start_with_adapters(spec, device, dtype, adapters);
    let mut input = EventStream::new();
    let mut log_tick = tokio::time::interval(Duration::from_millis(250));
    // SIGTERM, SIGHUP and SIGINT (from `kill`; Ctrl-C itself arrives as a
    // key in raw mode) end the UI like `q`, so the terminal is given back.
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    loop {
        if app.dirty {
            terminal.draw(|f| ui::draw(f, &mut app))?;
            app.dirty = false;
        }
        tokio::select! {
            ev = input.next() => match ev {
                Some(Ok(ev)) => app.on_terminal_event(ev),
                Some(Err(e)) => return Err(e),
                None => break,
            },
            Some(ev) = rx.recv() => {
                app.on_engine_event(ev);
                // Take everything already waiting before drawing again.
                while let Ok(ev) = rx.try_recv() {
                    app.on_engine_event(ev);
                }
            }
            _ = log_tick.tick(), if app.show_log => app.dirty = true,
            _ = term.recv() => break,
            _ = hangup.recv() => break,
            _ = interrupt.recv() => break,
        }
        if app.quit {
            break;
        }
    }
    Ok(())
}
