//! The figures mwtop exports, built from analysis results: the UI's three
//! views (layers x dims, tokens x dims, tokens x d_ff) of the original and,
//! under an attack, of the attacked model and the change; and the sweep.

use super::figure::{HeatmapFigure, LineChart, Panel};
use crate::analysis::attack::AttackMode;
use crate::analysis::massive::ScanReport;
use crate::analysis::states::ProbeStates;
use crate::analysis::sweep::{SweepRun, SWEEP_MODES};
use crate::palette::{log_change, Scale};

/// Which picture of the states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// layers x hidden dims, max |resid_post| over the probe's tokens.
    Layers,
    /// tokens x hidden dims of one layer.
    Tokens,
    /// tokens x d_ff dims of one layer.
    Ffn,
}

/// The massive hidden dims of a scan, most massive first (at most four).
pub fn massive_dims(scan: &ScanReport) -> Vec<usize> {
    let mut dims: Vec<usize> = Vec::new();
    for a in &scan.massive_activations {
        if !dims.contains(&a.dim) && dims.len() < 4 {
            dims.push(a.dim);
        }
    }
    dims
}

fn median(values: impl Iterator<Item = f32>) -> f32 {
    let mut v: Vec<f32> = values.map(f32::abs).collect();
    if v.is_empty() {
        return 1.0;
    }
    let mid = (v.len() - 1) / 2;
    *v.select_nth_unstable_by(mid, f32::total_cmp).1
}

/// The rows, references and axes of one view of one side's states; the
/// references are the `original`'s, so a colour means the same |x| in
/// both panels.
fn view_rows(
    view: View,
    side: &ProbeStates,
    original: &ProbeStates,
) -> (Vec<Vec<f32>>, Vec<f32>, &'static str, &'static str) {
    match view {
        View::Layers => (
            side.resid_max.clone(),
            original.layer_medians.clone(),
            "layer",
            "hidden dim",
        ),
        View::Tokens => (
            side.detail.resid.clone(),
            vec![original.detail.median; side.detail.resid.len()],
            "token",
            "hidden dim",
        ),
        View::Ffn => {
            let m = median(original.detail.mlp.iter().flatten().copied());
            (
                side.detail.mlp.clone(),
                vec![m; side.detail.mlp.len()],
                "token",
                "d_ff dim",
            )
        }
    }
}

/// The figure of `view`: the original alone, or with an attack (`states`
/// holding original and attacked, `attack_label` naming it) the original,
/// the attacked model and the change between them.
pub fn heatmaps(
    view: View,
    model_name: &str,
    scan: &ScanReport,
    states: &[ProbeStates],
    attack_label: Option<&str>,
    marks_ffn: &[usize],
) -> HeatmapFigure {
    let original = &states[0];
    let labels: Vec<String> = match view {
        View::Layers => (0..original.resid_max.len())
            .map(|i| i.to_string())
            .collect(),
        _ => scan
            .token_texts
            .iter()
            .map(|t| t.replace('\n', "⏎").replace(char::is_control, "·"))
            .collect(),
    };
    let marks = match view {
        View::Ffn => marks_ffn.to_vec(),
        _ => massive_dims(scan),
    };
    let what = match view {
        View::Layers => "max |resid_post| over the probe's tokens".to_string(),
        View::Tokens => format!("layer {}: resid_post per token", original.detail.layer),
        View::Ffn => format!("layer {}: d_ff state per token", original.detail.layer),
    };
    let panel = |title: String, side: &ProbeStates| {
        let (rows, reference, row_axis, col_axis) = view_rows(view, side, original);
        Panel {
            title,
            rows,
            reference,
            scale: Scale::Magnitude,
            row_axis: row_axis.into(),
            col_axis: col_axis.into(),
            row_labels: labels.clone(),
            marks: marks.clone(),
        }
    };
    let mut panels = vec![panel("original".into(), original)];
    if let (Some(label), Some(attacked)) = (attack_label, states.get(1)) {
        panels.push(panel(format!("attacked: {label}"), attacked));
        let (o, reference, row_axis, col_axis) = view_rows(view, original, original);
        let (a, _, _, _) = view_rows(view, attacked, original);
        let rows = o
            .iter()
            .zip(&a)
            .zip(&reference)
            .map(|((o, a), &m)| {
                o.iter()
                    .zip(a)
                    .map(|(&o, &a)| log_change(a, o, 1e-3 * m))
                    .collect()
            })
            .collect();
        panels.push(Panel {
            title: "change: attacked / original".into(),
            rows,
            reference: vec![1.0; o.len()],
            scale: Scale::Change,
            row_axis: row_axis.into(),
            col_axis: col_axis.into(),
            row_labels: labels.clone(),
            marks: marks.clone(),
        });
    }
    HeatmapFigure {
        title: format!("{model_name} · {what}"),
        panels,
    }
}

/// The sweep as curves: perplexity against k for each mode, the
/// original's perplexity as a line.
pub fn sweep_chart(model_name: &str, runs: &[SweepRun], layer: usize) -> LineChart {
    let original = runs
        .iter()
        .find(|r| r.mode == AttackMode::Original)
        .map(|r| r.perplexity);
    let series = SWEEP_MODES
        .iter()
        .map(|&mode| {
            let pts = runs
                .iter()
                .filter(|r| r.mode == mode)
                .map(|r| (r.k as f64, r.perplexity))
                .collect();
            (mode.to_string(), pts)
        })
        .collect();
    LineChart {
        title: format!("{model_name} · perplexity under each attack, layer {layer}"),
        x_axis: "k (massive rows of up_proj and gate_proj touched)".into(),
        y_axis: "perplexity".into(),
        series,
        baseline: original.map(|p| ("original".to_string(), p)),
        log_y: true,
    }
}
