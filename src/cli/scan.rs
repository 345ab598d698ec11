//! `mwtop scan`: the human-readable report of a massive-activation scan.

use std::fmt::Write as _;

use crate::analysis::massive::{MedianScope, ScanReport};

fn short(token: &str) -> String {
    let t: String = token.chars().take(14).collect();
    format!("{t:?}")
}

pub fn render(r: &ScanReport) -> String {
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
            "super weight: model.layers.{}.mlp.down_proj.weight[{}, {}] = {:.4}",
            sw.layer, sw.row, sw.col, sw.value
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
    s
}
