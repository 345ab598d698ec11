//! LoRA adapters and MacDrop's dropout of massive rows, as parts of a
//! forward. The frozen weights are never copied: an adapter adds
//! `scale * B (A x)` to its projection's output, and a dropped element of a
//! massive row takes its share out of that row's dot product. Both follow
//! Hugging Face's row order; q/k rows held in rotary order are mapped here.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var};

use super::matrix::Matrix;
use super::{Model, ModelError, Result};
use crate::checkpoint::{Architecture, Proj, WeightId};
use crate::rng::SplitMix64;

/// A and B of one adapted matrix, shaped as PEFT stores them: lora_A is
/// (rank, in), lora_B is (out, rank).
#[derive(Debug, Clone)]
pub struct LoraPair {
    pub a: Var,
    pub b: Var,
}

/// Adapters train in f32 (f64 on an f64 model, for gradient checks).
fn lora_dtype(model: &Model) -> DType {
    match model.dtype() {
        DType::F64 => DType::F64,
        _ => DType::F32,
    }
}

/// A set of LoRA adapters over a model's decoder projections.
#[derive(Debug, Clone)]
pub struct Lora {
    pub rank: usize,
    pub alpha: f64,
    pairs: BTreeMap<WeightId, LoraPair>,
}

impl Lora {
    /// PEFT's default initialisation: A uniform in +-1/sqrt(in) (torch's
    /// kaiming-uniform with a = sqrt(5)), B zero, so training starts from
    /// the base model exactly. Every layer's `targets` are adapted.
    pub fn init(
        model: &Model,
        targets: &[Proj],
        rank: usize,
        alpha: f64,
        seed: u64,
    ) -> Result<Self> {
        Self::check_trainable(model, rank, alpha, targets)?;
        let mut rng = SplitMix64::new(seed);
        let mut pairs = BTreeMap::new();
        for layer in 0..model.config().n_layers {
            for &proj in targets {
                let id = WeightId::layer(layer, proj);
                let (out, inp) = model.weight_shape(id)?;
                let bound = 1.0 / (inp as f64).sqrt();
                let a: Vec<f32> = (0..rank * inp)
                    .map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32)
                    .collect();
                let dtype = lora_dtype(model);
                let on = model.placement().of_layer(layer);
                let a = Tensor::from_vec(a, (rank, inp), on)?.to_dtype(dtype)?;
                let b = Tensor::zeros((out, rank), dtype, on)?;
                pairs.insert(
                    id,
                    LoraPair {
                        a: Var::from_tensor(&a)?,
                        b: Var::from_tensor(&b)?,
                    },
                );
            }
        }
        Ok(Self { rank, alpha, pairs })
    }

    /// Adapters from stored tensors (an adapter file), checked against the
    /// model's shapes and put on its device in f32 (f64 on an f64 model).
    pub fn from_tensors(
        model: &Model,
        rank: usize,
        alpha: f64,
        tensors: BTreeMap<WeightId, (Tensor, Tensor)>,
    ) -> Result<Self> {
        let targets: Vec<Proj> = tensors
            .keys()
            .filter_map(|id| match id {
                WeightId::Layer { proj, .. } => Some(*proj),
                _ => None,
            })
            .collect();
        Self::check_trainable(model, rank, alpha, &targets)?;
        let mut pairs = BTreeMap::new();
        for (id, (a, b)) in tensors {
            let WeightId::Layer { layer, .. } = id else {
                return Err(ModelError::Unsupported(format!(
                    "an adapter on {id}: LoRA adapts decoder projections only"
                )));
            };
            let (out, inp) = model.weight_shape(id)?;
            if a.dims() != [rank, inp] || b.dims() != [out, rank] {
                return Err(ModelError::Invalid(format!(
                    "adapter of {id}: lora_A is {:?} and lora_B {:?}; rank {rank} on [{out}, {inp}] needs [{rank}, {inp}] and [{out}, {rank}]",
                    a.dims(),
                    b.dims()
                )));
            }
            // On the adapted layer's device.
            let device = model.placement().of_layer(layer);
            let on = |t: Tensor| -> Result<Var> {
                Ok(Var::from_tensor(
                    &t.to_dtype(lora_dtype(model))?.to_device(device)?,
                )?)
            };
            pairs.insert(
                id,
                LoraPair {
                    a: on(a)?,
                    b: on(b)?,
                },
            );
        }
        Ok(Self { rank, alpha, pairs })
    }

    fn check_trainable(model: &Model, rank: usize, alpha: f64, targets: &[Proj]) -> Result<()> {
        if rank == 0 {
            return Err(ModelError::Invalid("LoRA rank must be at least 1".into()));
        }
        if !(alpha.is_finite() && alpha > 0.0) {
            return Err(ModelError::Invalid(format!(
                "LoRA alpha must be positive and finite, got {alpha}"
            )));
        }
        if targets.is_empty() {
            return Err(ModelError::Invalid("LoRA needs at least one target".into()));
        }
        if model.config().architecture == Architecture::Phi3 {
            // PEFT adapts Phi-3's fused qkv_proj and gate_up_proj as single
            // modules (one A shared by q, k and v), which is not an adapter
            // per projection.
            return Err(ModelError::Unsupported(
                "LoRA on Phi-3 (its q/k/v and gate/up are fused modules in PEFT)".into(),
            ));
        }
        Ok(())
    }

    /// alpha / rank: what B A is multiplied by.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    pub fn get(&self, id: WeightId) -> Option<&LoraPair> {
        self.pairs.get(&id)
    }

    pub fn pairs(&self) -> impl Iterator<Item = (&WeightId, &LoraPair)> {
        self.pairs.iter()
    }

    /// The trainable variables, A then B of each matrix in order.
    pub fn vars(&self) -> Vec<Var> {
        self.pairs
            .values()
            .flat_map(|p| [p.a.clone(), p.b.clone()])
            .collect()
    }

    /// The projections adapted (in every layer they appear in).
    pub fn targets(&self) -> Vec<Proj> {
        let mut t: Vec<Proj> = self
            .pairs
            .keys()
            .filter_map(|id| match id {
                WeightId::Layer { proj, .. } => Some(*proj),
                _ => None,
            })
            .collect();
        t.sort();
        t.dedup();
        t
    }

    /// The number of trainable values.
    pub fn parameter_count(&self) -> usize {
        self.pairs
            .values()
            .map(|p| p.a.elem_count() + p.b.elem_count())
            .sum()
    }
}

