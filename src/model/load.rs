//! Loading a checkpoint into a [`Model`]: every tensor in the compute dtype
//! on the device, or its matrices as stored (see [`WeightPrecision`]), laid
//! out as the family describes.

use candle_core::{DType, Device, Tensor};

use super::family::Family;
use super::matrix::{keeps_blocks, Blocks, Matrix};
use super::weights::{Block, Linear, Norms};
use super::{
    rope, Model, ModelError, PartBytes, Placement, Result, WeightPrecision, ROPE_POSITIONS_MAX,
};
use crate::checkpoint::{
    Checkpoint, Fused, NormId, NormKind, Proj, RopeScaling, StoredDType, WeightId,
};

impl Model {
    /// Loads every tensor of the checkpoint, dequantized, as `dtype` on `device`.
    /// `progress(done, total)` is called after each tensor.
    pub fn load(
        ckpt: &Checkpoint,
        device: &Device,
        dtype: DType,
        progress: impl FnMut(usize, usize),
    ) -> Result<Self> {
        Self::load_as(ckpt, device, dtype, WeightPrecision::Compute, progress)
    }

    /// [`Model::load`] with the matrices held as `precision` says.
    pub fn load_as(
        ckpt: &Checkpoint,
        device: &Device,
        dtype: DType,
        precision: WeightPrecision,
        progress: impl FnMut(usize, usize),
    ) -> Result<Self> {
        Self::load_on(
            ckpt,
            std::slice::from_ref(device),
            dtype,
            precision,
            progress,
        )
    }

