//! What an attack aims at: the layer and its d_ff dims, ranked most massive
//! first. One rule for every front end: the layer given, else the massive
//! layer a scan of the probe finds, else (flagged as a fallback) the layer
//! holding the largest activation. The CLI refuses a fallback unless the
//! user named the layer; the UI shows it and says so.

use candle_core::{DType, Device};
use serde::Serialize;

use super::massive::{self, ScanReport, Thresholds};
use crate::checkpoint::{Proj, WeightId};
use crate::model::{Model, ModelError, Result};

/// The default probe for finding the massive layer (Sun et al.'s example sentence).
pub const DEFAULT_PROBE: &str = "Summer is warm. Winter is cold.";

/// Where the attacked layer and dims came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetSource {
    /// The massive layer of a scan, ranked at BOS.
    Scan,
    /// No layer passed the thresholds: the layer of the largest activation.
    Fallback,
    /// The layer the user named, ranked at BOS.
    Layer,
    /// Dims the user named.
    Dims,
}

/// The attacked layer and its d_ff dims, most massive first.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub layer: usize,
    /// d_ff dims, most massive first (all of them when ranked by a probe).
    pub ranked: Vec<usize>,
    pub source: TargetSource,
}

/// The layer attacks use when none is named: the massive layer, else the
/// layer whose largest |activation| is largest (`Fallback`).
pub fn attack_layer(report: &ScanReport) -> (usize, TargetSource) {
    if let Some(l) = report.massive_layer {
        return (l, TargetSource::Scan);
    }
    let layer = report
        .layers
        .iter()
        .filter_map(|l| l.top.first().map(|a| (l.layer, a.value.abs())))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map_or(0, |(l, _)| l);
    (layer, TargetSource::Fallback)
}

/// Checks a `--layer` / `--dims` pair against the model's shape.
pub fn check_layer_and_dims(
    model: &Model,
    layer: Option<usize>,
    dims: Option<&[usize]>,
) -> Result<()> {
    let c = model.config();
    if let Some(l) = layer.filter(|&l| l >= c.n_layers) {
        return Err(ModelError::Invalid(format!(
            "--layer {l}: the model has layers 0..{}",
            c.n_layers - 1
        )));
    }
    if let Some(d) = dims.into_iter().flatten().find(|&&d| d >= c.d_ff) {
        return Err(ModelError::Invalid(format!(
            "--dims: {d} is not below d_ff = {}",
            c.d_ff
        )));
    }
    Ok(())
}

/// Resolves the target: `layer` and `dims` when given, the scan's choice
/// (see [`attack_layer`]) for what is missing. The probe gets BOS first.
pub fn resolve_target(
    model: &Model,
    tok: &tokenizers::Tokenizer,
    probe: &str,
    th: Thresholds,
    layer: Option<usize>,
    dims: Option<Vec<usize>>,
) -> Result<Target> {
    check_layer_and_dims(model, layer, dims.as_deref())?;
    let ids = tok
        .encode(probe, false)
        .map_err(|e| ModelError::Invalid(format!("tokenizer: {e}")))?
        .get_ids()
        .to_vec();
    let (probe_ids, position0) = massive::probe_tokens(model, &ids);
    if probe_ids.is_empty() {
        return Err(ModelError::Invalid(
            "the probe is empty and the model has no BOS token".into(),
        ));
    }
    let (layer, source) = match layer {
        Some(l) => (l, TargetSource::Layer),
        None => attack_layer(&massive::scan(model, tok, &probe_ids, position0, 8, th)?),
    };
    let (ranked, source) = match dims {
        // A fallback layer stays flagged, whoever named the dims.
        Some(d) if source == TargetSource::Fallback => (d, source),
        Some(d) => (d, TargetSource::Dims),
        None => (massive::rank_ffn_dims(model, &probe_ids, layer)?.0, source),
    };
    Ok(Target {
        layer,
        ranked,
        source,
    })
}

impl Target {
    /// Refuses a fallback target: a script that asked for "the massive
    /// layer" must not silently get another one.
    pub fn require_massive(self, probe: &str, th: Thresholds) -> Result<Self> {
        if self.source == TargetSource::Fallback {
            return Err(ModelError::Invalid(format!(
                "no massive activation (|x| > {} and >= {} x median) in any layer for the probe {probe:?}; pass --layer, or lower --min-ratio",
                th.min_abs, th.min_ratio
            )));
        }
        Ok(self)
    }
}

/// Per-row statistics of a layer's W_up / W_gate.
#[derive(Debug, Clone, Serialize)]
pub struct RowStats {
    pub dim: usize,
    /// The d_ff state at this dim (what ranked it).
    pub value: f32,
    pub up_norm: f32,
    pub up_max: f32,
    pub gate_norm: f32,
    pub gate_max: f32,
}

/// Norm and max |w| of rows `dims` of W_up and W_gate of `layer`; `state`
/// is that layer's d_ff state (one value per dim).
pub fn row_stats(
    model: &Model,
    layer: usize,
    dims: &[usize],
    state: &[f32],
) -> Result<Vec<RowStats>> {
    check_layer_and_dims(model, Some(layer), Some(dims))?;
    if state.len() != model.config().d_ff {
        return Err(ModelError::Invalid(format!(
            "row_stats: {} state values for d_ff = {}",
            state.len(),
            model.config().d_ff
        )));
    }
    let rows = |proj: Proj| -> Result<Vec<Vec<f32>>> {
        let id = WeightId::layer(layer, proj);
        let w = model
            .weight(id)
            .ok_or_else(|| ModelError::Invalid(format!("the model has no {id}")))?;
        // Only the asked rows cross to the host.
        let index: Vec<u32> = dims.iter().map(|&d| d as u32).collect();
        let index = candle_core::Tensor::from_vec(index, dims.len(), w.device())?;
        let w = w
            .index_select(&index, 0)?
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?;
        Ok((0..dims.len())
            .map(|i| w.get(i).and_then(|r| r.to_vec1::<f32>()))
            .collect::<candle_core::Result<_>>()?)
    };
    let (up, gate) = (rows(Proj::Up)?, rows(Proj::Gate)?);
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let max = |v: &[f32]| v.iter().fold(0f32, |m, x| m.max(x.abs()));
    Ok(dims
        .iter()
        .zip(up.iter().zip(&gate))
        .map(|(&dim, (u, g))| RowStats {
            dim,
            value: state[dim],
            up_norm: norm(u),
            up_max: max(u),
            gate_norm: norm(g),
            gate_max: max(g),
        })
        .collect())
}
