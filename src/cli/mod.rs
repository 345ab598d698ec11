//! The headless subcommands and the UI's launcher. Each subcommand is one
//! function that builds a report (a serde struct) and renders it as human
//! text or, with `--json`, as JSON: the same report for both. stdout
//! carries only the result; progress and logs go to stderr.

mod args;
mod bench;
mod check;
mod convert;
mod eval;
mod finetune;
mod generate;
mod inspect;
mod plot;
mod progress;
mod report;
mod scan;
mod tasks;
mod ui;

use clap::{Parser, Subcommand};
use color_eyre::eyre::{Result, WrapErr};
use serde::Serialize;

use mwtop::checkpoint::{files, Checkpoint};

/// top for the inside of a language model: massive activations and the
/// massive weights that make them.
#[derive(Parser)]
#[command(name = "mwtop", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    ui: ui::UiArgs,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Format, architecture, hyper-parameters and every tensor (reads headers only).
    Inspect(inspect::InspectArgs),
    /// Convert a GGUF file into a Hugging Face directory (dequantized).
    Convert(convert::ConvertArgs),
    /// Continue a prompt: greedy by default, sampled with --temperature.
    Generate(generate::GenerateArgs),
    /// Perplexity of a text file.
    Eval(eval::EvalArgs),
    /// Find massive activations, the massive layer, its massive weights and super weights.
    Scan(scan::ScanArgs),
    /// Zero-shot accuracy (ARC, BoolQ, PIQA, WinoGrande, ...), plain, attacked or swept.
    Tasks(tasks::TasksArgs),
    /// A gate for pipelines: fail (exit 2) when zeroing the top-k massive weights costs too much.
    Check(check::CheckArgs),
    /// One figure (PNG or SVG): a heatmap of the probe's states, attacked or not, or the sweep.
    Plot(plot::PlotArgs),
    /// One self-contained HTML page: the scan, massive weights, sweep and generations.
    Report(report::ReportArgs),
    /// LoRA fine-tuning, with MacDrop on request; writes a PEFT adapter.
    Finetune(finetune::FinetuneArgs),
    /// Speed of this build: prompt and decode tokens/s, capture off and on, the pair, first token.
    Bench(bench::BenchArgs),
    /// Fetch a demo model (if needed) and print its path.
    Demo(DemoArgs),
}

impl Cli {
    /// Whether this run draws the UI (whose logs go to its own panel).
    pub fn is_ui(&self) -> bool {
        self.command.is_none()
    }

    pub fn run(self) -> Result<()> {
        // A subcommand's MODEL wins over one given before the subcommand.
        let model = self.ui.model.clone();
        match self.command {
            Some(Command::Inspect(a)) => a.run(model),
            Some(Command::Convert(a)) => a.run(),
            Some(Command::Generate(a)) => a.run(model),
            Some(Command::Eval(a)) => a.run(model),
            Some(Command::Scan(a)) => a.run(model),
            Some(Command::Tasks(a)) => a.run(model),
            Some(Command::Finetune(a)) => a.run(model),
            Some(Command::Check(a)) => a.run(model),
            Some(Command::Plot(a)) => a.run(model),
            Some(Command::Report(a)) => a.run(model),
            Some(Command::Bench(a)) => a.run(model),
            Some(Command::Demo(a)) => {
                let path = mwtop::demo::ensure_model(a.name.model()).wrap_err("demo model")?;
                write_out(&format!("{}\n", path.display()))
            }
            None => self.ui.run(),
        }
    }
}

#[derive(clap::Args)]
struct DemoArgs {
    /// Which demo model.
    #[arg(value_enum, default_value_t = DemoName::Smollm2)]
    name: DemoName,
}

/// The demo models by name.
#[derive(Clone, Copy, clap::ValueEnum)]
enum DemoName {
    /// SmolLM2-135M-Instruct, Q4_1 (98 MB; the default).
    Smollm2,
    /// Gemma 3 270M base, Q4_K_M (253 MB).
    Gemma3,
}

impl DemoName {
    fn model(self) -> &'static mwtop::demo::DemoModel {
        match self {
            Self::Smollm2 => &mwtop::demo::SMOLLM2,
            Self::Gemma3 => &mwtop::demo::GEMMA3,
        }
    }
}

/// What every subcommand prints: the same report as text or as JSON.
trait Report: Serialize {
    /// The human-readable form, ending with a newline.
    fn text(&self) -> String;

    /// The JSON form (pretty unless a subcommand's scripts want one line).
    fn json(&self) -> serde_json::Result<String> {
        serde_json::to_string_pretty(self)
    }

    fn print(&self, json: bool) -> Result<()> {
        if json {
            write_out(&format!("{}\n", self.json()?))
        } else {
            write_out(&self.text())
        }
    }
}

/// Writes to stdout. A reader that went away (`mwtop ... | head`) ends the
/// output quietly, as other command-line tools do, never with a panic.
fn write_out(text: &str) -> Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        written => Ok(written?),
    }
}

/// A text file the user named: a regular file (a FIFO or a device is
/// refused, never read until memory runs out) of at most
/// [`files::TEXT_LIMIT`] bytes of UTF-8.
fn read_text(path: &std::path::Path) -> Result<String> {
    Ok(files::read_text(path, files::TEXT_LIMIT, "a text")?)
}

/// Opens the subcommand's model, else the one named before it, else the demo model.
fn open(own: Option<&str>, global: Option<&str>) -> Result<Checkpoint> {
    Ok(mwtop::runtime::open_model(own.or(global))?)
}
