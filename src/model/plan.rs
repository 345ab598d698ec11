//! One forward's plan: the interventions and captures of a run, resolved
//! against the loaded model (d_ff masks as tensors, weight edits as deltas).

use candle_core::{DType, IndexOp, Tensor};

use super::capture::Captures;
use super::fused::{GemvInput, Tees};
use super::gemv;
use super::hooks::{HookName, HookPoint};
use super::intervention::Interventions;
use super::lora::Lora;
use super::matrix::Matrix;
use super::rope::RotaryOrder;
use super::{Linear, Model, ModelError, Result, RunOptions};
use crate::checkpoint::{Proj, WeightId};

/// One forward's interventions and captures, resolved against the model.
pub(super) struct Plan<'a> {
    opts: &'a RunOptions,
    /// layer -> (batch, 1, d_ff) multipliers.
    masks: Vec<Option<Tensor>>,
    /// weight -> (row, col, per-batch-row delta (batch, 1, 1)).
    edits: Vec<(WeightId, usize, usize, Tensor)>,
    /// Embedding edits as (batch row, token id, dim, delta).
    embed_edits: Vec<(usize, u32, usize, f32)>,
    lora: Option<&'a Lora>,
    /// Adapters of some rows only: each with its (batch, 1, 1) row mask,
    /// one copy per device of the model.
    row_lora: Vec<(std::sync::Arc<Lora>, Vec<Tensor>)>,
    /// q/k rows' held order, to map adapter outputs (Hugging Face order) to it.
    rotary: Option<RotaryOrder>,
    drop: Option<DropPlan>,
}

/// MacDrop's mask of this run, resolved: the rows, which elements each
/// loses (1 where dropped) and a one-hot map from the k rows to all d_ff.
struct DropPlan {
    layer: usize,
    rows: Tensor,
    dropped: Tensor,
    onehot: Tensor,
}

