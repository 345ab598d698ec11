//! How the weights are held and edited: projections that run together are
//! stored stacked (q/k/v, gate/up: one matmul each) with the parts as views,
//! and weight edits rebuild the stacks.

use candle_core::{DType, Tensor};

use super::matrix::Matrix;
use super::{Model, ModelError, Result};
use crate::checkpoint::{Proj, WeightId};

pub(super) struct Linear {
    /// Which matrix this is; None for a stack of several.
    pub(super) id: Option<WeightId>,
    pub(super) weight: Matrix,
    pub(super) bias: Option<Tensor>,
}

/// A block's norm weights, by where they sit (see [`super::family::Family`]);
/// Gemma's are stored as the (1 + w) they multiply by.
#[derive(Default)]
pub(super) struct Norms {
    pub(super) attn_in: Option<Tensor>,
    pub(super) attn_out: Option<Tensor>,
    pub(super) mlp_in: Option<Tensor>,
    pub(super) mlp_out: Option<Tensor>,
    pub(super) q: Option<Tensor>,
    pub(super) k: Option<Tensor>,
}

pub(super) struct Block {
    pub(super) norms: Norms,
    pub(super) q: Linear,
    pub(super) k: Linear,
    pub(super) v: Linear,
    pub(super) o: Linear,
    pub(super) gate: Linear,
    pub(super) up: Linear,
    pub(super) down: Linear,
    /// q, k and v stacked by rows: one matmul instead of three. q, k and v
    /// are views into it, so the weights are stored once.
    pub(super) qkv: Linear,
    /// gate and up stacked by rows, likewise.
    pub(super) gate_up: Linear,
}

impl Block {
    /// `compute`: the dtype of the biases, and of a stack that cannot
    /// stay as stored.
    pub(super) fn new(
        norms: Norms,
        [mut q, mut k, mut v, o]: [Linear; 4],
        [mut gate, mut up, down]: [Linear; 3],
        compute: DType,
    ) -> Result<Self> {
        let qkv = stack_rows(&mut [&mut q, &mut k, &mut v], compute)?;
        let gate_up = stack_rows(&mut [&mut gate, &mut up], compute)?;
        Ok(Self {
            norms,
            q,
            k,
            v,
            o,
            gate,
            up,
            down,
            qkv,
            gate_up,
        })
    }

    /// A block whose checkpoint already stacks q/k/v (rows `qkv_rows`) and
    /// gate/up (Phi-3): the parts become views of the stored tensors.
    pub(super) fn from_fused(
        norms: Norms,
        layer: usize,
        qkv: Linear,
        qkv_rows: [usize; 3],
        o: Linear,
        gate_up: Linear,
        down: Linear,
    ) -> Result<Self> {
        let part = |whole: &Linear, start: usize, rows: usize, proj: Proj| -> Result<Linear> {
            Ok(Linear {
                id: Some(WeightId::layer(layer, proj)),
                weight: whole.weight.narrow_rows(start, rows)?,
                bias: whole
                    .bias
                    .as_ref()
                    .map(|b| b.narrow(0, start, rows))
                    .transpose()?,
            })
        };
        let [nq, nk, nv] = qkv_rows;
        if qkv.weight.rows()? != nq + nk + nv {
            return Err(ModelError::Invalid(format!(
                "layer {layer}: qkv_proj has {} rows, the config implies {}",
                qkv.weight.rows()?,
                nq + nk + nv
            )));
        }
        let d_ff = gate_up.weight.rows()? / 2;
        Ok(Self {
            norms,
            q: part(&qkv, 0, nq, Proj::Q)?,
            k: part(&qkv, nq, nk, Proj::K)?,
            v: part(&qkv, nq + nk, nv, Proj::V)?,
            o,
            gate: part(&gate_up, 0, d_ff, Proj::Gate)?,
            up: part(&gate_up, d_ff, d_ff, Proj::Up)?,
            down,
            qkv,
            gate_up,
        })
    }

