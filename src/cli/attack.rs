//! Attack options shared by `eval` and `generate`: which layer and dims, found
//! by a scan unless given, and the `--sweep` table.

use std::io::IsTerminal;

use serde::Serialize;

use crate::analysis::attack::{Attack, AttackMode};
use crate::analysis::massive::{self, Thresholds};
use crate::analysis::perplexity::{perplexity, Perplexity, Window};
use crate::model::intervention::Interventions;
use crate::model::{Model, ModelError};

/// The default probe for finding the massive layer (Sun et al.'s example sentence).
pub const DEFAULT_PROBE: &str = "Summer is warm. Winter is cold.";

/// Where the attacked dims came from.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub layer: usize,
    /// d_ff dims, most massive first (all of them when ranked by a probe).
    pub ranked: Vec<usize>,
    /// "scan", "layer" (ranked at the given layer) or "dims" (given).
    pub source: &'static str,
}

/// Resolves `--layer` / `--dims`, scanning the probe when they are missing.
pub fn resolve_target(
    model: &Model,
    tok: &tokenizers::Tokenizer,
    probe: &str,
    th: Thresholds,
    layer: Option<usize>,
    dims: Option<Vec<usize>>,
) -> Result<Target, String> {
    let n_layers = model.config().n_layers;
    let d_ff = model.config().d_ff;
    if let Some(l) = layer.filter(|&l| l >= n_layers) {
        return Err(format!(
            "--layer {l}: the model has layers 0..{}",
            n_layers - 1
        ));
    }
    if let Some(d) = dims.iter().flatten().find(|&&d| d >= d_ff) {
        return Err(format!("--dims: {d} is not below d_ff = {d_ff}"));
    }
    let ids = tok
        .encode(probe, false)
        .map_err(|e| format!("tokenizer: {e}"))?
        .get_ids()
        .to_vec();
    let (probe_ids, _) = massive::probe_tokens(model, &ids);
    let layer_given = layer.is_some();
    let layer = match layer {
        Some(l) => l,
        None => {
            let report =
                massive::scan(model, tok, &probe_ids, "bos", 8, th).map_err(|e| e.to_string())?;
            report.massive_layer.ok_or_else(|| {
                format!(
                    "no massive activation (|x| > {} and >= {} x median) in any layer for the probe {probe:?}; pass --layer, or lower --min-ratio",
                    th.min_abs, th.min_ratio
                )
            })?
        }
    };
    match dims {
        Some(d) => Ok(Target {
            layer,
            ranked: d,
            source: "dims",
        }),
        None => {
            let (ranked, _) =
                massive::rank_ffn_dims(model, &probe_ids, layer).map_err(|e| e.to_string())?;
            Ok(Target {
                layer,
                ranked,
                source: if layer_given { "layer" } else { "scan" },
            })
        }
    }
}

/// One sweep row.
#[derive(Debug, Clone, Serialize)]
pub struct SweepRun {
    pub mode: AttackMode,
    pub k: usize,
    pub dims: Vec<usize>,
    pub perplexity: f64,
}

/// Every attack for k in {0, 1, 2, 4, 8, 16, 32} (k = 0 only for keep), the original first.
pub fn sweep_attacks(target: &Target, d_ff: usize, seed: u64) -> Vec<Attack> {
    let ks = [0usize, 1, 2, 4, 8, 16, 32];
    let mut out = vec![Attack::new(
        AttackMode::Original,
        target.layer,
        &target.ranked,
        0,
        d_ff,
        seed,
    )];
    for mode in [
        AttackMode::Zero,
        AttackMode::Keep,
        AttackMode::RandomZero,
        AttackMode::RandomKeep,
    ] {
        for &k in &ks {
            if k == 0 && mode != AttackMode::Keep {
                continue;
            }
            out.push(Attack::new(
                mode,
                target.layer,
                &target.ranked,
                k,
                d_ff,
                seed,
            ));
        }
    }
    out
}

/// Runs attacks in batches (one forward per batch), with a counter on stderr.
pub fn run_attacks(
    model: &Model,
    tokens: &[u32],
    attacks: &[Attack],
    window: Window,
) -> Result<Vec<Perplexity>, ModelError> {
    const BATCH: usize = 4;
    let tty = std::io::stderr().is_terminal();
    let mut out = Vec::with_capacity(attacks.len());
    for chunk in attacks.chunks(BATCH) {
        let rows: Vec<Interventions> = chunk.iter().map(Attack::interventions).collect();
        out.extend(perplexity(model, tokens, &rows, window)?);
        let msg = format!("mwtop: perplexity runs {}/{}", out.len(), attacks.len());
        if tty {
            eprint!("\r{msg}");
        } else {
            eprintln!("{msg}");
        }
    }
    if tty {
        eprintln!();
    }
    Ok(out)
}

/// The paper's table: k down, modes across, the original on top.
pub fn render_sweep(runs: &[SweepRun]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    if let Some(o) = runs.iter().find(|r| r.mode == AttackMode::Original) {
        let _ = writeln!(s, "original: {:.3}", o.perplexity);
    }
    let modes = [
        AttackMode::Zero,
        AttackMode::Keep,
        AttackMode::RandomZero,
        AttackMode::RandomKeep,
    ];
    let _ = write!(s, "{:>4}", "k");
    for m in modes {
        let _ = write!(s, "  {:>12}", m.name());
    }
    let _ = writeln!(s);
    for k in [0usize, 1, 2, 4, 8, 16, 32] {
        let _ = write!(s, "{k:>4}");
        for m in modes {
            match runs.iter().find(|r| r.mode == m && r.k == k) {
                Some(r) => {
                    let _ = write!(s, "  {:>12}", format_ppl(r.perplexity));
                }
                None => {
                    let _ = write!(s, "  {:>12}", "-");
                }
            }
        }
        let _ = writeln!(s);
    }
    s
}

/// Perplexities span 10 to 1e5: three significant digits, scientific when huge.
pub fn format_ppl(p: f64) -> String {
    if !p.is_finite() {
        "inf".into()
    } else if p >= 1e5 {
        format!("{p:.2e}")
    } else {
        format!("{p:.2}")
    }
}
