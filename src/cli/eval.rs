//! `mwtop eval`: perplexity of a text file, plain, under one attack, or
//! under every attack of the paper's table (`--sweep`).

use std::fmt::Write as _;
use std::path::PathBuf;

use color_eyre::eyre::{bail, eyre, Result};
use serde::Serialize;

use mwtop::analysis::attack::{Attack, AttackMode};
use mwtop::analysis::perplexity::{perplexity, Perplexity, Window};
use mwtop::analysis::sweep::{SweepRun, SWEEP_KS, SWEEP_MODES};
use mwtop::display::{describe_attack, format_ppl};
use mwtop::model::intervention::Interventions;

use super::args::{AttackArgs, RunArgs};
use super::Report;

#[derive(clap::Args)]
pub struct EvalArgs {
    /// Model path or hub id; omitted: the demo model.
    model: Option<String>,
    /// The text to score (UTF-8).
    #[arg(long)]
    text: PathBuf,
    /// Prepend the BOS token (nothing is prepended otherwise).
    #[arg(long)]
    bos: bool,
    /// Sliding window in tokens (default: min(context, 2048)).
    #[arg(long, allow_negative_numbers = true)]
    window: Option<usize>,
    /// Tokens between window starts (default: half the window).
    #[arg(long, allow_negative_numbers = true)]
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
}

/// One perplexity, with the attack it ran under.
#[derive(Serialize)]
struct EvalReport {
    #[serde(flatten)]
    result: Perplexity,
    mode: AttackMode,
    layer: Option<usize>,
    dims: Vec<usize>,
    #[serde(skip)]
    label: String,
}

impl Report for EvalReport {
    fn text(&self) -> String {
        let r = &self.result;
        format!(
            "perplexity {:.4}  (nll {:.4} nats/token over {} scored of {} tokens; window {}, stride {}; {})\n",
            r.perplexity, r.nll, r.scored, r.tokens, r.window, r.stride, self.label
        )
    }
}

/// The paper's table for one text.
#[derive(Serialize)]
struct SweepReport {
    layer: usize,
    ranked_dims: Vec<usize>,
    tokens: usize,
    seconds: f64,
    runs: Vec<SweepRun>,
    #[serde(skip)]
    text_name: String,
    #[serde(skip)]
    bos: bool,
}

impl Report for SweepReport {
    fn text(&self) -> String {
        let top: Vec<String> = self
            .ranked_dims
            .iter()
            .take(8)
            .map(usize::to_string)
            .collect();
        format!(
            "perplexity of {} ({} tokens{}), attacks on layer {} (massive dims {} ...), {:.1}s\n{}",
            self.text_name,
            self.tokens,
            if self.bos { ", BOS first" } else { "" },
            self.layer,
            top.join(","),
            self.seconds,
            render_sweep(&self.runs)
        )
    }
}

impl EvalArgs {
    pub fn run(self, global: Option<String>) -> Result<()> {
        let ckpt = super::open(self.model.as_deref(), global.as_deref())?;
        let body = super::read_text(&self.text)?;
        let tok = ckpt.tokenizer()?;
        let mut ids = tok
            .encode(body.as_str(), false)
            .map_err(|e| eyre!("tokenizer: {e}"))?
            .get_ids()
            .to_vec();
        if self.bos {
            let b = ckpt
                .config()
                .bos_token_id
                .ok_or_else(|| eyre!("--bos: the model has no BOS token"))?;
            ids.insert(0, b);
        }
        let model = self.run.load(&ckpt)?;
        let mut window = Window::default_for(&model);
        if let Some(size) = self.window {
            window.size = size;
            window.stride = size / 2;
        }
        if let Some(s) = self.stride {
            window.stride = s;
        }
        if self.sweep {
            let target = self.attack.target(&model, &tok)?;
            let t0 = std::time::Instant::now();
            let (_, runs) =
                super::plot::run_sweep(&model, &target, &self.attack, &ids, window, self.seed)?;
            let report = SweepReport {
                layer: target.layer,
                ranked_dims: target.ranked.iter().take(32).copied().collect(),
                tokens: ids.len(),
                seconds: t0.elapsed().as_secs_f64(),
                runs,
                text_name: self.text.display().to_string(),
                bos: self.bos,
            };
            return report.print(self.json);
        }
        let attack = self
            .attack
            .resolve(&model, &tok, self.seed, false)?
            .map(|(_, a)| a);
        let rows: Vec<Interventions> = attack.iter().map(Attack::interventions).collect();
        let mut result = perplexity(&model, &ids, &rows, window)?.remove(0);
        if !result.perplexity.is_finite() {
            bail!(
                "perplexity is {}: the model computes non-finite numbers (a weight or a hyper-parameter is NaN or infinite)",
                result.perplexity
            );
        }
        if !self.per_token {
            result.logprobs.clear();
        }
        let report = EvalReport {
            result,
            mode: attack.as_ref().map_or(AttackMode::Original, |a| a.mode),
            layer: attack.as_ref().map(|a| a.layer),
            dims: attack.as_ref().map(|a| a.dims.clone()).unwrap_or_default(),
            label: attack.as_ref().map_or("original".into(), describe_attack),
        };
        report.print(self.json)
    }
}

/// The paper's table: k down, modes across, the original on top.
fn render_sweep(runs: &[SweepRun]) -> String {
    let mut s = String::new();
    if let Some(o) = runs.iter().find(|r| r.mode == AttackMode::Original) {
        let _ = writeln!(s, "original: {:.3}", o.perplexity);
    }
    let _ = write!(s, "{:>4}", "k");
    for m in SWEEP_MODES {
        let _ = write!(s, "  {:>12}", m.name());
    }
    let _ = writeln!(s);
    for k in SWEEP_KS {
        let _ = write!(s, "{k:>4}");
        for m in SWEEP_MODES {
            let cell = runs
                .iter()
                .find(|r| r.mode == m && r.k == k)
                .map_or("-".into(), |r| format_ppl(r.perplexity));
            let _ = write!(s, "  {cell:>12}");
        }
        let _ = writeln!(s);
    }
    s
}