    /// Rebuilds the stacked matrices from the parts (after a part changed)
    /// and points the parts back into them.
    pub(super) fn fuse(&mut self, compute: DType) -> Result<()> {
        self.qkv = stack_rows(&mut [&mut self.q, &mut self.k, &mut self.v], compute)?;
        self.gate_up = stack_rows(&mut [&mut self.gate, &mut self.up], compute)?;
        Ok(())
    }
}

/// One linear map whose rows are `parts`' rows in order; each part becomes a
/// view of its rows (no second copy of the weights).
fn stack_rows(parts: &mut [&mut Linear], compute: DType) -> Result<Linear> {
    // Blocks of one format stack as blocks; parts held in different dtypes
    // (one edited or merged in the compute dtype, the rest as stored)
    // stack dense in the widest of them.
    let weight = Matrix::stack(
        &parts.iter().map(|l| &l.weight).collect::<Vec<_>>(),
        compute,
    )?;
    let bias = if parts.iter().any(|l| l.bias.is_some()) {
        let biases = parts
            .iter()
            .map(|l| match &l.bias {
                Some(b) => Ok(b.clone()),
                None => Ok(Tensor::zeros(l.weight.rows()?, compute, l.weight.device())?),
            })
            .collect::<Result<Vec<_>>>()?;
        Some(Tensor::cat(&biases, 0)?)
    } else {
        None
    };
    let mut row = 0;
    for part in parts.iter_mut() {
        let rows = part.weight.rows()?;
        part.weight = weight.narrow_rows(row, rows)?;
        if let (Some(b), Some(_)) = (&bias, &part.bias) {
            part.bias = Some(b.narrow(0, row, rows)?);
        }
        row += rows;
    }
    Ok(Linear {
        id: None,
        weight,
        bias,
    })
}

impl Block {
    fn part(&self, proj: Proj) -> &Linear {
        match proj {
            Proj::Q => &self.q,
            Proj::K => &self.k,
            Proj::V => &self.v,
            Proj::O => &self.o,
            Proj::Gate => &self.gate,
            Proj::Up => &self.up,
            Proj::Down => &self.down,
        }
    }

    pub(super) fn part_mut(&mut self, proj: Proj) -> &mut Linear {
        match proj {
            Proj::Q => &mut self.q,
            Proj::K => &mut self.k,
            Proj::V => &mut self.v,
            Proj::O => &mut self.o,
            Proj::Gate => &mut self.gate,
            Proj::Up => &mut self.up,
            Proj::Down => &mut self.down,
        }
    }
}

impl Model {
    /// Zeroes rows of W_up and W_gate of one layer in the loaded weights: the
    /// paper's definition of the attack, kept to prove the d_ff mask equal to it.
    pub fn physically_zero_ffn_rows(&mut self, layer: usize, dims: &[usize]) -> Result<()> {
        let d_ff = self.config.d_ff;
        let n_layers = self.config.n_layers;
        if layer >= n_layers {
            return Err(ModelError::Invalid(format!(
                "layer {layer}: the model has layers 0..{}",
                n_layers.saturating_sub(1)
            )));
        }
        if let Some(&d) = dims.iter().find(|&&d| d >= d_ff) {
            return Err(ModelError::Invalid(format!(
                "d_ff dim {d} is not below d_ff = {d_ff}"
            )));
        }
        let mut keep = vec![1f32; d_ff];
        for &d in dims {
            keep[d] = 0.0;
        }
        let mask = Tensor::from_vec(keep, (d_ff, 1), self.placement.of_layer(layer))?;
        let block = &mut self.blocks[layer];
        // Zero is exact in every dtype: dense matrices keep theirs, blocks
        // become dense in the compute dtype.
        for w in [&mut block.up.weight, &mut block.gate.weight] {
            let dense = match &*w {
                Matrix::Dense(t) => t.clone(),
                Matrix::Blocks(_) => w.dense(self.dtype)?,
            };
            *w = Matrix::Dense(dense.broadcast_mul(&mask.to_dtype(dense.dtype())?)?);
        }
        self.weights_version += 1;
        block.fuse(self.dtype)
    }

