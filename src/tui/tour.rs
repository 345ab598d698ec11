//! The guided tour: the House of Cards story told on the loaded model, in
//! captioned steps. Each step sets the view and the attack; the captions
//! quote what the scan measured on this model (a model without massive
//! activations gets its own, shorter story), never what the paper found
//! on another.

use super::app::{Shown, View};
use crate::analysis::attack::AttackMode;
use crate::engine::{ModelInfo, ProbeResult};

/// What a step sets.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    pub view: View,
    pub mode: AttackMode,
    pub k: usize,
    pub shown: Shown,
    pub layer: usize,
    pub dim: Option<usize>,
    pub ffn_dim: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub title: String,
    pub caption: String,
    pub setting: Setting,
}

/// The tour in progress: its steps and which one is shown.
#[derive(Debug, Clone)]
pub struct Tour {
    pub steps: Vec<Step>,
    pub at: usize,
}

impl Tour {
    pub fn step(&self) -> &Step {
        &self.steps[self.at]
    }
}

/// The steps for this model, from its scan.
pub fn steps(probe: &ProbeResult, info: &ModelInfo) -> Vec<Step> {
    let r = &probe.report;
    let d_ff = info.config.d_ff;
    let at = |view, mode, k, shown, layer| Setting {
        view,
        mode,
        k,
        shown,
        layer,
        dim: None,
        ffn_dim: None,
    };
    let (Some(l), Some(a)) = (r.massive_layer, r.massive_activations.first()) else {
        // No massive activation: show what is there, and test the claim anyway.
        let layer = probe.attack_layer;
        let top = r
            .layers
            .iter()
            .flat_map(|l| l.top.first())
            .max_by(|x, y| x.ratio.total_cmp(&y.ratio));
        let largest = top.map_or("no activation stands out".to_string(), |t| {
            format!(
                "its largest is {:.1} at layer {}, dim {} ({:.0}x the median)",
                t.value, t.layer, t.dim, t.ratio
            )
        });
        return vec![
            Step {
                title: "No massive activation".into(),
                caption: format!(
                    "{} has no activation above {} and {}x its layer's median: {largest}. The bright columns of other models are missing here.",
                    info.name, r.thresholds.min_abs, r.thresholds.min_ratio
                ),
                setting: at(View::Layers, AttackMode::Original, 2, Shown::Original, layer),
            },
            Step {
                title: "Zero the top rows anyway".into(),
                caption: format!(
                    "Zeroing the 2 rows of up_proj and gate_proj of layer {layer} with the largest first-token state. Compare the right panel's perplexity and text with the left's."
                ),
                setting: at(View::Layers, AttackMode::Zero, 2, Shown::Attacked, layer),
            },
            Step {
                title: "The control".into(),
                caption: "2 random rows zeroed instead: if this changes as much as the last step, no row is special in this model.".into(),
                setting: at(View::Layers, AttackMode::RandomZero, 2, Shown::Attacked, layer),
            },
        ];
    };
    let (r1, r2) = (
        probe.ranked.first().copied().unwrap_or(0),
        probe.ranked.get(1).copied().unwrap_or(0),
    );
    let state = |d: usize| {
        probe
            .mlp_pos0
            .get(l)
            .and_then(|s| s.get(d))
            .copied()
            .unwrap_or(0.0)
    };
    let before = l
        .checked_sub(1)
        .and_then(|p| probe.resid_max.get(p))
        .map(|row| row.iter().fold(0f32, |m, v| m.max(v.abs())));
    let token = format!("{:?}", a.token);
    let mut steps = vec![
        Step {
            title: "The massive activation".into(),
            caption: format!(
                "Hidden dim {} reaches {:.0} at layer {l}, {:.0}x the layer's median |x|, at token {} {token}. It is the bright column of the heatmap, from layer {l} on.",
                a.dim, a.value, a.ratio, a.position
            ),
            setting: Setting {
                dim: Some(a.dim),
                ..at(View::Layers, AttackMode::Original, 2, Shown::Original, l)
            },
        },
        Step {
            title: "Where it is born".into(),
            caption: format!(
                "{}Layer {l}'s MLP writes it: its d_ff state at the first token is {:.0} at dim {r1} and {:.0} at dim {r2}, the bright cells of the top row.",
                before.map_or(String::new(), |b| format!("Up to layer {} no |x| passes {b:.0}. ", l - 1)),
                state(r1),
                state(r2)
            ),
            setting: Setting {
                ffn_dim: Some(r1),
                ..at(View::Ffn, AttackMode::Original, 2, Shown::Original, l)
            },
        },
        Step {
            title: "Its massive weights".into(),
            caption: format!(
                "Rows {r1} and {r2} of up_proj and gate_proj of layer {l} make those states: 2 of {d_ff} rows (the list on the right). The House of Cards paper calls them massive weights."
            ),
            setting: Setting {
                ffn_dim: Some(r1),
                ..at(View::Ffn, AttackMode::Original, 2, Shown::Original, l)
            },
        },
        Step {
            title: "Zero them".into(),
            caption: format!(
                "Rows {r1} and {r2} zeroed, nothing else: the heatmap shows the attacked model (c compares). Read the right panel's text and perplexity against the left's."
            ),
            setting: Setting {
                dim: Some(a.dim),
                ..at(View::Layers, AttackMode::Zero, 2, Shown::Attacked, l)
            },
        },
        Step {
            title: "Keep only them".into(),
            caption: format!(
                "Now the opposite: the other {} rows of both matrices zeroed, rows {r1} and {r2} kept. Compare with the last step: which one did the model survive?",
                d_ff - 2
            ),
            setting: Setting {
                dim: Some(a.dim),
                ..at(View::Layers, AttackMode::Keep, 2, Shown::Attacked, l)
            },
        },
        Step {
            title: "The control".into(),
            caption: "2 random rows of the same layer zeroed instead of the massive ones: the effect, if any, is what any two rows do.".into(),
            setting: Setting {
                dim: Some(a.dim),
                ..at(View::Layers, AttackMode::RandomZero, 2, Shown::Attacked, l)
            },
        },
    ];
    if let Some(sw) = r.super_weights.first().filter(|s| s.layer == l) {
        steps.push(Step {
            title: "The super weight".into(),
            caption: format!(
                "One scalar, down_proj[{}, {}] of layer {l} = {:.3} (Yu et al.'s super weight), zeroed alone. The tour ends here: ? lists the keys.",
                sw.row, sw.col, sw.value
            ),
            setting: Setting {
                dim: Some(a.dim),
                ..at(View::Layers, AttackMode::Super, 2, Shown::Attacked, l)
            },
        });
    }
    steps
}
