//! How the weights are held and edited: projections that run together are
//! stored stacked (q/k/v, gate/up: one matmul each) with the parts as views,
//! and weight edits rebuild the stacks.

use candle_core::{DType, Tensor};

use super::{Model, ModelError, Result};

pub(super) struct Linear {
    pub(super) name: String,
    pub(super) weight: Tensor,
    pub(super) bias: Option<Tensor>,
}

pub(super) struct Block {
    pub(super) input_norm: Tensor,
    pub(super) q: Linear,
    pub(super) k: Linear,
    pub(super) v: Linear,
    pub(super) o: Linear,
    pub(super) post_attention_norm: Tensor,
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
    pub(super) fn new(
        input_norm: Tensor,
        [mut q, mut k, mut v, o]: [Linear; 4],
        post_attention_norm: Tensor,
        [mut gate, mut up, down]: [Linear; 3],
    ) -> Result<Self> {
        let qkv = stack_rows(&mut [&mut q, &mut k, &mut v])?;
        let gate_up = stack_rows(&mut [&mut gate, &mut up])?;
        Ok(Self {
            input_norm,
            q,
            k,
            v,
            o,
            post_attention_norm,
            gate,
            up,
            down,
            qkv,
            gate_up,
        })
    }

    /// Rebuilds the stacked matrices from the parts (after a part changed)
    /// and points the parts back into them.
    fn fuse(&mut self) -> Result<()> {
        self.qkv = stack_rows(&mut [&mut self.q, &mut self.k, &mut self.v])?;
        self.gate_up = stack_rows(&mut [&mut self.gate, &mut self.up])?;
        Ok(())
    }
}

/// One linear map whose rows are `parts`' rows in order; each part becomes a
/// view of its rows (no second copy of the weights).
fn stack_rows(parts: &mut [&mut Linear]) -> Result<Linear> {
    let weights: Vec<&Tensor> = parts.iter().map(|l| &l.weight).collect();
    let weight = Tensor::cat(&weights, 0)?;
    let bias = if parts.iter().any(|l| l.bias.is_some()) {
        let biases = parts
            .iter()
            .map(|l| match &l.bias {
                Some(b) => Ok(b.clone()),
                None => Tensor::zeros(l.weight.dim(0)?, l.weight.dtype(), l.weight.device()),
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Some(Tensor::cat(&biases, 0)?)
    } else {
        None
    };
    let mut row = 0;
    for part in parts.iter_mut() {
        let rows = part.weight.dim(0)?;
        part.weight = weight.narrow(0, row, rows)?;
        if let (Some(b), Some(_)) = (&bias, &part.bias) {
            part.bias = Some(b.narrow(0, row, rows)?);
        }
        row += rows;
    }
    let name = parts
        .iter()
        .map(|l| l.name.as_str())
        .collect::<Vec<_>>()
        .join("+");
    Ok(Linear { name, weight, bias })
}

impl Model {
    /// Zeroes rows of W_up and W_gate of one layer in the loaded weights: the
    /// paper's definition of the attack, kept to prove the d_ff mask equal to it.
    pub fn physically_zero_ffn_rows(&mut self, layer: usize, dims: &[usize]) -> Result<()> {
        let d_ff = self.config.d_ff;
        let mut keep = vec![1f32; d_ff];
        for &d in dims {
            keep[d] = 0.0;
        }
        let mask = Tensor::from_vec(keep, (d_ff, 1), &self.device)?.to_dtype(self.dtype)?;
        let block = &mut self.blocks[layer];
        block.up.weight = block.up.weight.broadcast_mul(&mask)?;
        block.gate.weight = block.gate.weight.broadcast_mul(&mask)?;
        self.weights_version += 1;
        block.fuse()
    }

    /// Sets W[row, col] of a loaded matrix for good (unlike a [`intervention::WeightEdit`],
    /// which lasts one run). With tied embeddings the output head changes too.
    pub fn set_weight_entry(
        &mut self,
        name: &str,
        row: usize,
        col: usize,
        value: f32,
    ) -> Result<()> {
        let w = self
            .weight(name)
            .ok_or_else(|| ModelError::Invalid(format!("no matrix named {name}")))?;
        let (rows, cols) = w.dims2()?;
        if row >= rows || col >= cols {
            return Err(ModelError::Invalid(format!(
                "{name}[{row}, {col}] is outside [{rows}, {cols}]"
            )));
        }
        let mut v = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        v[row * cols + col] = value;
        let new = Tensor::from_vec(v, (rows, cols), &self.device)?.to_dtype(self.dtype)?;
        self.weights_version += 1;
        let canonical = self.canonical_weight_name(name);
        if canonical == "model.embed_tokens.weight" {
            self.embed = new.clone();
        }
        if canonical == self.lm_head.name {
            self.lm_head.weight = new;
            return Ok(());
        }
        if canonical == "model.embed_tokens.weight" {
            return Ok(());
        }
        let rest = canonical.strip_prefix("model.layers.").unwrap_or_default();
        let (layer, part) = rest.split_once('.').unwrap_or_default();
        let block = &mut self.blocks[layer.parse::<usize>().unwrap_or_default()];
        let slot = match part {
            "self_attn.q_proj.weight" => &mut block.q.weight,
            "self_attn.k_proj.weight" => &mut block.k.weight,
            "self_attn.v_proj.weight" => &mut block.v.weight,
            "self_attn.o_proj.weight" => &mut block.o.weight,
            "mlp.gate_proj.weight" => &mut block.gate.weight,
            "mlp.up_proj.weight" => &mut block.up.weight,
            _ => &mut block.down.weight,
        };
        *slot = new;
        block.fuse()
    }
    /// With tied embeddings, lm_head.weight and model.embed_tokens.weight are one matrix.
    pub(super) fn canonical_weight_name(&self, name: &str) -> String {
        if name == "lm_head.weight" && self.lm_head.name == "model.embed_tokens.weight" {
            "model.embed_tokens.weight".into()
        } else {
            name.to_string()
        }
    }

    /// A loaded weight matrix by canonical name.
    pub fn weight(&self, name: &str) -> Option<&Tensor> {
        let name = self.canonical_weight_name(name);
        if name == "model.embed_tokens.weight" {
            return Some(&self.embed);
        }
        if name == self.lm_head.name {
            return Some(&self.lm_head.weight);
        }
        let rest = name.strip_prefix("model.layers.")?;
        let (layer, part) = rest.split_once('.')?;
        let block = self.blocks.get(layer.parse::<usize>().ok()?)?;
        Some(match part {
            "self_attn.q_proj.weight" => &block.q.weight,
            "self_attn.k_proj.weight" => &block.k.weight,
            "self_attn.v_proj.weight" => &block.v.weight,
            "self_attn.o_proj.weight" => &block.o.weight,
            "mlp.gate_proj.weight" => &block.gate.weight,
            "mlp.up_proj.weight" => &block.up.weight,
            "mlp.down_proj.weight" => &block.down.weight,
            _ => return None,
        })
    }
}