impl<'a> Plan<'a> {
    pub(super) fn new(model: &Model, opts: &'a RunOptions, b: usize) -> Result<Self> {
        let c = &model.config;
        let per_row = |r: usize| -> Option<&Interventions> {
            match opts.interventions.len() {
                0 => None,
                1 => opts.interventions.first(),
                _ => opts.interventions.get(r),
            }
        };
        let mut masks = vec![None; c.n_layers];
        for (layer, slot) in masks.iter_mut().enumerate() {
            let rows: Vec<Option<Vec<f32>>> = (0..b)
                .map(|r| {
                    per_row(r)
                        .and_then(|iv| iv.ffn_masks.get(&layer))
                        .map(|m| m.multipliers(c.d_ff))
                })
                .collect();
            if rows.iter().all(Option::is_none) {
                continue;
            }
            let flat: Vec<f32> = rows
                .into_iter()
                .flat_map(|r| r.unwrap_or_else(|| vec![1.0; c.d_ff]))
                .collect();
            let on = model.placement.of_layer(layer);
            *slot = Some(Tensor::from_vec(flat, (b, 1, c.d_ff), on)?.to_dtype(model.dtype)?);
        }
        for r in 0..b {
            if let Some(iv) = per_row(r) {
                for (&layer, m) in &iv.ffn_masks {
                    if layer >= c.n_layers {
                        return Err(ModelError::Invalid(format!(
                            "mask on layer {layer}; the model has {}",
                            c.n_layers
                        )));
                    }
                    if let Some(&d) = m.dims.iter().find(|&&d| d >= c.d_ff) {
                        return Err(ModelError::Invalid(format!(
                            "mask dim {d}; d_ff is {}",
                            c.d_ff
                        )));
                    }
                }
            }
        }
        let mut edits = Vec::new();
        let mut embed_edits = Vec::new();
        for r in 0..b {
            let Some(iv) = per_row(r) else { continue };
            for e in &iv.weight_edits {
                let w = model.weight(e.tensor).ok_or_else(|| {
                    ModelError::Invalid(format!("weight edit: the model has no {}", e.tensor))
                })?;
                let (rows, cols) = w.dims2()?;
                if e.row >= rows || e.col >= cols {
                    return Err(ModelError::Invalid(format!(
                        "weight edit {}[{}, {}] is outside its shape [{rows}, {cols}]",
                        e.tensor, e.row, e.col
                    )));
                }
                let old = w
                    .i((e.row, e.col))?
                    .to_dtype(DType::F32)?
                    .to_scalar::<f32>()?;
                let delta = e.value - old;
                let canonical = model.canonical_weight(e.tensor);
                if canonical == WeightId::Embed {
                    embed_edits.push((r, e.row as u32, e.col, delta));
                }
                if Some(canonical) == model.lm_head.id || canonical != WeightId::Embed {
                    let mut per = vec![0f32; b];
                    per[r] = delta;
                    // On the matrix's device (its layer's, or the head's).
                    let per =
                        Tensor::from_vec(per, (b, 1, 1), w.device())?.to_dtype(model.dtype)?;
                    edits.push((canonical, model.stored_row(canonical, e.row), e.col, per));
                }
            }
        }
        let drop = match &opts.row_drop {
            None => None,
            Some(d) => {
                if d.layer >= c.n_layers {
                    return Err(ModelError::Invalid(format!(
                        "row dropout at layer {}; the model has {}",
                        d.layer, c.n_layers
                    )));
                }
                if let Some(&r) = d.rows.iter().find(|&&r| r >= c.d_ff) {
                    return Err(ModelError::Invalid(format!(
                        "row dropout of row {r}; d_ff is {}",
                        c.d_ff
                    )));
                }
                if d.keep.dims() != [d.rows.len(), c.d_model] {
                    return Err(ModelError::Invalid(format!(
                        "a row-dropout mask shaped {:?} for {} rows of {} columns",
                        d.keep.dims(),
                        d.rows.len(),
                        c.d_model
                    )));
                }
                let k = d.rows.len();
                let mut onehot = vec![0f32; k * c.d_ff];
                for (i, &r) in d.rows.iter().enumerate() {
                    onehot[i * c.d_ff + r] = 1.0;
                }
                let rows: Vec<u32> = d.rows.iter().map(|&r| r as u32).collect();
                let on = model.placement.of_layer(d.layer);
                Some(DropPlan {
                    layer: d.layer,
                    rows: Tensor::from_vec(rows, k, on)?,
                    dropped: d
                        .keep
                        .to_device(on)?
                        .to_dtype(model.dtype)?
                        .affine(-1.0, 1.0)?,
                    onehot: Tensor::from_vec(onehot, (k, c.d_ff), on)?.to_dtype(model.dtype)?,
                })
            }
        };
        let lora = opts.lora.as_deref();
        let mut row_lora: Vec<(std::sync::Arc<Lora>, Vec<f32>)> = Vec::new();
        for r in 0..b {
            let Some(a) = per_row(r).and_then(|iv| iv.adapter.as_ref()) else {
                continue;
            };
            let at = match row_lora
                .iter()
                .position(|(l, _)| std::sync::Arc::ptr_eq(l, &a.0))
            {
                Some(i) => i,
                None => {
                    row_lora.push((a.0.clone(), vec![0.0; b]));
                    row_lora.len() - 1
                }
            };
            row_lora[at].1[r] = 1.0;
        }
        let row_lora = row_lora
            .into_iter()
            .map(|(l, m)| {
                let mask = Tensor::from_vec(m, (b, 1, 1), model.device())?.to_dtype(model.dtype)?;
                let copies = model
                    .placement
                    .devices()
                    .iter()
                    .map(|d| mask.to_device(d))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Ok((l, copies))
            })
            .collect::<Result<Vec<_>>>()?;
        let rotary = (lora.is_some() || !row_lora.is_empty())
            .then(|| model.rotary_order.clone())
            .flatten();
        Ok(Self {
            opts,
            masks,
            edits,
            embed_edits,
            lora,
            row_lora,
            rotary,
            drop,
        })
    }

    /// How many leading layers compute the same states in every row of
    /// `tokens`: rows of one token sequence whose interventions and
    /// captures all lie at or above a layer agree below it, so those
    /// layers run once, for one row (a sweep's attacks on one layer share
    /// everything before it). 0 where rows may differ from the embedding.
    pub(super) fn shared_layers(
        &self,
        tokens: &[Vec<u32>],
        n_layers: usize,
        cached: bool,
    ) -> usize {
        let o = self.opts;
        let alike = tokens.iter().all(|row| row == &tokens[0]);
        if tokens.len() < 2
            || !alike
            || cached
            || o.branches.is_some()
            || o.key_padding.is_some()
            || self.adapts()
            || !self.embed_edits.is_empty()
        {
            return 0;
        }
        let mut upto = n_layers;
        for iv in &o.interventions {
            if let Some(&first) = iv.ffn_masks.keys().next() {
                upto = upto.min(first);
            }
            for e in &iv.weight_edits {
                match e.tensor {
                    WeightId::Embed => return 0,
                    WeightId::Head => {}
                    WeightId::Layer { layer, .. } => upto = upto.min(layer),
                }
            }
        }
        for req in &o.capture {
            match req.layers.as_ref().and_then(|l| l.iter().min()) {
                Some(&first) => upto = upto.min(first),
                None => return 0,
            }
        }
        upto
    }

    /// Whether this run computes with only differentiable ops.
    pub(super) fn differentiable(&self) -> bool {
        self.opts.differentiable
    }

