//! `mwtop finetune`: LoRA fine-tuning (with MacDrop on request) of the
//! loaded model on instruction data or text; the adapter is written in
//! PEFT's format, with a checkpoint to resume every N updates and when
//! interrupted (Ctrl-C or SIGTERM).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use color_eyre::eyre::{bail, eyre, Result};
use serde::Serialize;

use mwtop::analysis::target::{self, DEFAULT_PROBE};
use mwtop::analysis::zero_shot::bos_added;
use mwtop::checkpoint::adapter::AdapterFile;
use mwtop::checkpoint::Proj;
use mwtop::model::lora::Lora;
use mwtop::train::data::{self, Encoded};
use mwtop::train::macdrop::{MacDrop, Schedule};
use mwtop::train::{self, TrainConfig};

use super::args::{RunArgs, ThresholdArgs};
use super::progress::Counter;
use super::Report;

#[derive(clap::Args)]
pub struct FinetuneArgs {
    /// Model path or hub id; omitted: the demo model.
    model: Option<String>,
    /// Training data: a file (JSON array or JSON lines of Alpaca records
    /// {instruction, input, output} or {text}; any other file is plain
    /// text) or a dataset mwtop fetches: alpaca-en-demo.
    #[arg(long)]
    data: String,
    /// The adapter directory to write (replaced atomically; an existing
    /// directory that is not an adapter is refused).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 16, value_parser = super::args::at_least_one, allow_negative_numbers = true)]
    lora_rank: usize,
    #[arg(long, default_value_t = 16.0, value_parser = super::args::finite_positive, allow_negative_numbers = true)]
    lora_alpha: f64,
    /// Projections adapted in every layer (comma-separated: q, k, v, o,
    /// gate, up, down).
    #[arg(long, value_delimiter = ',', default_value = "q,k,v,o,gate,up,down")]
    targets: Vec<String>,
    /// Peak learning rate (AdamW, no weight decay).
    #[arg(long, default_value_t = 1e-4, value_parser = super::args::finite_positive, allow_negative_numbers = true)]
    lr: f64,
    #[arg(long, default_value_t = 3, conflicts_with = "steps", value_parser = super::args::at_least_one, allow_negative_numbers = true)]
    epochs: usize,
    /// Stop after this many updates instead of after --epochs.
    #[arg(long, value_parser = super::args::at_least_one, allow_negative_numbers = true)]
    steps: Option<usize>,
    /// Examples per forward.
    #[arg(long, default_value_t = 8, value_parser = super::args::at_least_one, allow_negative_numbers = true)]
    batch: usize,
    /// Forwards per update (the paper's effective batch of 256: --batch 8 --grad-accum 32).
    #[arg(long, default_value_t = 32, value_parser = super::args::at_least_one, allow_negative_numbers = true)]
    grad_accum: usize,
    /// Share of the updates that warm the learning rate up (then it falls linearly to 0).
    #[arg(long, default_value_t = 0.05, value_parser = super::args::unit_interval, allow_negative_numbers = true)]
    warmup: f64,
    /// Tokens per example (longer ones are cut; an instruction whose
    /// prompt alone is that long is skipped).
    #[arg(long, default_value_t = 512, allow_negative_numbers = true)]
    max_len: usize,
    /// Only the first N records.
    #[arg(long, value_parser = super::args::at_least_one, allow_negative_numbers = true)]
    limit: Option<usize>,
    /// Seed of the adapter's initial A, the data order and MacDrop's masks.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Start from this adapter (PEFT's format) instead of PEFT's initialisation.
    #[arg(long, conflicts_with = "resume")]
    init_adapter: Option<PathBuf>,
    /// Continue the run saved in --out (same settings and data).
    #[arg(long)]
    resume: bool,
    /// Write a checkpoint every N updates.
    #[arg(long, default_value_t = 50, value_parser = super::args::at_least_one, allow_negative_numbers = true)]
    save_every: usize,
    /// MacDrop: drop elements of the massive rows of W_up and W_gate each update.
    #[arg(long)]
    macdrop: bool,
    /// MacDrop's massive rows (the top k of the scan).
    #[arg(long, default_value_t = 5, requires = "macdrop", value_parser = super::args::at_least_one, allow_negative_numbers = true)]
    k: usize,
    /// MacDrop's initial drop probability.
    #[arg(long, default_value_t = 0.8, requires = "macdrop", value_parser = super::args::unit_interval, allow_negative_numbers = true)]
    p0: f64,
    /// MacDrop's layer (default: the massive layer of a scan of --probe).
    #[arg(long, requires = "macdrop", allow_negative_numbers = true)]
    layer: Option<usize>,
    /// How MacDrop's probability falls: step (the paper's), epoch, exp or constant.
    #[arg(long, value_enum, default_value_t = Schedule::Step, requires = "macdrop")]
    schedule: Schedule,
    #[arg(long, default_value = DEFAULT_PROBE)]
    probe: String,
    #[command(flatten)]
    thresholds: ThresholdArgs,
    #[command(flatten)]
    run: RunArgs,
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct FinetuneReport {
    out: PathBuf,
    data: String,
    examples: usize,
    skipped: usize,
    truncated: usize,
    trainable_parameters: usize,
    updates: usize,
    total_updates: usize,
    finished: bool,
    interrupted: bool,
    tokens: usize,
    seconds: f64,
    tokens_per_second: f64,
    first_loss: Option<f64>,
    last_loss: Option<f64>,
    losses: Vec<f64>,
    /// Seconds since the start at the end of each update, and the tokens
    /// it counted (a benchmark leaves the first, warm-up update out).
    update_seconds: Vec<f64>,
    update_tokens: Vec<usize>,
    macdrop: Option<MacDrop>,
}

impl Report for FinetuneReport {
    fn text(&self) -> String {
        let loss = |l: Option<f64>| l.map_or("-".into(), |l| format!("{l:.4}"));
        let mut s = format!(
            "adapter      {}\nexamples     {} ({} skipped, {} cut at --max-len)\nupdates      {} of {}{}\ntokens       {} in {:.1} s ({:.0} tokens/s)\nloss         {} -> {}\n",
            self.out.display(),
            self.examples,
            self.skipped,
            self.truncated,
            self.updates,
            self.total_updates,
            if self.interrupted { " (interrupted: --resume continues)" } else { "" },
            self.tokens,
            self.seconds,
            self.tokens_per_second,
            loss(self.first_loss),
            loss(self.last_loss),
        );
        if let Some(m) = &self.macdrop {
            s.push_str(&format!(
                "macdrop      layer {}, rows {:?}, p0 {}, {:?} schedule\n",
                m.layer, m.rows, m.p0, m.schedule
            ));
        }
        s
    }
}

fn proj(name: &str) -> Result<Proj> {
    Ok(match name.trim() {
        "q" | "q_proj" => Proj::Q,
        "k" | "k_proj" => Proj::K,
        "v" | "v_proj" => Proj::V,
        "o" | "o_proj" => Proj::O,
        "gate" | "gate_proj" => Proj::Gate,
        "up" | "up_proj" => Proj::Up,
        "down" | "down_proj" => Proj::Down,
        other => bail!("--targets: {other:?} is not one of q, k, v, o, gate, up, down"),
    })
}

impl FinetuneArgs {
    pub fn run(mut self, global: Option<String>) -> Result<()> {
        if !self.run.adapter.is_empty() {
            bail!("finetune trains a new adapter: use --init-adapter to start from one");
        }
        if !matches!(self.run.dtype, super::args::DTypeArg::F32) {
            bail!("finetune computes in f32 (as the paper's LoRA and PEFT's reference do): drop --dtype");
        }
        if self.max_len < 2 {
            bail!("--max-len must be at least 2");
        }
        // Training reads every matrix several times a step: a dense f32 copy
        // unless `--weights stored` asks to trade speed for memory.
        self.run.weights.get_or_insert(super::args::WeightsArg::F32);
        let mut targets = self
            .targets
            .iter()
            .map(|t| proj(t))
            .collect::<Result<Vec<_>>>()?;
        targets.sort();
        targets.dedup();
        mwtop::checkpoint::adapter::check_replaceable(&self.out)?;
        let ckpt = super::open(self.model.as_deref(), global.as_deref())?;
        let tok = ckpt.tokenizer()?;
        let path = data::resolve(&self.data)?;
        let mut records = data::read_records(&path)?;
        if let Some(n) = self.limit {
            if n == 0 {
                bail!("--limit must be at least 1");
            }
            records.truncate(n);
        }
        let model = self.run.load(&ckpt)?;
        let config = model.config();
        let bos = bos_added(&tok, config.bos_token_id);
        let eos = config.eos_token_ids.first().copied();
        let Encoded {
            examples,
            skipped,
            truncated,
        } = data::encode(&records, &tok, bos, eos, self.max_len)?;
        let macdrop = if self.macdrop {
            if self.k == 0 {
                bail!("--k must be at least 1");
            }
            let th = self.thresholds.get();
            let t = target::resolve_target(&model, &tok, &self.probe, th, self.layer, None)?;
            let t = if self.layer.is_some() {
                t
            } else {
                t.require_massive(&self.probe, th)?
            };
            Some(MacDrop {
                layer: t.layer,
                rows: t.ranked.iter().copied().take(self.k).collect(),
                p0: self.p0,
                schedule: self.schedule,
                seed: self.seed,
            })
        } else {
            None
        };
        let resume = if self.resume {
            if !self.out.join(train::STATE_FILE).is_file() {
                bail!("--resume: {} holds no saved run", self.out.display());
            }
            Some(train::read_state(&self.out)?)
        } else {
            None
        };
        let start_from = if self.resume {
            Some(self.out.clone())
        } else {
            self.init_adapter.clone()
        };
        let lora = match start_from {
            Some(dir) => {
                let file = AdapterFile::read(&dir)?;
                Lora::from_tensors(&model, file.rank, file.alpha, file.tensors)?
            }
            None => Lora::init(&model, &targets, self.lora_rank, self.lora_alpha, self.seed)?,
        };
        let trainable = lora.parameter_count();
        let cfg = TrainConfig {
            epochs: if self.steps.is_some() { 1 } else { self.epochs },
            max_steps: self.steps,
            batch: self.batch,
            grad_accum: self.grad_accum,
            lr: self.lr,
            warmup: self.warmup,
            seed: self.seed,
            macdrop: macdrop.clone(),
            save_every: Some(self.save_every),
            out: self.out.clone(),
            base_model: Some(ckpt.source().display().to_string()),
            data: self.data.clone(),
        };
        tracing::info!(
            examples = examples.len(),
            trainable,
            "training into {}",
            self.out.display()
        );
        let stop = Arc::new(AtomicBool::new(false));
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(signal, stop.clone())
                .map_err(|e| eyre!("cannot watch for Ctrl-C: {e}"))?;
        }
        let mut counter = Counter::new(true);
        let (mut update_seconds, mut update_tokens) = (Vec::new(), Vec::new());
        let done = train::train(&model, lora, &examples, &cfg, resume, &stop, |r| {
            update_tokens.push(r.counted);
            update_seconds.push(r.seconds);
            let rate = r.tokens as f64 / r.seconds.max(1e-9);
            let eta = r.seconds / r.step.max(1) as f64 * (r.total - r.step) as f64;
            let p = r.p.map_or(String::new(), |p| format!(" · p {p:.2}"));
            counter.show(&format!(
                "update {}/{} · epoch {} · loss {:.4} · lr {:.2e}{p} · {rate:.0} tokens/s · ETA {eta:.0}s",
                r.step,
                r.total,
                r.epoch + 1,
                r.loss,
                r.lr,
            ));
        })?;
        counter.finish(None);
        let state = &done.state;
        let report = FinetuneReport {
            out: self.out.clone(),
            data: self.data.clone(),
            examples: examples.len(),
            skipped,
            truncated,
            trainable_parameters: trainable,
            updates: state.step,
            total_updates: state.total,
            finished: state.finished,
            interrupted: done.interrupted,
            tokens: state.tokens,
            seconds: done.seconds,
            tokens_per_second: state.tokens as f64 / done.seconds.max(1e-9),
            first_loss: state.losses.first().copied(),
            last_loss: state.losses.last().copied(),
            losses: state.losses.clone(),
            update_seconds,
            update_tokens,
            macdrop,
        };
        report.print(self.json)
    }
}
