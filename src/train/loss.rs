//! The language-model loss of a batch through the differentiable forward:
//! cross-entropy of each counted token, logits computed only at the
//! positions that predict one.

use std::sync::Arc;

use candle_core::{Tensor, D};

use super::data::Example;
use super::Result;
use crate::model::intervention::Interventions;
use crate::model::lora::{Lora, RowDrop};
use crate::model::{LogitsMode, Model, RunOptions};

/// Examples right-padded into one batch (causal attention keeps padding
/// after a row from changing it), with the (flat position, target) of
/// every counted token.
#[derive(Debug, Clone)]
pub struct Batch {
    pub tokens: Vec<Vec<u32>>,
    pub positions: Vec<u32>,
    pub targets: Vec<u32>,
}

impl Batch {
    pub fn new(examples: &[&Example], pad: u32) -> Self {
        let width = examples.iter().map(|e| e.ids.len()).max().unwrap_or(0);
        let mut tokens = Vec::with_capacity(examples.len());
        let (mut positions, mut targets) = (Vec::new(), Vec::new());
        for (r, e) in examples.iter().enumerate() {
            let mut row = e.ids.clone();
            row.resize(width, pad);
            for p in e.loss_from.max(1)..e.ids.len() {
                positions.push((r * width + p - 1) as u32);
                targets.push(e.ids[p]);
            }
            tokens.push(row);
        }
        Self {
            tokens,
            positions,
            targets,
        }
    }

    /// The number of tokens the loss counts.
    pub fn counted(&self) -> usize {
        self.targets.len()
    }
}

/// The summed cross-entropy (f32 scalar, differentiable with respect to
/// the adapters) of a batch's counted tokens.
pub fn summed_loss(
    model: &Model,
    lora: &Arc<Lora>,
    drop: Option<RowDrop>,
    masks: &Interventions,
    batch: &Batch,
) -> Result<Tensor> {
    let opts = RunOptions {
        logits: LogitsMode::Selected,
        selected: batch.positions.clone(),
        lora: Some(lora.clone()),
        row_drop: drop,
        differentiable: true,
        interventions: vec![masks.clone()],
        ..RunOptions::default()
    };
    let logits = model
        .forward(&batch.tokens, None, &opts)?
        .logits
        .expect("selected logits were asked for");
    let n = batch.targets.len();
    let targets = Tensor::from_vec(batch.targets.clone(), (n, 1), model.device())?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?.gather(&targets, 1)?;
    Ok(logp.sum_all()?.neg()?)
}
