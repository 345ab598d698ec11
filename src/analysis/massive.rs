//! Massive activations (Sun et al. 2024, "Massive Activations in Large
//! Language Models"), the massive weights that create them (Oh, Shin, Oh
//! 2024, "House of Cards: Massive Weights in LLMs") and super-weight
//! candidates (Yu et al. 2024, "The Super Weight in Large Language Models").
//!
//! - An activation is massive when |x| > `min_abs` (100) and
//!   |x| >= `min_ratio` (1000) x the median |x| of its hidden state.
//!   "Its hidden state" is, by default, the whole (tokens x dims) output of
//!   the layer, as the published code computes it (`torch.median` over the
//!   layer output); `MedianScope::Token` uses the token's own vector instead.
//!   The scope matters: in SmolLM2-135M the BOS token's vector is large in
//!   every dim from layer 11 on (median ~50), so per-token ratios stay near
//!   500 while the massive dim reaches ~25,000.
//! - The massive layer is the first layer whose output (resid_post) holds one.
//! - Its massive weights: with BOS at position 0, the top-k dims of |d_ff
//!   intermediate state| at position 0 of that layer name rows of W_up/W_gate.
//! - Super weight: down_proj[massive hidden dim, top intermediate dim] of that layer.

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use crate::checkpoint::{Proj, WeightId};
use crate::model::hooks::{CaptureRequest, Captured, HookPoint, Reduction};
use crate::model::{LogitsMode, Model, ModelError, Result, RunOptions};

/// Which median the ratio is taken against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MedianScope {
    /// The whole layer output (all tokens x dims).
    Layer,
    /// The token's own hidden state.
    Token,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Thresholds {
    pub min_abs: f32,
    pub min_ratio: f32,
    pub scope: MedianScope,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            min_abs: 100.0,
            min_ratio: 1000.0,
            scope: MedianScope::Layer,
        }
    }
}

