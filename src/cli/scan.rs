//! `mwtop scan`: massive activations, the massive layer, its massive
//! weights and the super weight, for one probe.

use std::fmt::Write as _;

use color_eyre::eyre::{eyre, Result};

use mwtop::analysis::massive::{self, MedianScope, ScanReport};
use mwtop::analysis::target::DEFAULT_PROBE;
use mwtop::checkpoint::{Proj, WeightId};

use super::args::{RunArgs, ThresholdArgs};
use super::Report;

#[derive(clap::Args)]
pub struct ScanArgs {
    /// Model path or hub id; omitted: the demo model.
    model: Option<String>,
    /// The probe text (BOS is put first when the model has one).
    #[arg(long, default_value = DEFAULT_PROBE)]
    prompt: String,
    /// How many massive weights (d_ff dims) to list.
    #[arg(long, default_value_t = 8, value_parser = super::args::at_least_one, allow_negative_numbers = true)]
    k: usize,
    #[command(flatten)]
    thresholds: ThresholdArgs,
    #[command(flatten)]
    run: RunArgs,
    #[arg(long)]
    json: bool,
}

impl ScanArgs {
    pub fn run(self, global: Option<String>) -> Result<()> {
        let ckpt = super::open(self.model.as_deref(), global.as_deref())?;
        let tok = ckpt.tokenizer()?;
        let ids = tok
            .encode(self.prompt.as_str(), false)
            .map_err(|e| eyre!("tokenizer: {e}"))?
            .get_ids()
            .to_vec();
        let model = self.run.load(&ckpt)?;
        let (probe, position0) = massive::probe_tokens(&model, &ids);
        if probe.is_empty() {
            return Err(eyre!("the prompt is empty and the model has no BOS token"));
        }
        let report = massive::scan(
            &model,
            &tok,
            &probe,
            position0,
            self.k,
            self.thresholds.get(),
        )?;
        report.print(self.json)
    }
}

impl Report for ScanReport {
    fn text(&self) -> String {
        render(self)
    }
}

fn short(token: &str) -> String {
    let t: String = token.chars().take(14).collect();
    format!("{t:?}")
}

fn render(r: &ScanReport) -> String {
    let mut s = String::new();
    let th = &r.thresholds;
    let scope = match th.scope {
        MedianScope::Layer => "the layer output",
        MedianScope::Token => "the token's hidden state",
    };
    let first = r.token_texts.first().map(|t| short(t)).unwrap_or_default();
    let _ = writeln!(
        s,
        "probe: {} tokens; position 0 = {} {first}; massive: |x| > {} and >= {} x median |x| of {scope}",
        r.tokens.len(),
        if r.position0 == "bos" { "BOS" } else { "first token (no BOS)" },
        th.min_abs,
        th.min_ratio
    );
    let _ = writeln!(
        s,
        "{:>5}  {:>9}  {:>4}  {:<16}  {:>5}  {:>10}  {:>8}  massive",
        "layer", "median", "pos", "token", "dim", "value", "ratio"
    );
    for l in &r.layers {
        let Some(a) = l.top.first() else { continue };
        let n = l.top.iter().filter(|a| a.massive).count();
        let _ = writeln!(
            s,
            "{:>5}  {:>9.3}  {:>4}  {:<16}  {:>5}  {:>10.2}  {:>8.0}  {}",
            l.layer,
            l.median,
            a.position,
            short(&a.token),
            a.dim,
            a.value,
            a.ratio,
            if n > 0 {
                format!("yes ({n})")
            } else {
                "-".into()
            }
        );
    }
    match (&r.massive_layer, &r.massive_weights) {
        (Some(layer), Some(mw)) => {
            let _ = writeln!(s, "\nmassive layer: {layer}");
            let list: Vec<String> = mw
                .dims
                .iter()
                .zip(&mw.values)
                .map(|(d, v)| format!("{d} ({v:.1})"))
                .collect();
            let _ = writeln!(
                s,
                "massive weights: rows of model.layers.{layer}.mlp.up_proj/gate_proj, by |d_ff state| at position 0: {}",
                list.join(", ")
            );
        }
        _ => {
            let _ = writeln!(s, "\nno massive activation at these thresholds (try --min-ratio or --median token|layer)");
        }
    }
    if let Some(sw) = r
        .super_weights
        .first()
        .filter(|_| r.massive_layer.is_some())
    {
        let _ = writeln!(
            s,
            "super weight: {}[{}, {}] = {:.4}",
            WeightId::layer(sw.layer, Proj::Down),
            sw.row,
            sw.col,
            sw.value
        );
    }
    let skip = usize::from(r.massive_layer.is_some());
    let mut largest: Vec<_> = r.super_weights.iter().skip(skip).collect();
    largest.sort_by(|a, b| b.value.abs().total_cmp(&a.value.abs()));
    let list: Vec<String> = largest
        .iter()
        .take(6)
        .map(|w| format!("layer {} [{}, {}] = {:.3}", w.layer, w.row, w.col, w.value))
        .collect();
    let _ = writeln!(s, "largest down_proj entries: {}", list.join("; "));
    for n in &r.post_mlp_norm {
        let layers: Vec<String> = n
            .layers
            .iter()
            .map(|l| {
                if l.rank <= 3 {
                    format!("{}:{:.2} (#{})", l.layer, l.scale, l.rank)
                } else {
                    format!("{}:{:.2}", l.layer, l.scale)
                }
            })
            .collect();
        let _ = writeln!(
            s,
            "post-MLP norm scale at hidden dim {} by layer (#rank of |scale| in its layer when top 3): {}",
            n.dim,
            layers.join(" ")
        );
    }
    s
}