    /// Sets W[row, col] of a loaded matrix for good (unlike a [`super::intervention::WeightEdit`],
    /// which lasts one run). With tied embeddings the output head changes too.
    pub fn set_weight_entry(
        &mut self,
        id: WeightId,
        row: usize,
        col: usize,
        value: f32,
    ) -> Result<()> {
        let w = self
            .stored(id)
            .ok_or_else(|| ModelError::Invalid(format!("the model has no {id}")))?;
        let (rows, cols) = (w.rows()?, w.cols()?);
        if row >= rows || col >= cols {
            return Err(ModelError::Invalid(format!(
                "{id}[{row}, {col}] is outside [{rows}, {cols}]"
            )));
        }
        let mut v = w.dense(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        v[self.stored_row(id, row) * cols + col] = value;
        // In the compute dtype (a stored bf16 matrix may not hold
        // `value`, blocks hold no single value), on the matrix's device.
        let new =
            Matrix::Dense(Tensor::from_vec(v, (rows, cols), w.device())?.to_dtype(self.dtype)?);
        self.weights_version += 1;
        match self.canonical_weight(id) {
            WeightId::Embed => {
                if self.lm_head.id == Some(WeightId::Embed) {
                    self.lm_head.weight = new.to_device(self.placement.last())?;
                }
                self.embed = new;
                Ok(())
            }
            WeightId::Head => {
                self.lm_head.weight = new;
                Ok(())
            }
            WeightId::Layer { layer, proj } => {
                let block = &mut self.blocks[layer];
                block.part_mut(proj).weight = new;
                block.fuse(self.dtype)
            }
        }
    }

    /// With tied embeddings, the head and the embedding are one matrix.
    pub(super) fn canonical_weight(&self, id: WeightId) -> WeightId {
        if id == WeightId::Head && self.lm_head.id == Some(WeightId::Embed) {
            WeightId::Embed
        } else {
            id
        }
    }

    /// A matrix as held (q/k rows possibly in rotary order).
    pub(super) fn stored(&self, id: WeightId) -> Option<&Matrix> {
        match self.canonical_weight(id) {
            WeightId::Embed => Some(&self.embed),
            WeightId::Head => Some(&self.lm_head.weight),
            WeightId::Layer { layer, proj } => Some(&self.blocks.get(layer)?.part(proj).weight),
        }
    }

    /// A loaded weight matrix, rows in Hugging Face's order; None for a
    /// layer the model does not have.
    pub fn weight(&self, id: WeightId) -> Option<Tensor> {
        let stored = self.stored(id)?;
        let hf_order = match self.reordered(id) {
            Some(order) => {
                let rows = stored.rows().ok()?;
                let index = Tensor::from_vec(order.to_hf(rows), rows, stored.device()).ok()?;
                stored.select_rows(&index).ok()?
            }
            None => stored.clone(),
        };
        // In the compute dtype, whatever the matrix is held in.
        hf_order.dense(self.dtype).ok()
    }

    /// The row at which Hugging Face row `row` of `id` is held (q and k
    /// rows are held in rotary order when part of each head rotates).
    pub(super) fn stored_row(&self, id: WeightId, row: usize) -> usize {
        match self.reordered(id) {
            Some(order) => order.stored_row(row),
            None => row,
        }
    }

    pub(super) fn reordered(&self, id: WeightId) -> Option<&super::rope::RotaryOrder> {
        match id {
            WeightId::Layer {
                proj: Proj::Q | Proj::K,
                ..
            } => self.rotary_order.as_ref(),
            _ => None,
        }
    }
}
