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

    /// The micro-batches of one update: its examples (indices into
    /// `examples`) sorted by length, then `size` at a time, so each pads
    /// to examples of about its own length. The update's gradient is the
    /// same sum over the same examples; on Alpaca-like data about half the
    /// padding of micro-batches in shuffled order goes.
    pub fn by_length(examples: &[Example], chosen: &[usize], size: usize, pad: u32) -> Vec<Self> {
        let mut sorted = chosen.to_vec();
        sorted.sort_by_key(|&i| examples[i].ids.len());
        sorted
            .chunks(size.max(1))
            .map(|c| Self::new(&c.iter().map(|&i| &examples[i]).collect::<Vec<_>>(), pad))
            .collect()
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
    let targets = Tensor::from_vec(batch.targets.clone(), (n, 1), logits.device())?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?.gather(&targets, 1)?;
    Ok(logp.sum_all()?.neg()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(len: usize, loss_from: usize) -> Example {
        Example {
            ids: (0..len as u32).map(|i| i + 10).collect(),
            loss_from,
        }
    }

    /// Lengths 9, 2, 7, 3 in micro-batches of 2: (2, 3) and (7, 9), 24
    /// padded positions instead of the given order's 32, the same tokens
    /// counted.
    #[test]
    fn micro_batches_group_examples_by_length() {
        let ex = vec![example(9, 4), example(2, 1), example(7, 2), example(3, 1)];
        let width = |bs: &[Batch]| -> Vec<usize> { bs.iter().map(|b| b.tokens[0].len()).collect() };
        let grouped = Batch::by_length(&ex, &[0, 1, 2, 3], 2, 0);
        assert_eq!(width(&grouped), vec![3, 9]);
        let in_order: Vec<Batch> = [[0, 1], [2, 3]]
            .iter()
            .map(|c| Batch::new(&[&ex[c[0]], &ex[c[1]]], 0))
            .collect();
        assert_eq!(width(&in_order), vec![9, 7]);
        let counted = |bs: &[Batch]| bs.iter().map(Batch::counted).sum::<usize>();
        assert_eq!(counted(&grouped), counted(&in_order));
        assert_eq!(counted(&grouped), 5 + 1 + 5 + 2);
        assert_eq!(grouped[1].tokens[1], ex[0].ids);
    }
}