    /// [`Model::load_as`] over several devices of one host: the layers in
    /// contiguous groups balanced by bytes (see [`Placement`]); one device
    /// is the usual whole model.
    pub fn load_on(
        ckpt: &Checkpoint,
        devices: &[Device],
        dtype: DType,
        precision: WeightPrecision,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Self> {
        let config = ckpt.config().clone();
        let family = Family::of(&config)?;
        let placement = if devices.len() == 1 {
            Placement::single(&devices[0], config.n_layers)
        } else {
            Placement::balanced(devices, config.n_layers, part_bytes(&config, dtype))?
        };
        // The device the tensors loaded next go to: the first, each layer's
        // own, then the last for the final norm and the head.
        let here = std::cell::Cell::new(0usize);
        let device = &|| &placement.devices()[here.get()];
        let layout = &config.attention;
        let total = ckpt.tensors().len();
        let mut done = 0usize;
        // Matrices as stored, when asked and stored as a float dtype the
        // compute dtype holds exactly (bf16/f16 in f32). Otherwise they are
        // converted once here, where `Checkpoint::tensor` refuses values
        // the conversion would overflow: an f32 checkpoint run in bf16, or a
        // bf16 one in f16, is never converted silently per product.
        let held = |name: &str| -> DType {
            match (precision, ckpt.stored_float_dtype(name)) {
                (WeightPrecision::Stored, Some(stored)) if widens_exactly(stored, dtype) => stored,
                _ => dtype,
            }
        };
        let mut get = |name: &str, as_dtype: Option<DType>| -> Result<Tensor> {
            // None: the caller took the tensor's blocks as they are; the
            // tensor is only counted here (the empty tensor is not used).
            let t = match as_dtype {
                Some(dtype) => ckpt.tensor(name, dtype, device())?,
                None => Tensor::zeros(0, DType::U8, &Device::Cpu)?,
            };
            done += 1;
            progress(done.min(total), total);
            Ok(t)
        };
        // Quantized GGUF matrices as their blocks, when asked and in a
        // format the products read (the rest are converted).
        let matrix = |get: &mut dyn FnMut(&str, Option<DType>) -> Result<Tensor>,
                      name: &str|
         -> Result<Matrix> {
            // Blocks dequantize to f32: kept only where the compute dtype
            // holds every f32 (a product in f16 could overflow per product;
            // converted here, an overflow is refused with one line).
            let kept = match ckpt.info(name).map(|i| &i.dtype) {
                Some(StoredDType::Ggml(format)) if precision == WeightPrecision::Stored => {
                    keeps_blocks(*format) && widens_exactly(DType::F32, dtype)
                }
                _ => false,
            };
            if kept {
                if let Some(q) = ckpt.quantized_rows(name)? {
                    let row_bytes = q.bytes.len() / q.rows.max(1);
                    let bytes = Tensor::from_vec(q.bytes, (q.rows, row_bytes), device())?;
                    get(name, None)?;
                    return Ok(Matrix::Blocks(Blocks {
                        bytes,
                        format: q.format,
                        cols: q.cols,
                    }));
                }
            }
            Ok(Matrix::Dense(get(name, Some(held(name)))?))
        };
        let linear = |get: &mut dyn FnMut(&str, Option<DType>) -> Result<Tensor>,
                      name: String,
                      id: Option<WeightId>|
         -> Result<Linear> {
            let weight = matrix(get, &name)?;
            let bias_name = format!("{}.bias", name.trim_end_matches(".weight"));
            let bias = match ckpt.info(&bias_name) {
                Some(_) => Some(ckpt.tensor(&bias_name, dtype, device())?),
                None => None,
            };
            Ok(Linear { id, weight, bias })
        };
        // Gemma multiplies by (1 + w): stored once as that sum.
        let offset = family.offset_norms;
        let norm = |get: &mut dyn FnMut(&str, Option<DType>) -> Result<Tensor>,
                    id: NormId|
         -> Result<Tensor> {
            let w = get(&id.hf_name(), Some(dtype))?;
            Ok(if offset { w.affine(1.0, 1.0)? } else { w })
        };
        let embed_name = WeightId::Embed.hf_name();
        let embed = matrix(&mut get, &embed_name)?;
        let (hd, nq, nk) = (config.head_dim, config.n_heads, config.n_kv_heads);
        // Phi-3 rotates the first dims of each head, the rest pass through:
        // its q/k rows are held in rotary order (see rope::RotaryOrder).
        let rotary = ((hd as f64 * layout.partial_rotary_factor) as usize) & !1;
        if rotary == 0 {
            return Err(ModelError::Unsupported(format!(
                "partial_rotary_factor {} leaves no dims to rotate",
                layout.partial_rotary_factor
            )));
        }
        let rotary_order = rope::RotaryOrder::new(hd, rotary);
        let reorder = |t: Tensor, index: Vec<u32>| -> Result<Tensor> {
            let n = index.len();
            Ok(t.index_select(&Tensor::from_vec(index, n, t.device())?, 0)?)
        };
        // Rows (and biases, and norm weights) of q or k into rotary order.
        let to_stored = |t: Tensor| -> Result<Tensor> {
            match &rotary_order {
                Some(o) => {
                    let rows = t.dim(0)?;
                    reorder(t, o.to_stored(rows))
                }
                None => Ok(t),
            }
        };
        let linear_to_stored = |l: Linear| -> Result<Linear> {
            let weight = match &rotary_order {
                Some(o) => {
                    let rows = l.weight.rows()?;
                    let index = Tensor::from_vec(o.to_stored(rows), rows, l.weight.device())?;
                    l.weight.select_rows(&index)?
                }
                None => l.weight,
            };
            Ok(Linear {
                id: l.id,
                weight,
                bias: l.bias.map(to_stored).transpose()?,
            })
        };
        let mut blocks = Vec::with_capacity(config.n_layers);
        for i in 0..config.n_layers {
            here.set(placement.layer_index(i));
            let mut slot = |kind: Option<NormKind>| -> Result<Option<Tensor>> {
                kind.map(|kind| norm(&mut get, NormId::Layer { layer: i, kind }))
                    .transpose()
            };
            let qk = family.qk_norm.is_some();
            let norms = Norms {
                attn_in: slot(family.attn_in)?,
                attn_out: slot(family.attn_out)?,
                mlp_in: slot(family.mlp_in)?,
                mlp_out: slot(family.mlp_out)?,
                q: slot(qk.then_some(NormKind::Q))?
                    .map(to_stored)
                    .transpose()?,
                k: slot(qk.then_some(NormKind::K))?
                    .map(to_stored)
                    .transpose()?,
            };
            let mut proj = |p: Proj| {
                let id = WeightId::layer(i, p);
                linear(&mut get, id.hf_name(), Some(id))
            };
            let block = if family.fused {
                let o = proj(Proj::O)?;
                let down = proj(Proj::Down)?;
                let qkv = linear(&mut get, Fused::Qkv.hf_name(i), None)?;
                let qkv = match &rotary_order {
                    // q and k rows into rotary order, v as it is.
                    Some(order) => {
                        let k_rows = order.to_stored(nk * hd);
                        let index: Vec<u32> = order
                            .to_stored(nq * hd)
                            .into_iter()
                            .chain(k_rows.iter().map(|&r| r + (nq * hd) as u32))
                            .chain(((nq + nk) * hd..(nq + 2 * nk) * hd).map(|r| r as u32))
                            .collect();
                        let rows = index.len();
                        let at = Tensor::from_vec(index.clone(), rows, qkv.weight.device())?;
                        Linear {
                            id: None,
                            weight: qkv.weight.select_rows(&at)?,
                            bias: qkv.bias.map(|b| reorder(b, index)).transpose()?,
                        }
                    }
                    None => qkv,
                };
                let gate_up = linear(&mut get, Fused::GateUp.hf_name(i), None)?;
                Block::from_fused(norms, i, qkv, [nq * hd, nk * hd, nk * hd], o, gate_up, down)?
            } else {
                let attn = [
                    linear_to_stored(proj(Proj::Q)?)?,
                    linear_to_stored(proj(Proj::K)?)?,
                    proj(Proj::V)?,
                    proj(Proj::O)?,
                ];
                let mlp = [proj(Proj::Gate)?, proj(Proj::Up)?, proj(Proj::Down)?];
                Block::new(norms, attn, mlp, dtype)?
            };
            blocks.push(block);
        }
        here.set(placement.devices().len() - 1);
        let final_norm = norm(&mut get, NormId::Final)?;
        let lm_head = if config.tied_embeddings && ckpt.info(&WeightId::Head.hf_name()).is_none() {
            Linear {
                id: Some(WeightId::Embed),
                // A copy where a split put the head on another device.
                weight: embed.to_device(placement.last())?,
                bias: None,
            }
        } else {
            linear(&mut get, WeightId::Head.hf_name(), Some(WeightId::Head))?
        };
        progress(total, total);
        let factors = match &config.rope_scaling {
            Some(RopeScaling::FrequencyFactors { tensor }) => Some(
                ckpt.tensor(tensor, DType::F32, &Device::Cpu)?
                    .flatten_all()?
                    .to_vec1::<f32>()?,
            ),
            _ => None,
        };
        let positions = config
            .max_position_embeddings
            .clamp(4096, ROPE_POSITIONS_MAX);
        // Queries carry attention's scale, and Gemma 2's 1 / softcap too, so
        // that capping the scores is tanh and one multiply.
        let query_scale = family.attn_scale / family.attn_softcap.unwrap_or(1.0);
        let make_rope = |theta: f64, scaling: Option<&RopeScaling>, device: &Device| {
            let inv = rope::inv_freq(rotary, theta, scaling, factors.as_deref());
            rope::Rope::new(&inv, hd, positions, query_scale, dtype, device)
        };
        // Every device of the model gets its own tables.
        let mut ropes = Vec::with_capacity(placement.devices().len());
        for device in placement.devices() {
            let global = make_rope(config.rope_theta, config.rope_scaling.as_ref(), device)?;
            let local = match layout.local_rope_theta {
                // Sliding layers are never scaled (transformers, llama.cpp).
                Some(t) if t != config.rope_theta || config.rope_scaling.is_some() => {
                    Some(make_rope(t, None, device)?)
                }
                _ => None,
            };
            ropes.push(super::DeviceRopes { global, local });
            // Compiled and loaded now, never first inside a CUDA graph's capture.
            super::fused::prepare(device)?;
        }
        // transformers rounds sqrt(d) to the weights' dtype before multiplying.
        let embed_scale = family.scale_embeddings.then(|| {
            let s = (config.d_model as f64).sqrt();
            match dtype {
                DType::BF16 => half::bf16::from_f64(s).to_f64(),
                DType::F16 => half::f16::from_f64(s).to_f64(),
                _ => s as f32 as f64,
            }
        });
        let attention_budget = super::attention_budget_for(placement.first());
        Ok(Self {
            config,
            placement,
            dtype,
            precision,
            embed,
            blocks,
            norm: final_norm,
            lm_head,
            family,
            embed_scale,
            ropes,
            rotary_order,
            weights_version: 0,
            decode_graphs: true,
            attention_budget,
        })
    }
}

/// Whether every value of `stored` is a value of `compute`.
fn widens_exactly(stored: DType, compute: DType) -> bool {
    stored == compute
        || matches!(
            (stored, compute),
            (DType::BF16 | DType::F16, DType::F32 | DType::F64) | (DType::F32, DType::F64)
        )
}

/// Bytes of the embedding, of one layer and of the head, from the config's
/// shapes in the compute dtype (a split balances these; a bf16 matrix held
/// as stored halves every part alike). A tied head counts too: a split
/// holds a copy of the embedding on the last device.
fn part_bytes(config: &crate::checkpoint::ModelConfig, dtype: DType) -> PartBytes {
    let (d, hd) = (config.d_model, config.head_dim);
    let attention = (2 * config.n_heads + 2 * config.n_kv_heads) * hd * d;
    let mlp = 3 * d * config.d_ff;
    let embed = config.vocab_size * d * dtype.size_in_bytes();
    PartBytes {
        embed,
        layer: (attention + mlp) * dtype.size_in_bytes(),
        head: embed,
    }
}
