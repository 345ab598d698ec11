//! Interventions applied during a run, per sequence of the batch, without
//! touching the loaded weights.
//!
//! With no biases, zeroing row j of W_up (or W_gate) zeroes d_ff dim j of the
//! intermediate state, so both House-of-Cards attacks are a mask over d_ff
//! (a test proves the equivalence against physically zeroed weights).
//! A single-weight edit W[row, col] = v adds x[col] * (v - W[row, col]) to
//! output `row`, which equals running with the edited matrix.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::checkpoint::WeightId;

/// Which d_ff dims of a layer survive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MaskMode {
    /// The listed dims are zeroed (top-k zeroing).
    Zero,
    /// Only the listed dims survive (top-k retaining, "keep only").
    Keep,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FfnMask {
    pub mode: MaskMode,
    pub dims: Vec<usize>,
}

impl FfnMask {
    /// The multiplier (0 or 1) for each of `d_ff` dims.
    pub fn multipliers(&self, d_ff: usize) -> Vec<f32> {
        let (base, listed) = match self.mode {
            MaskMode::Zero => (1.0, 0.0),
            MaskMode::Keep => (0.0, 1.0),
        };
        let mut m = vec![base; d_ff];
        for &d in &self.dims {
            if d < d_ff {
                m[d] = listed;
            }
        }
        m
    }
}

/// Set one entry of a weight matrix to `value`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WeightEdit {
    pub tensor: WeightId,
    pub row: usize,
    pub col: usize,
    pub value: f32,
}

/// A LoRA adapter applied to one sequence of a batch (on the fly, so a
/// base row and adapted rows share one batch and one copy of the weights).
/// Two are equal when they are the same adapter.
#[derive(Debug, Clone)]
pub struct RowAdapter(pub std::sync::Arc<super::lora::Lora>);

impl PartialEq for RowAdapter {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Everything done to one sequence of a batch.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Interventions {
    /// layer -> mask over its d_ff dims.
    pub ffn_masks: BTreeMap<usize, FfnMask>,
    pub weight_edits: Vec<WeightEdit>,
    #[serde(skip)]
    pub adapter: Option<RowAdapter>,
}

impl Interventions {
    pub fn none() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.ffn_masks.is_empty() && self.weight_edits.is_empty() && self.adapter.is_none()
    }

    /// A d_ff mask on one layer.
    pub fn ffn_mask(layer: usize, mode: MaskMode, dims: Vec<usize>) -> Self {
        let mut s = Self::default();
        s.ffn_masks.insert(layer, FfnMask { mode, dims });
        s
    }

    /// These interventions on the model with `adapter` applied.
    pub fn with_adapter(mut self, adapter: Option<std::sync::Arc<super::lora::Lora>>) -> Self {
        self.adapter = adapter.map(RowAdapter);
        self
    }
}
