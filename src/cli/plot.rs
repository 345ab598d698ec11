//! `mwtop plot`: one figure as PNG or SVG: a heatmap view of the probe's
//! states (the original, and with an attack the attacked model and the
//! change), or the sweep's perplexity curves. `mwtop report` builds on the
//! same pieces.

use std::path::{Path, PathBuf};

use color_eyre::eyre::{bail, eyre, Result};

use mwtop::analysis::attack::Attack;
use mwtop::analysis::massive::{self, ScanReport};
use mwtop::analysis::perplexity::{Window, EVAL_TEXT};
use mwtop::analysis::states::{probe_states, ProbeStates};
use mwtop::analysis::sweep::{self, SweepRun};
use mwtop::analysis::target;
use mwtop::checkpoint::Checkpoint;
use mwtop::display::describe_attack;
use mwtop::export::figure::Format;
use mwtop::export::views::{self, View};
use mwtop::export::write_atomically;
use mwtop::model::intervention::Interventions;
use mwtop::model::Model;

use super::args::{AttackArgs, RunArgs};
use super::progress::Counter;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum What {
    /// layers x hidden dims: max |resid_post| over the probe's tokens.
    Layers,
    /// tokens x hidden dims of one layer (--at).
    Tokens,
    /// tokens x d_ff dims of one layer (--at).
    Dff,
    /// Perplexity against k for every attack mode (the sweep).
    Sweep,
}

#[derive(clap::Args)]
pub struct PlotArgs {
    /// Model path or hub id; omitted: the demo model.
    model: Option<String>,
    /// Which figure.
    #[arg(long, value_enum, default_value_t = What::Layers)]
    what: What,
    /// The file to write: .png or .svg.
    #[arg(long)]
    out: PathBuf,
    /// The layer the tokens and dff figures show (default: the attacked
    /// layer, else the massive layer).
    #[arg(long, allow_negative_numbers = true)]
    at: Option<usize>,
    /// The text the sweep scores (default: mwtop's evaluation text), BOS first.
    #[arg(long)]
    text: Option<PathBuf>,
    #[command(flatten)]
    attack: AttackArgs,
    /// Seed of the random-k controls.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    run: RunArgs,
}

/// The model's display name: its file or directory name.
pub fn model_name(ckpt: &Checkpoint) -> String {
    ckpt.source()
        .file_name()
        .map(|n| n.to_string_lossy().trim_end_matches(".gguf").to_string())
        .unwrap_or_else(|| "model".into())
}

/// The probe (BOS first where the model has one) and its scan.
pub fn scan_probe(
    model: &Model,
    tok: &tokenizers::Tokenizer,
    attack: &AttackArgs,
) -> Result<(Vec<u32>, ScanReport)> {
    let ids = tok
        .encode(attack.probe(), false)
        .map_err(|e| eyre!("tokenizer: {e}"))?
        .get_ids()
        .to_vec();
    let (probe, position0) = massive::probe_tokens(model, &ids);
    if probe.is_empty() {
        bail!("the probe is empty and the model has no BOS token");
    }
    let report = massive::scan(model, tok, &probe, position0, 8, attack.thresholds())?;
    Ok((probe, report))
}

/// The probe's states, the original's and (with an attack) the attacked
/// model's, from one batch; `layer` in full.
pub fn states(
    model: &Model,
    probe: &[u32],
    attack: Option<&Attack>,
    layer: usize,
) -> Result<Vec<ProbeStates>> {
    let mut rows = vec![Interventions::none()];
    rows.extend(attack.map(Attack::interventions));
    Ok(probe_states(model, probe, &rows, layer)?)
}

/// The evaluation text's tokens, BOS first when the model has one.
pub fn eval_tokens(
    ckpt: &Checkpoint,
    tok: &tokenizers::Tokenizer,
    text: Option<&Path>,
) -> Result<Vec<u32>> {
    let body = match text {
        Some(p) => super::read_text(p)?,
        None => EVAL_TEXT.to_string(),
    };
    let mut ids = tok
        .encode(body.as_str(), false)
        .map_err(|e| eyre!("tokenizer: {e}"))?
        .get_ids()
        .to_vec();
    if let Some(b) = ckpt.config().bos_token_id {
        ids.insert(0, b);
    }
    if ids.len() < 2 {
        bail!("the evaluation text has fewer than 2 tokens");
    }
    Ok(ids)
}

/// Every attack of the sweep on `target`, with its perplexity.
pub fn run_sweep(
    model: &Model,
    target: &target::Target,
    attack: &AttackArgs,
    ids: &[u32],
    window: Window,
    seed: u64,
) -> Result<(usize, Vec<SweepRun>)> {
    let attacks: Vec<Attack> = sweep::sweep_attacks(target, model.config().d_ff, seed)
        .into_iter()
        .map(|a| a.with_edits(attack.edits()))
        .collect();
    let mut counter = Counter::new(true);
    let ppl = sweep::run_attacks(model, ids, &attacks, window, |d, t| {
        counter.show(&format!("perplexity runs {d}/{t}"))
    })?;
    counter.finish(None);
    if let Some((a, p)) = attacks
        .iter()
        .zip(&ppl)
        .find(|(_, p)| !p.perplexity.is_finite())
    {
        bail!(
            "perplexity is {} under {}: the model computes non-finite numbers",
            p.perplexity,
            describe_attack(a)
        );
    }
    Ok((target.layer, sweep::sweep_runs(&attacks, &ppl)))
}

impl PlotArgs {
    pub fn run(self, global: Option<String>) -> Result<()> {
        let format = Format::from_path(&self.out)?;
        let ckpt = super::open(self.model.as_deref(), global.as_deref())?;
        let tok = ckpt.tokenizer()?;
        let model = self.run.load(&ckpt)?;
        let name = model_name(&ckpt);
        let bytes = match self.what {
            What::Sweep => {
                let ids = eval_tokens(&ckpt, &tok, self.text.as_deref())?;
                let target = self.attack.target(&model, &tok)?;
                let window = Window::default_for(&model);
                let (layer, runs) =
                    run_sweep(&model, &target, &self.attack, &ids, window, self.seed)?;
                views::sweep_chart(&name, &runs, layer).render(format)?
            }
            what => {
                let (probe, scan) = scan_probe(&model, &tok, &self.attack)?;
                let attack = self
                    .attack
                    .resolve(&model, &tok, self.seed, false)?
                    .map(|(_, a)| a);
                let n_layers = model.config().n_layers;
                let layer = self
                    .at
                    .or(attack.as_ref().map(|a| a.layer))
                    .unwrap_or_else(|| target::attack_layer(&scan).0);
                if layer >= n_layers {
                    bail!("--at {layer}: the model has layers 0..{}", n_layers - 1);
                }
                let states = states(&model, &probe, attack.as_ref(), layer)?;
                let view = match what {
                    What::Layers => View::Layers,
                    What::Tokens => View::Tokens,
                    _ => View::Ffn,
                };
                let marks: Vec<usize> = match &attack {
                    Some(a) if a.layer == layer => a.dims.iter().take(4).copied().collect(),
                    _ => massive::rank_by_abs(&states[0].mlp_pos0[layer], 2),
                };
                let label = attack.as_ref().map(describe_attack);
                views::heatmaps(view, &name, &scan, &states, label.as_deref(), &marks)
                    .render(format)?
            }
        };
        write_atomically(&self.out, &bytes)?;
        eprintln!("mwtop: wrote {}", self.out.display());
        Ok(())
    }
}