    /// Whether adapters, row dropout or training change this run (a
    /// recorded decode step has none of them).
    pub(super) fn adapts(&self) -> bool {
        self.lora.is_some()
            || !self.row_lora.is_empty()
            || self.drop.is_some()
            || self.differentiable()
    }

    /// Whether `parts` must run apart instead of as one stacked matmul: a
    /// weight edit, an adapter or row dropout touches one of them.
    pub(super) fn runs_apart(&self, parts: &[&Linear]) -> bool {
        self.edits_any(parts)
            || parts.iter().filter_map(|l| l.id).any(|id| {
                self.lora.is_some_and(|lora| lora.get(id).is_some())
                    || self.row_lora.iter().any(|(l, _)| l.get(id).is_some())
                    || self.drops(id)
            })
    }

    fn drops(&self, id: WeightId) -> bool {
        match (&self.drop, id) {
            (
                Some(d),
                WeightId::Layer {
                    layer,
                    proj: Proj::Gate | Proj::Up,
                },
            ) => layer == d.layer,
            _ => false,
        }
    }

    /// Whether a weight edit of this run touches one of `parts` (which then
    /// run apart instead of as one stacked matmul).
    pub(super) fn edits_any(&self, parts: &[&Linear]) -> bool {
        self.edits
            .iter()
            .any(|(id, ..)| parts.iter().any(|l| l.id == Some(*id)))
    }

    /// Whether this run edits single weights (or embedding entries): those
    /// are applied from host-side values, which a recorded step cannot do.
    pub(super) fn has_weight_edits(&self) -> bool {
        !self.edits.is_empty() || !self.embed_edits.is_empty()
    }

    /// The d_ff mask tensors this plan made (a recorded step keeps them alive).
    pub(super) fn mask_tensors(&self) -> Vec<Tensor> {
        self.masks.iter().flatten().cloned().collect()
    }

    pub(super) fn ffn_mask(&self, layer: usize) -> Option<&Tensor> {
        self.masks[layer].as_ref()
    }

    /// residual + [`Self::linear`]: on a GPU, for a few rows and a matrix
    /// nothing edits, adapts or drops, one GEMV kernel that adds as it
    /// stores (the residual stream's add without a kernel of its own).
    pub(super) fn linear_plus(&self, l: &Linear, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        Ok(self.linear_plus_into(l, x, residual, None)?.0)
    }

    /// [`Self::linear_plus`], the GEMV also writing the sum into `dest`
    /// where it can: the sum, and whether `dest` holds it.
    pub(super) fn linear_plus_into(
        &self,
        l: &Linear,
        x: &Tensor,
        residual: &Tensor,
        dest: Option<&Tensor>,
    ) -> Result<(Tensor, bool)> {
        let tees = Tees {
            out: dest,
            input: None,
        };
        match self.linear_fused(l, GemvInput::Plain(x), Some(residual), tees)? {
            Some(y) => Ok((y, dest.is_some())),
            None => Ok(((residual + self.linear(l, x)?)?, false)),
        }
    }

    /// `add` + `l` applied to `input` (b, t, ..) by the GPU's GEMV, which
    /// forms the input as it reads it (see [`GemvInput`]) and writes
    /// `tees` too. For a few rows and a matrix nothing edits, adapts or
    /// drops; None elsewhere (the caller composes the ops).
    pub(super) fn linear_fused(
        &self,
        l: &Linear,
        input: GemvInput<'_>,
        add: Option<&Tensor>,
        tees: Tees<'_>,
    ) -> Result<Option<Tensor>> {
        let (b, t, _) = input.x().dims3()?;
        let plain = l.bias.is_none() && !self.runs_apart(&[l]);
        if !plain || b * t > super::gemv::MAX_ROWS || self.differentiable() {
            return Ok(None);
        }
        let out = l.weight.rows()?;
        Ok(super::fused::gemv(&l.weight, input, add, tees)?
            .map(|y| y.reshape((b, t, out)))
            .transpose()?)
    }

    /// Whether a capture of this run wants the state at (layer, point).
    pub(super) fn wants(&self, layer: usize, point: HookPoint) -> bool {
        self.opts.capture.iter().any(|r| r.wants(layer, point))
    }

