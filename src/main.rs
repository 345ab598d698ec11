//! The `mwtop` binary: clap front-end over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use color_eyre::eyre::{Result, WrapErr};

use mwtop::cli::{self, inspect};

/// top for the inside of a language model: massive activations and the
/// massive weights that make them.
#[derive(Parser)]
#[command(name = "mwtop", version, about, long_about = None)]
struct Cli {
    /// Model: a Hugging Face directory, a .gguf file or a hub id
    /// (owner/name). Omitted: the SmolLM2-135M-Instruct demo model.
    model: Option<String>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Format, architecture, hyper-parameters and every tensor (reads headers only).
    Inspect {
        /// Model path or hub id; omitted: the demo model.
        model: Option<String>,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Convert a GGUF file into a Hugging Face directory (dequantized).
    Convert {
        /// The .gguf file (or hub id / path mwtop can open).
        model: String,
        /// Output directory; must not exist (or be empty).
        out: PathBuf,
        /// dtype of the written tensors.
        #[arg(long, value_enum, default_value_t = OutDType::F32)]
        dtype: OutDType,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Fetch the demo model (if needed) and print its path.
    Demo,
}

#[derive(Clone, Copy, ValueEnum)]
enum OutDType {
    F32,
    F16,
    Bf16,
}

impl From<OutDType> for candle_core::DType {
    fn from(d: OutDType) -> Self {
        match d {
            OutDType::F32 => Self::F32,
            OutDType::F16 => Self::F16,
            OutDType::Bf16 => Self::BF16,
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MWTOP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Some(Command::Inspect { model, json }) => {
            let ckpt = cli::open_model(model.as_deref().or(cli.model.as_deref()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&inspect::report(&ckpt))?);
            } else {
                print!("{}", inspect::render_text(&ckpt));
            }
        }
        Some(Command::Convert {
            model,
            out,
            dtype,
            json,
        }) => {
            let ckpt = cli::open_model(Some(&model))?;
            let report = mwtop::convert::convert(&ckpt, &out, dtype.into())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "wrote {} ({} tensors, {:.1} MB, {})",
                    report.out_dir.display(),
                    report.tensors,
                    report.bytes as f64 / 1e6,
                    report.dtype
                );
            }
        }
        Some(Command::Demo) => {
            let path = mwtop::demo::ensure().wrap_err("demo model")?;
            println!("{}", path.display());
        }
        None => {
            // The TUI is not built yet: show what the model is.
            let ckpt = cli::open_model(cli.model.as_deref())?;
            print!("{}", inspect::summary(&ckpt));
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    if let Err(e) = color_eyre::install() {
        eprintln!("mwtop: cannot install error hooks: {e}");
    }
    init_logging();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes, no backtrace.
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("mwtop: error: {msg}");
            ExitCode::FAILURE
        }
    }
}