/// One large activation of a layer's output.
#[derive(Debug, Clone, Serialize)]
pub struct Activation {
    pub layer: usize,
    pub position: usize,
    pub token: String,
    pub dim: usize,
    pub value: f32,
    /// |value| / the median in scope.
    pub ratio: f32,
    pub massive: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct LayerScan {
    pub layer: usize,
    /// Median |x| of the whole layer output.
    pub median: f32,
    /// The largest |x| of the layer output, largest first.
    pub top: Vec<Activation>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MassiveWeights {
    pub layer: usize,
    /// d_ff dims ranked by |intermediate state| at position 0: rows of W_up and W_gate.
    pub dims: Vec<usize>,
    pub values: Vec<f32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SuperWeight {
    pub layer: usize,
    pub row: usize,
    pub col: usize,
    pub value: f32,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScanReport {
    pub tokens: Vec<u32>,
    pub token_texts: Vec<String>,
    /// What sits at position 0: "bos" (the model's BOS token was prepended)
    /// or "first-token" (no BOS: the first token of the probe).
    pub position0: String,
    pub thresholds: Thresholds,
    pub layers: Vec<LayerScan>,
    pub massive_layer: Option<usize>,
    pub massive_activations: Vec<Activation>,
    pub massive_weights: Option<MassiveWeights>,
    /// The super weight of the massive layer first, then the largest
    /// |entries| of every down_proj.
    pub super_weights: Vec<SuperWeight>,
    /// Families that normalize the MLP's output: that norm's scale at each
    /// massive hidden dim (at position 0), layer by layer.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub post_mlp_norm: Vec<super::norms::NormScales>,
}

/// How many of the largest activations each layer reports.
const TOP_PER_LAYER: usize = 16;
/// How many of the largest |entries| of each down_proj are listed.
const DOWN_PROJ_TOP: usize = 2;

/// Builds the probe: BOS first when the model has one.
pub fn probe_tokens(model: &Model, tokens: &[u32]) -> (Vec<u32>, &'static str) {
    match model.config().bos_token_id {
        Some(bos) if tokens.first() != Some(&bos) => {
            let mut v = vec![bos];
            v.extend_from_slice(tokens);
            (v, "bos")
        }
        Some(_) => (tokens.to_vec(), "bos"),
        None => (tokens.to_vec(), "first-token"),
    }
}

fn find(caps: &[Captured], layer: usize, point: HookPoint, r: Reduction) -> &Captured {
    caps.iter()
        .find(|c| c.hook.layer == layer && c.hook.point == point && c.reduction == r)
        .expect("requested capture present")
}

/// Scans a probe (already BOS-prefixed, see [`probe_tokens`]) for massive
/// activations, the massive layer, its top-`k` massive weights and super weights.
pub fn scan(
    model: &Model,
    tokenizer: &tokenizers::Tokenizer,
    tokens: &[u32],
    position0: &str,
    k: usize,
    th: Thresholds,
) -> Result<ScanReport> {
    let opts = RunOptions {
        capture: vec![
            CaptureRequest::every_layer(HookPoint::ResidPost, Reduction::TopK(TOP_PER_LAYER)),
            CaptureRequest::every_layer(HookPoint::ResidPost, Reduction::MedianAbs),
            CaptureRequest::every_layer(HookPoint::ResidPost, Reduction::MedianAbsPerToken),
            CaptureRequest::every_layer(HookPoint::MlpPost, Reduction::Position(0)),
        ],
        logits: LogitsMode::None,
        ..Default::default()
    };
    let out = model.forward(&[tokens.to_vec()], None, &opts)?;
    let d = model.config().d_model;
    let token_texts: Vec<String> = tokens
        .iter()
        .map(|&t| tokenizer.decode(&[t], false).unwrap_or_default())
        .collect();
    let mut layers = Vec::new();
    let mut massive_activations = Vec::new();
    for layer in 0..model.config().n_layers {
        let top = find(
            &out.captures,
            layer,
            HookPoint::ResidPost,
            Reduction::TopK(TOP_PER_LAYER),
        );
        let median = find(
            &out.captures,
            layer,
            HookPoint::ResidPost,
            Reduction::MedianAbs,
        )
        .values[0];
        // A NaN would rank as nothing and an Inf as everything: no scan
        // result is better than a wrong one.
        if !median.is_finite() || top.values.iter().any(|v| !v.is_finite()) {
            return Err(crate::model::ModelError::Invalid(format!(
                "layer {layer}'s residual stream holds NaN or infinite values (an overflow in {:?}?): the scan has no result",
                model.dtype()
            )));
        }
        let per_token = &find(
            &out.captures,
            layer,
            HookPoint::ResidPost,
            Reduction::MedianAbsPerToken,
        )
        .values;
        let acts: Vec<Activation> = top
            .values
            .iter()
            .zip(&top.indices)
            .map(|(&value, &flat)| {
                let (position, dim) = (flat as usize / d, flat as usize % d);
                let base = match th.scope {
                    MedianScope::Layer => median,
                    MedianScope::Token => per_token[position],
                };
                let ratio = value.abs() / base.max(f32::MIN_POSITIVE);
                Activation {
                    layer,
                    position,
                    token: token_texts[position].clone(),
                    dim,
                    value,
                    ratio,
                    massive: value.abs() > th.min_abs && ratio >= th.min_ratio,
                }
            })
            .collect();
        massive_activations.extend(acts.iter().filter(|a| a.massive).cloned());
        layers.push(LayerScan {
            layer,
            median,
            top: acts,
        });
    }
    let massive_layer = massive_activations.first().map(|a| a.layer);
    let massive_weights = massive_layer.map(|layer| {
        let inter = &find(
            &out.captures,
            layer,
            HookPoint::MlpPost,
            Reduction::Position(0),
        )
        .values;
        let dims = rank_by_abs(inter, k);
        MassiveWeights {
            layer,
            values: dims.iter().map(|&i| inter[i]).collect(),
            dims,
        }
    });
    let mut super_weights = Vec::new();
    if let (Some(mw), Some(layer)) = (&massive_weights, massive_layer) {
        // The massive hidden dim: the largest massive activation at position 0 of that layer.
        let hidden = massive_activations
            .iter()
            .filter(|a| a.layer == layer)
            .max_by(|a, b| {
                (a.position == 0)
                    .cmp(&(b.position == 0))
                    .then(a.value.abs().total_cmp(&b.value.abs()))
            })
            .map(|a| a.dim);
        if let (Some(row), Some(&col)) = (hidden, mw.dims.first()) {
            // One entry read where the matrix lives (not the matrix copied).
            let value = down_proj(model, layer)?
                .get(row)?
                .get(col)?
                .to_dtype(DType::F32)?
                .to_scalar::<f32>()?;
            super_weights.push(SuperWeight {
                layer,
                row,
                col,
                value,
            });
        }
    }
    for layer in 0..model.config().n_layers {
        super_weights.extend(largest_entries(model, layer, DOWN_PROJ_TOP)?);
    }
    let mut hidden_dims: Vec<usize> = Vec::new();
    for a in massive_activations.iter().filter(|a| a.position == 0) {
        if !hidden_dims.contains(&a.dim) && hidden_dims.len() < 4 {
            hidden_dims.push(a.dim);
        }
    }
    let post_mlp_norm = super::norms::post_mlp_norm_scales(model, &hidden_dims)?;
    Ok(ScanReport {
        post_mlp_norm,
        tokens: tokens.to_vec(),
        token_texts,
        position0: position0.to_string(),
        thresholds: th,
        layers,
        massive_layer,
        massive_activations,
        massive_weights,
        super_weights,
    })
}

/// Indices of the `k` largest |v|, largest first, ties by index (as a
/// stable sort orders them). Found by selection, so the few largest of
/// millions cost a linear pass, not a sort.
pub fn rank_by_abs(v: &[f32], k: usize) -> Vec<usize> {
    let order = |a: &usize, b: &usize| v[*b].abs().total_cmp(&v[*a].abs()).then(a.cmp(b));
    let mut idx: Vec<usize> = (0..v.len()).collect();
    let k = k.min(idx.len());
    if k == 0 {
        return Vec::new();
    }
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, order);
        idx.truncate(k);
    }
    idx.sort_unstable_by(order);
    idx
}

/// The `n` largest |entries| of a layer's down_proj, with coordinates.
/// Each row's largest |entry| is found where the matrix lives; the `n`
/// largest entries lie in the rows whose maximum reaches the n-th largest
/// row maximum, and only those rows cross to the host (an 8B model's
/// down_proj is 235 MB in f32, its row maxima 16 KB).
fn largest_entries(model: &Model, layer: usize, n: usize) -> Result<Vec<SuperWeight>> {
    let w = down_proj(model, layer)?;
    let (_rows, cols) = w.dims2()?;
    let row_max = w.abs()?.max(1)?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let Some(&nth) = rank_by_abs(&row_max, n).last() else {
        return Ok(Vec::new());
    };
    let floor = row_max[nth];
    let rows: Vec<u32> = (0..row_max.len())
        .filter(|&r| row_max[r] >= floor)
        .map(|r| r as u32)
        .collect();
    let picked = w
        .index_select(&Tensor::from_vec(rows.clone(), rows.len(), w.device())?, 0)?
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    // Rows ascending, columns ascending: ties rank as in the whole matrix.
    Ok(rank_by_abs(&picked, n)
        .into_iter()
        .map(|i| SuperWeight {
            layer,
            row: rows[i / cols] as usize,
            col: i % cols,
            value: picked[i],
        })
        .collect())
}

fn down_proj(model: &Model, layer: usize) -> Result<candle_core::Tensor> {
    let id = WeightId::layer(layer, Proj::Down);
    model
        .weight(id)
        .ok_or_else(|| ModelError::Invalid(format!("the model has no {id}")))
}

/// Every d_ff dim of `layer` ranked by |intermediate state| at position 0 of
/// `tokens` (BOS-first): the House-of-Cards ranking of W_up/W_gate rows.
pub fn rank_ffn_dims(
    model: &Model,
    tokens: &[u32],
    layer: usize,
) -> Result<(Vec<usize>, Vec<f32>)> {
    let opts = RunOptions {
        capture: vec![CaptureRequest::at(
            layer,
            HookPoint::MlpPost,
            Reduction::Position(0),
        )],
        logits: LogitsMode::None,
        ..Default::default()
    };
    let out = model.forward(&[tokens.to_vec()], None, &opts)?;
    let inter = out
        .captures
        .into_iter()
        .next()
        .ok_or_else(|| ModelError::Invalid(format!("no d_ff state captured at layer {layer}")))?
        .values;
    let ranked = rank_by_abs(&inter, inter.len());
    Ok((ranked, inter))
}

#[cfg(test)]
mod tests {
    use super::rank_by_abs;

    /// Selection ranks exactly as a stable sort by |v| does, ties by index.
    #[test]
    fn ranking_by_selection_equals_a_stable_sort() {
        let v: Vec<f32> = (0..997)
            .map(|i| ((i * 7919 % 211) as f32 - 105.0) * if i % 3 == 0 { -1.0 } else { 1.0 })
            .collect();
        let mut sorted: Vec<usize> = (0..v.len()).collect();
        sorted.sort_by(|&a, &b| v[b].abs().total_cmp(&v[a].abs()));
        for k in [0, 1, 2, 5, 211, 996, 997, 2000] {
            assert_eq!(rank_by_abs(&v, k), sorted[..k.min(v.len())], "k = {k}");
        }
        assert!(rank_by_abs(&[], 3).is_empty());
    }
}