/// MacDrop's mask of one step: which elements of the rows `rows` of W_gate
/// and W_up at `layer` are kept (1) or dropped (0); one mask for both, no
/// rescaling of what is kept.
#[derive(Debug, Clone)]
pub struct RowDrop {
    pub layer: usize,
    pub rows: Vec<usize>,
    /// (rows, d_model) of 0/1 in the model's dtype.
    pub keep: Tensor,
    /// How many elements this mask drops.
    pub dropped: usize,
}

impl RowDrop {
    /// Each element of the rows is dropped with probability `p`.
    pub fn draw(
        layer: usize,
        rows: &[usize],
        d_model: usize,
        p: f64,
        rng: &mut SplitMix64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        if !(0.0..=1.0).contains(&p) {
            return Err(ModelError::Invalid(format!(
                "a drop probability must lie in [0, 1], got {p}"
            )));
        }
        let keep: Vec<f32> = (0..rows.len() * d_model)
            .map(|_| if rng.next_f64() < p { 0.0 } else { 1.0 })
            .collect();
        let dropped = keep.iter().filter(|&&k| k == 0.0).count();
        let keep = Tensor::from_vec(keep, (rows.len(), d_model), device)?.to_dtype(dtype)?;
        Ok(Self {
            layer,
            rows: rows.to_vec(),
            keep,
            dropped,
        })
    }
}

impl Model {
    /// (rows, cols) of a decoder matrix.
    pub(super) fn weight_shape(&self, id: WeightId) -> Result<(usize, usize)> {
        let w = self
            .stored(id)
            .ok_or_else(|| ModelError::Invalid(format!("the model has no {id}")))?;
        Ok((w.rows()?, w.cols()?))
    }

    /// Adds `delta` (Hugging Face row order, the matrix's shape) to a loaded
    /// decoder matrix for good: how an adapter is merged.
    pub fn add_to_weight(&mut self, id: WeightId, delta: &Tensor) -> Result<()> {
        let (rows, cols) = self.weight_shape(id)?;
        if delta.dims() != [rows, cols] {
            return Err(ModelError::Invalid(format!(
                "a change of {id} shaped {:?}; the matrix is [{rows}, {cols}]",
                delta.dims()
            )));
        }
        let WeightId::Layer { layer, proj } = self.canonical_weight(id) else {
            return Err(ModelError::Unsupported(format!(
                "changing {id}: only decoder projections take a change"
            )));
        };
        let on = self.placement.of_layer(layer);
        let delta = self.hf_rows_to_stored(id, delta.to_device(on)?)?;
        let block = &mut self.blocks[layer];
        let part = block.part_mut(proj);
        part.weight = Matrix::Dense(
            (part.weight.dense(DType::F32)? + delta.to_dtype(DType::F32)?)?.to_dtype(self.dtype)?,
        );
        self.weights_version += 1;
        block.fuse(self.dtype)
    }

    /// Picks rows given in Hugging Face order into the order `id` is held in.
    pub(super) fn hf_rows_to_stored(&self, id: WeightId, t: Tensor) -> Result<Tensor> {
        match self.reordered(id) {
            Some(order) => {
                let rows = t.dim(0)?;
                let index = Tensor::from_vec(order.to_stored(rows), rows, t.device())?;
                Ok(t.index_select(&index, 0)?)
            }
            None => Ok(t),
        }
    }
}

impl Model {
    /// Merges adapters into the loaded weights for good (W += scale B A),
    /// so every later run, recorded decode steps included, is the adapted
    /// model at the base model's speed.
    pub fn merge_lora(&mut self, lora: &Lora) -> Result<()> {
        for (&id, pair) in lora.pairs() {
            let delta = pair
                .b
                .as_tensor()
                .matmul(pair.a.as_tensor())?
                .affine(lora.scale(), 0.0)?;
            self.add_to_weight(id, &delta)?;
        }
        Ok(())
    }
}
