//! The `mwtop` binary: clap front-end over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use color_eyre::eyre::{eyre, Result, WrapErr};

use mwtop::analysis::attack::AttackMode;
use mwtop::analysis::generate::GenerateParams;
use mwtop::analysis::massive::{self, Thresholds};
use mwtop::analysis::perplexity::{perplexity, Window};
use mwtop::cli::{self, generate, inspect, load};
use mwtop::model::intervention::Interventions;

mod args;
use args::{describe, AttackArgs, OutDType, RunArgs, ThresholdArgs};

/// top for the inside of a language model: massive activations and the
/// massive weights that make them.
#[derive(Parser)]
#[command(name = "mwtop", version, about, long_about = None)]
struct Cli {
    /// Model: a Hugging Face directory, a .gguf file or a hub id
    /// (owner/name). Omitted: the SmolLM2-135M-Instruct demo model.
    model: Option<String>,

    /// The UI's first prompt.
    #[arg(long)]
    prompt: Option<String>,

    #[command(flatten)]
    run: RunArgs,

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
        attack: AttackArgs,
        /// Print the original and the attacked generation side by side (one batch of two).
        #[arg(long)]
        compare: bool,
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
        attack: AttackArgs,
        /// Seed of the random-k controls.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Every mode for k in {0,1,2,4,8,16,32}: the paper's table.
        #[arg(long)]
        sweep: bool,
        /// Also print the log-probability of every scored token (--json).
        #[arg(long)]
        per_token: bool,
        #[command(flatten)]
        run: RunArgs,
        #[arg(long)]
        json: bool,
    },
    /// Find massive activations, the massive layer, its massive weights and super weights.
    Scan {
        /// Model path or hub id; omitted: the demo model.
        model: Option<String>,
        /// The probe text (BOS is put first when the model has one).
        #[arg(long, default_value = cli::attack::DEFAULT_PROBE)]
        prompt: String,
        /// How many massive weights (d_ff dims) to list.
        #[arg(long, default_value_t = 8)]
        k: usize,
        #[command(flatten)]
        thresholds: ThresholdArgs,
        #[command(flatten)]
        run: RunArgs,
        #[arg(long)]
        json: bool,
    },
    /// Speed of this build: prompt and decode tokens/s, capture off and on, the pair, first token.
    Bench {
        /// Model path or hub id; omitted: the demo model.
        model: Option<String>,
        /// Decode steps to time.
        #[arg(long, default_value_t = 64)]
        decode: usize,
        #[command(flatten)]
        run: RunArgs,
        #[arg(long)]
        json: bool,
    },
    /// Fetch the demo model (if needed) and print its path.
    Demo,
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
            attack,
            compare,
            run,
            json,
        }) => {
            let ckpt = cli::open_model(model.as_deref().or(cli.model.as_deref()))?;
            let tok = ckpt.tokenizer()?;
            let ids = load::prompt_ids(&ckpt, &tok, &prompt, chat).map_err(|e| eyre!(e))?;
            if ids.is_empty() {
                return Err(eyre!("the prompt is empty"));
            }
            attack.mode()?;
            let model = run.load(&ckpt)?;
            let params = GenerateParams {
                max_tokens,
                temperature,
                top_p,
                seed,
                stop_at_eos: !no_stop,
                cancel: None,
            };
            let resolved = attack.resolve(&model, &tok, seed, compare)?;
            let attacked = resolved
                .as_ref()
                .map(|(_, a)| a.interventions())
                .unwrap_or_default();
            let rows = if compare {
                vec![Interventions::none(), attacked]
            } else {
                vec![attacked]
            };
            let mut reports = generate::run(&model, &tok, &ids, &rows, &params, !json && !compare)?;
            let label = resolved
                .as_ref()
                .map(|(_, a)| describe(a))
                .unwrap_or_else(|| "original".into());
            if json {
                let value = if compare {
                    let attacked = reports.pop().expect("two rows");
                    let original = reports.pop().expect("two rows");
                    serde_json::json!({"original": original, "attacked": attacked, "attack": resolved.map(|(_, a)| a)})
                } else {
                    let mut v = serde_json::to_value(reports.pop().expect("one row"))?;
                    v["attack"] = serde_json::to_value(resolved.map(|(_, a)| a))?;
                    v
                };
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else if compare {
                let width = std::env::var("COLUMNS")
                    .ok()
                    .and_then(|c| c.parse().ok())
                    .or_else(|| crossterm::terminal::size().ok().map(|(w, _)| w as usize))
                    .unwrap_or(100);
                print!(
                    "{}",
                    generate::side_by_side(
                        "original",
                        &reports[0].text,
                        &label,
                        &reports[1].text,
                        width
                    )
                );
            } else {
                let r = &reports[0];
                eprintln!(
                    "mwtop: {} tokens in {:.2}s ({:.1} tokens/s), stop: {:?}; {label}",
                    r.tokens.len(),
                    r.seconds,
                    r.tokens.len() as f64 / r.seconds.max(1e-9),
                    r.stop
                );
            }
        }
        Some(Command::Eval {
            model,
            text,
            bos,
            window,
            stride,
            attack,
            seed,
            sweep,
            per_token,
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
            attack.mode()?;
            let model = run.load(&ckpt)?;
            let mut w = Window::default_for(&model);
            if let Some(size) = window {
                w.size = size;
                w.stride = size / 2;
            }
            if let Some(s) = stride {
                w.stride = s;
            }
            if sweep {
                let (target, _) = attack
                    .resolve(&model, &tok, seed, true)?
                    .expect("resolved when needed");
                let attacks = cli::attack::sweep_attacks(&target, model.config().d_ff, seed);
                let t0 = std::time::Instant::now();
                let ppl = cli::attack::run_attacks(&model, &ids, &attacks, w)?;
                let runs: Vec<cli::attack::SweepRun> = attacks
                    .iter()
                    .zip(&ppl)
                    .map(|(a, p)| cli::attack::SweepRun {
                        mode: a.mode,
                        k: a.k,
                        dims: a.dims.clone(),
                        perplexity: p.perplexity,
                    })
                    .collect();
                if json {
                    let v = serde_json::json!({"layer": target.layer, "ranked_dims": &target.ranked[..target.ranked.len().min(32)], "tokens": ids.len(), "seconds": t0.elapsed().as_secs_f64(), "runs": runs});
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    let top: Vec<String> =
                        target.ranked.iter().take(8).map(usize::to_string).collect();
                    println!(
                        "perplexity of {} ({} tokens{}), attacks on layer {} (massive dims {} ...), {:.1}s",
                        text.display(),
                        ids.len(),
                        if bos { ", BOS first" } else { "" },
                        target.layer,
                        top.join(","),
                        t0.elapsed().as_secs_f64()
                    );
                    print!("{}", cli::attack::render_sweep(&runs));
                }
                return Ok(());
            }
            let resolved = attack.resolve(&model, &tok, seed, false)?;
            let rows: Vec<Interventions> =
                resolved.iter().map(|(_, a)| a.interventions()).collect();
            let mut report = perplexity(&model, &ids, &rows, w)?.remove(0);
            if !per_token {
                report.logprobs.clear();
            }
            let (mode, layer, dims) = match &resolved {
                Some((_, a)) => (a.mode, Some(a.layer), a.dims.clone()),
                None => (AttackMode::Original, None, Vec::new()),
            };
            if json {
                let mut v = serde_json::to_value(&report)?;
                v["mode"] = mode.name().into();
                v["layer"] = serde_json::to_value(layer)?;
                v["dims"] = serde_json::to_value(&dims)?;
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let label = resolved
                    .as_ref()
                    .map(|(_, a)| describe(a))
                    .unwrap_or_else(|| "original".into());
                println!(
                    "perplexity {:.4}  (nll {:.4} nats/token over {} scored of {} tokens; window {}, stride {}; {label})",
                    report.perplexity, report.nll, report.scored, report.tokens, report.window, report.stride
                );
            }
        }
        Some(Command::Scan {
            model,
            prompt,
            k,
            thresholds,
            run,
            json,
        }) => {
            let ckpt = cli::open_model(model.as_deref().or(cli.model.as_deref()))?;
            let tok = ckpt.tokenizer()?;
            let ids = tok
                .encode(prompt.as_str(), false)
                .map_err(|e| eyre!("tokenizer: {e}"))?
                .get_ids()
                .to_vec();
            let model = run.load(&ckpt)?;
            let (probe, position0) = massive::probe_tokens(&model, &ids);
            if probe.is_empty() {
                return Err(eyre!("the prompt is empty and the model has no BOS token"));
            }
            let report = massive::scan(&model, &tok, &probe, position0, k, thresholds.get())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", cli::scan::render(&report));
            }
        }
        Some(Command::Bench {
            model,
            decode,
            run,
            json,
        }) => {
            let ckpt = cli::open_model(model.as_deref().or(cli.model.as_deref()))?;
            let tok = ckpt.tokenizer()?;
            let mut model = run.load(&ckpt)?;
            let (eval_ids, _) = massive::probe_tokens(
                &model,
                tok.encode(mwtop::tui::EVAL_TEXT, false)
                    .map_err(|e| eyre!("tokenizer: {e}"))?
                    .get_ids(),
            );
            let chat = load::prompt_ids(&ckpt, &tok, mwtop::tui::DEFAULT_PROMPT, true)
                .map_err(|e| eyre!(e))?;
            let attack = cli::attack::resolve_target(
                &model,
                &tok,
                cli::attack::DEFAULT_PROBE,
                Thresholds::default(),
                None,
                None,
            )
            .ok()
            .map(|t| cli::bench::default_attack(&t, model.config().d_ff));
            let r = cli::bench::run(&mut model, &tok, &eval_ids, &chat, attack.as_ref(), decode)?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "{} {}: prompt {:.0} tok/s ({:.0} with capture, {} tokens); decode {:.1} tok/s ({:.1} with capture, {:.1} per row as an original+attacked pair; {:.1} launching kernels one by one, host {:.2} ms of each of those tokens); first token {:.0} ms",
                    r.device, r.dtype, r.prompt_tok_s, r.prompt_tok_s_capture, r.prompt_tokens, r.decode_tok_s, r.decode_tok_s_capture, r.decode_tok_s_pair, r.decode_tok_s_eager, r.decode_host_ms, r.first_token_ms
                );
            }
        }
        Some(Command::Demo) => {
            let path = mwtop::demo::ensure().wrap_err("demo model")?;
            println!("{}", path.display());
        }
        None => {
            // The device itself is created on the engine thread; check the spelling here.
            load::check_device_spec(cli.run.device.as_deref()).map_err(|e| eyre!(e))?;
            let dtype = load::parse_dtype(&cli.run.dtype).map_err(|e| eyre!(e))?;
            let device = cli.run.device.clone();
            // A path that does not exist fails here, before the screen is taken.
            if let Some(m) = &cli.model {
                if !std::path::Path::new(m).exists()
                    && !mwtop::checkpoint::hub::looks_like_hub_id(m)
                {
                    return Err(eyre!("{m}: no such file or directory"));
                }
            }
            if cli.model.is_none() {
                // The first run downloads the demo model: show pip's progress on the
                // plain terminal rather than under the UI.
                mwtop::demo::ensure().wrap_err("demo model")?;
            }
            mwtop::tui::run(cli.model.clone(), device, dtype, cli.prompt.clone())?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    mwtop::pin_thread_count();
    if let Err(e) = color_eyre::install() {
        eprintln!("mwtop: cannot install error hooks: {e}");
    }
    let cli = Cli::parse();
    if cli.command.is_none() {
        mwtop::tui::init_logging();
    } else {
        init_logging();
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the first line of the error and of each cause (candle
            // appends a backtrace to its messages when RUST_BACKTRACE is set).
            // A cause already quoted by the message before it is not repeated.
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
            eprintln!("mwtop: error: {msg}");
            ExitCode::FAILURE
        }
    }
}