    /// y = x W^T (+ b), plus the effect of any single-weight edits of W.
    pub(super) fn linear(&self, l: &Linear, x: &Tensor) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let out = l.weight.rows()?;
        let fast = if b * t <= super::gemv::MAX_ROWS && !self.differentiable() {
            let cpu = match &l.weight {
                Matrix::Dense(w) => gemv::gemv(w, x)?,
                Matrix::Blocks(b) => gemv::gemv_blocks(b, x)?,
            };
            match cpu {
                Some(y) => Some(y),
                None => super::fused::gemv(&l.weight, GemvInput::Plain(x), None, Tees::default())?,
            }
        } else {
            None
        };
        let mut y = match fast {
            Some(y) => y.reshape((b, t, out))?,
            None if self.differentiable() => {
                super::frozen::frozen_matmul(&x.reshape((b * t, d))?, &l.weight.dense(x.dtype())?)?
                    .reshape((b, t, out))?
            }
            None => {
                let (x, w) = (x.reshape((b * t, d))?, l.weight.dense(x.dtype())?);
                match super::split_matmul::matmul_t(&x, &w)? {
                    Some(y) => y,
                    None => x.matmul(&w.t()?)?,
                }
                .reshape((b, t, out))?
            }
        };
        if let Some(bias) = &l.bias {
            y = y.broadcast_add(bias)?;
        }
        for (id, row, col, delta) in &self.edits {
            if l.id != Some(*id) {
                continue;
            }
            let contribution = x.narrow(2, *col, 1)?.broadcast_mul(delta)?; // (b, t, 1)
            let mut onehot = vec![0f32; out];
            onehot[*row] = 1.0;
            let onehot = Tensor::from_vec(onehot, (1, 1, out), x.device())?.to_dtype(x.dtype())?;
            y = (y + contribution.broadcast_mul(&onehot)?)?;
        }
        let Some(id) = l.id else { return Ok(y) };
        if let (Some(drop), true) = (&self.drop, self.drops(id)) {
            // The dropped elements' share of each massive row's dot product.
            let lost = l
                .weight
                .select_rows(&drop.rows)?
                .dense(x.dtype())?
                .mul(&drop.dropped)?;
            let share = x.reshape((b * t, d))?.matmul(&lost.t()?)?;
            y = (y - share.matmul(&drop.onehot)?.reshape((b, t, out))?)?;
        }
        if let Some(lora) = self.lora {
            if let Some(delta) = self.lora_delta(lora, id, x, out)? {
                y = (y + delta)?;
            }
        }
        for (lora, copies) in &self.row_lora {
            if let Some(delta) = self.lora_delta(lora, id, x, out)? {
                let rows = copies
                    .iter()
                    .find(|m| m.device().same_device(x.device()))
                    .unwrap_or(&copies[0]);
                y = (y + delta.broadcast_mul(rows)?)?;
            }
        }
        Ok(y)
    }

    /// scale * B (A x) of `lora`'s adapter of `id` (None when it has
    /// none), as (b, t, out), its rows in the order q/k rows are held in.
    fn lora_delta(
        &self,
        lora: &Lora,
        id: WeightId,
        x: &Tensor,
        out: usize,
    ) -> Result<Option<Tensor>> {
        let Some(pair) = lora.get(id) else {
            return Ok(None);
        };
        let (b, t, d) = x.dims3()?;
        // The scale applies to the rank-r product, the smallest tensor on
        // the way (and not at all when it is 1, as alpha = rank gives).
        let mut low = x
            .reshape((b * t, d))?
            .to_dtype(pair.a.dtype())?
            .matmul(&pair.a.as_tensor().t()?)?;
        if lora.scale() != 1.0 {
            low = low.affine(lora.scale(), 0.0)?;
        }
        let mut delta = low.matmul(&pair.b.as_tensor().t()?)?;
        if let (
            Some(order),
            WeightId::Layer {
                proj: Proj::Q | Proj::K,
                ..
            },
        ) = (&self.rotary, id)
        {
            let index = Tensor::from_vec(order.to_stored(out), out, x.device())?;
            delta = delta.index_select(&index, 1)?;
        }
        Ok(Some(delta.to_dtype(x.dtype())?.reshape((b, t, out))?))
    }

    pub(super) fn edit_embedding(
        &self,
        model: &Model,
        x: Tensor,
        flat: &[u32],
        b: usize,
        t: usize,
    ) -> Result<Tensor> {
        if self.embed_edits.is_empty() {
            return Ok(x);
        }
        let d = model.config.d_model;
        let mut add = vec![0f32; b * t * d];
        for &(r, token, dim, delta) in &self.embed_edits {
            for p in 0..t {
                if flat[r * t + p] == token {
                    add[(r * t + p) * d + dim] += delta;
                }
            }
        }
        let add = Tensor::from_vec(add, (b, t, d), model.device())?.to_dtype(model.dtype)?;
        Ok((x + add)?)
    }

    pub(super) fn capture(
        &self,
        layer: usize,
        point: HookPoint,
        x: &Tensor,
        out: &mut Captures,
    ) -> Result<()> {
        for req in &self.opts.capture {
            if req.wants(layer, point) {
                out.add(HookName::new(layer, point), req.reduction, x)?;
            }
        }
        Ok(())
    }
}
