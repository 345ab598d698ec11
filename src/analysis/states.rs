//! What the heatmaps and figures draw: the states of a probe, per layer
//! and for one layer in full, for several rows at once (the original and
//! the attacked model in one batch, as generation runs them).

use serde::Serialize;

use crate::model::hooks::{CaptureRequest, Captured, HookPoint, Reduction};
use crate::model::intervention::Interventions;
use crate::model::{LogitsMode, Model, Result, RunOptions};

/// tokens x dims states of one layer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerDetail {
    pub layer: usize,
    /// tokens x d_model: resid_post.
    pub resid: Vec<Vec<f32>>,
    /// tokens x d_ff: the MLP's intermediate state.
    pub mlp: Vec<Vec<f32>>,
    /// Median of |resid_post| over tokens x dims.
    pub median: f32,
}

/// One row's states over the probe.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeStates {
    /// layers x d_model: max over tokens of |resid_post|.
    pub resid_max: Vec<Vec<f32>>,
    /// Per layer: median of |resid_post| over tokens x dims.
    pub layer_medians: Vec<f32>,
    /// layers x d_ff: the d_ff state at position 0.
    pub mlp_pos0: Vec<Vec<f32>>,
    /// `layer`'s full states.
    pub detail: LayerDetail,
}

/// The states of `probe` under each of `rows` (one batch), with `layer`
/// in full.
pub fn probe_states(
    model: &Model,
    probe: &[u32],
    rows: &[Interventions],
    layer: usize,
) -> Result<Vec<ProbeStates>> {
    let n_layers = model.config().n_layers;
    if probe.is_empty() || layer >= n_layers {
        return Err(crate::model::ModelError::Invalid(format!(
            "states of layer {layer}: the model has layers 0..{} and the probe {} tokens",
            n_layers.saturating_sub(1),
            probe.len()
        )));
    }
    let b = rows.len().max(1);
    let opts = RunOptions {
        capture: vec![
            CaptureRequest::every_layer(HookPoint::ResidPost, Reduction::MaxAbsPerDim),
            CaptureRequest::every_layer(HookPoint::ResidPost, Reduction::MedianAbs),
            CaptureRequest::every_layer(HookPoint::MlpPost, Reduction::Position(0)),
            CaptureRequest::at(layer, HookPoint::ResidPost, Reduction::Full),
            CaptureRequest::at(layer, HookPoint::MlpPost, Reduction::Full),
        ],
        interventions: rows.to_vec(),
        logits: LogitsMode::None,
        ..Default::default()
    };
    let batch = vec![probe.to_vec(); b];
    let out = model.forward(&batch, None, &opts)?;
    let caps = &out.captures;
    Ok((0..b)
        .map(|r| row_states(caps, r, n_layers, layer))
        .collect())
}

fn row_states(caps: &[Captured], b: usize, n_layers: usize, layer: usize) -> ProbeStates {
    let row = |c: &Captured| c.row(b).unwrap_or_default().to_vec();
    let per_layer = |point: HookPoint, r: Reduction| -> Vec<Vec<f32>> {
        let mut v = vec![Vec::new(); n_layers];
        for c in caps {
            if c.hook.point == point && c.reduction == r && c.hook.layer < n_layers {
                v[c.hook.layer] = row(c);
            }
        }
        v
    };
    let full = |point: HookPoint| -> Vec<Vec<f32>> {
        caps.iter()
            .find(|c| c.hook.point == point && c.reduction == Reduction::Full)
            .map(|c| {
                let width = c.shape.last().copied().unwrap_or(1).max(1);
                row(c).chunks(width).map(<[f32]>::to_vec).collect()
            })
            .unwrap_or_default()
    };
    let layer_medians: Vec<f32> = per_layer(HookPoint::ResidPost, Reduction::MedianAbs)
        .iter()
        .map(|m| m.first().copied().unwrap_or(1.0))
        .collect();
    ProbeStates {
        resid_max: per_layer(HookPoint::ResidPost, Reduction::MaxAbsPerDim),
        mlp_pos0: per_layer(HookPoint::MlpPost, Reduction::Position(0)),
        detail: LayerDetail {
            layer,
            resid: full(HookPoint::ResidPost),
            mlp: full(HookPoint::MlpPost),
            median: layer_medians[layer],
        },
        layer_medians,
    }
}
