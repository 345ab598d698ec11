//! The `mwtop` binary: parses the command line and dispatches to [`cli`].

use std::process::ExitCode;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::Parser;

mod cli;

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MWTOP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Colours only on a terminal: a log sent to a file or a pipe stays
    // plain text that scripts can read.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .try_init();
}

/// A usage error as one line: clap's first line, plus the values it accepts.
fn usage_error(e: &clap::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    let mut msg = first.trim_start_matches("error: ").to_string();
    // clap lists missing arguments on the lines below its first.
    if e.kind() == ErrorKind::MissingRequiredArgument {
        if let Some(ContextValue::Strings(missing)) = e.get(ContextKind::InvalidArg) {
            msg = format!("{} {}", msg.trim_end_matches(':'), missing.join(", "));
        }
    }
    if let Some(ContextValue::Strings(valid)) = e.get(ContextKind::ValidValue) {
        let list = match valid.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        };
        msg.push_str(&format!(": expected {list}"));
    }
    msg
}

/// One line: the first line of the error and of each cause (candle appends a
/// backtrace to its messages when RUST_BACKTRACE is set). A cause already
/// quoted by the message before it is not repeated.
fn one_line(e: &color_eyre::Report) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        let line = text.lines().next().unwrap_or_default().trim();
        if line.is_empty() || msg.contains(line) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(line);
    }
    msg
}

fn main() -> ExitCode {
    mwtop::pin_thread_count();
    if let Err(e) = color_eyre::install() {
        eprintln!("mwtop: cannot install error hooks: {e}");
    }
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("mwtop: error: {}", usage_error(&e));
            return ExitCode::FAILURE;
        }
    };
    if cli.is_ui() {
        mwtop::tui::init_logging();
    } else {
        init_logging();
    }
    match cli.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mwtop: error: {}", mwtop::runtime::explain(one_line(&e)));
            ExitCode::FAILURE
        }
    }
}
