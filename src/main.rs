//! The `mwtop` binary: clap front-end over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use color_eyre::eyre::{eyre, Result, WrapErr};

use mwtop::analysis::generate::GenerateParams;
use mwtop::analysis::perplexity::{perplexity, Window};
use mwtop::cli::{self, generate, inspect, load};

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
    /// Continue a prompt: greedy by default, sampled with --temperature.
    Generate {
        /// Model path or hub id; omitted: the demo model.
        model: Option<String>,
        #[arg(long)]
        prompt: String,
        /// Wrap the prompt in the model's chat template (ChatML if it has none).
        #[arg(long)]
        chat: bool,
        #[arg(long, default_value_t = 64)]
        max_tokens: usize,
        /// 0 is greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f64,
        #[arg(long)]
        top_p: Option<f64>,
        #[arg(long, default_value_t = 299_792_458)]
        seed: u64,
        /// Keep going past the end-of-sequence token.
        #[arg(long)]
        no_stop: bool,
        #[command(flatten)]
        run: RunArgs,
        #[arg(long)]
        json: bool,
    },
    /// Perplexity of a text file.
    Eval {
        /// Model path or hub id; omitted: the demo model.
        model: Option<String>,
        /// The text to score (UTF-8).
        #[arg(long)]
        text: PathBuf,
        /// Prepend the BOS token (nothing is prepended otherwise).
        #[arg(long)]
        bos: bool,
        /// Sliding window in tokens (default: min(context, 2048)).
        #[arg(long)]
        window: Option<usize>,
        /// Tokens between window starts (default: half the window).
        #[arg(long)]
        stride: Option<usize>,
        #[command(flatten)]
        run: RunArgs,
        #[arg(long)]
        json: bool,
    },
    /// Fetch the demo model (if needed) and print its path.
    Demo,
}

/// Where and in which precision the model runs.
#[derive(clap::Args)]
struct RunArgs {
    /// cpu, cuda or cuda:N (default: cuda when built in and present, else cpu).
    #[arg(long)]
    device: Option<String>,
    /// Compute dtype: f32 (default; bf16 spacing at 20,000 is 128), f16, bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
}

impl RunArgs {
    fn load(&self, ckpt: &mwtop::checkpoint::Checkpoint) -> Result<mwtop::model::Model> {
        let device = load::parse_device(self.device.as_deref()).map_err(|e| eyre!(e))?;
        let dtype = load::parse_dtype(&self.dtype).map_err(|e| eyre!(e))?;
        Ok(load::load_model(ckpt, &device, dtype)?)
    }
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
        Some(Command::Generate {
            model,
            prompt,
            chat,
            max_tokens,
            temperature,
            top_p,
            seed,
            no_stop,
            run,
            json,
        }) => {
            let ckpt = cli::open_model(model.as_deref().or(cli.model.as_deref()))?;
            let tok = ckpt.tokenizer()?;
            let ids = load::prompt_ids(&ckpt, &tok, &prompt, chat).map_err(|e| eyre!(e))?;
            if ids.is_empty() {
                return Err(eyre!("the prompt is empty"));
            }
            let model = run.load(&ckpt)?;
            let params = GenerateParams {
                max_tokens,
                temperature,
                top_p,
                seed,
                stop_at_eos: !no_stop,
            };
            let report = generate::run(&model, &tok, &ids, &params, json)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                eprintln!(
                    "mwtop: {} tokens in {:.2}s ({:.1} tokens/s), stop: {:?}",
                    report.tokens.len(),
                    report.seconds,
                    report.tokens.len() as f64 / report.seconds.max(1e-9),
                    report.stop
                );
            }
        }
        Some(Command::Eval {
            model,
            text,
            bos,
            window,
            stride,
            run,
            json,
        }) => {
            let ckpt = cli::open_model(model.as_deref().or(cli.model.as_deref()))?;
            let body =
                std::fs::read_to_string(&text).wrap_err_with(|| text.display().to_string())?;
            let tok = ckpt.tokenizer()?;
            let mut ids = tok
                .encode(body.as_str(), false)
                .map_err(|e| eyre!("tokenizer: {e}"))?
                .get_ids()
                .to_vec();
            if bos {
                let b = ckpt
                    .config()
                    .bos_token_id
                    .ok_or_else(|| eyre!("--bos: the model has no BOS token"))?;
                ids.insert(0, b);
            }
            let model = run.load(&ckpt)?;
            let mut w = Window::default_for(&model);
            if let Some(size) = window {
                w.size = size;
                w.stride = size / 2;
            }
            if let Some(s) = stride {
                w.stride = s;
            }
            let report = perplexity(&model, &ids, &[], w)?.remove(0);
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "perplexity {:.4}  (nll {:.4} nats/token over {} scored of {} tokens; window {}, stride {})",
                    report.perplexity, report.nll, report.scored, report.tokens, report.window, report.stride
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
    mwtop::pin_thread_count();
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
