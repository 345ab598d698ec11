//! The decoder block, the embedding and the output head, as the family
//! describes them. The eager forward and the recorded decode step both run
//! through these.

use std::cell::OnceCell;

use candle_core::{DType, Tensor};

use super::family::Activation;
use super::fused::{GemvInput, Tees};
use super::hooks::HookPoint;
use super::matrix::Matrix;
use super::plan::Plan;
use super::weights::Linear;
use super::{Model, Result};

/// A projection's input before its RMSNorm: the normed rows are made only
/// when a projection cannot norm them as it multiplies (the GPU's GEMV
/// for a few rows does), and then once.
pub(super) struct NormedInput<'a> {
    pub x: &'a Tensor,
    /// The norm's weight; None where the family has no norm in this slot.
    weight: Option<&'a Tensor>,
    normed: OnceCell<Tensor>,
}

impl<'a> NormedInput<'a> {
    pub(super) fn new(x: &'a Tensor, weight: Option<&'a Tensor>) -> Self {
        Self {
            x,
            weight,
            normed: OnceCell::new(),
        }
    }
}

impl Model {
    /// The normed rows of `input` (made on first use).
    pub(super) fn normed(&self, input: &NormedInput<'_>, plan: &Plan) -> Result<Tensor> {
        if let Some(h) = input.normed.get() {
            return Ok(h.clone());
        }
        let h = self.norm_opt(input.x.clone(), input.weight, plan)?;
        Ok(input.normed.get_or_init(|| h).clone())
    }

    /// `l` applied to the normed `input`: one GEMV kernel that norms as it
    /// multiplies where it can, else the norm and [`Plan::linear`].
    pub(super) fn linear_normed(
        &self,
        l: &Linear,
        input: &NormedInput<'_>,
        plan: &Plan,
    ) -> Result<Tensor> {
        Ok(self.linear_normed_into(l, input, plan, None)?.0)
    }

    /// [`Self::linear_normed`], the GEMV also writing its product into
    /// `dest` where it can: the product, and whether `dest` holds it.
    fn linear_normed_into(
        &self,
        l: &Linear,
        input: &NormedInput<'_>,
        plan: &Plan,
        dest: Option<&Tensor>,
    ) -> Result<(Tensor, bool)> {
        let tees = Tees {
            out: dest,
            input: None,
        };
        let fused = match input.weight {
            Some(weight) => {
                let eps = self.config.norm_eps as f32;
                let normed = GemvInput::Normed {
                    x: input.x,
                    weight,
                    eps,
                };
                plan.linear_fused(l, normed, None, tees)?
            }
            None => None,
        };
        match fused {
            Some(y) => Ok((y, dest.is_some())),
            None => Ok((plan.linear(l, &self.normed(input, plan)?)?, false)),
        }
    }

    /// RMSNorm with a stored weight, or the input itself when the family
    /// has no norm in that slot.
    /// A differentiable plan takes [`super::fused::rms_norm_with_grad`]
    /// (candle's fused kernel has no backward); on a GPU, f32 takes
    /// [`super::fused::rms_norm`] (a block per row, not a warp).
    pub(super) fn norm_opt(&self, x: Tensor, w: Option<&Tensor>, plan: &Plan) -> Result<Tensor> {
        let eps = self.config.norm_eps as f32;
        match w {
            Some(w) if plan.differentiable() => super::fused::rms_norm_with_grad(&x, w, eps),
            Some(w) => match super::fused::rms_norm(&x, w, eps)? {
                Some(y) => Ok(y),
                None => Ok(candle_nn::ops::rms_norm(&x.contiguous()?, w, eps)?),
            },
            None => Ok(x),
        }
    }

    fn activate(&self, gate: &Tensor, plan: &Plan) -> Result<Tensor> {
        Ok(match self.family.activation {
            Activation::Silu => candle_nn::ops::silu(gate)?,
            // candle's GELU backward rounds its constants (to ~1e-6);
            // composed from tanh, the gradient is exact.
            Activation::GeluTanh if plan.differentiable() => {
                let c = (2.0 / std::f64::consts::PI).sqrt();
                let inner = (gate + gate.powf(3.0)?.affine(0.044715, 0.0)?)?.affine(c, 0.0)?;
                (gate * (inner.tanh()? + 1.0)?)?.affine(0.5, 0.0)?
            }
            Activation::GeluTanh => gate.gelu()?,
        })
    }

    /// Token embeddings (ids flat), scaled where the family scales them.
    pub(super) fn embed_ids(&self, ids: &Tensor) -> Result<Tensor> {
        // A stored-precision embedding converts the looked-up rows only.
        let x = match &self.embed {
            Matrix::Dense(t) => t.embedding(ids)?.to_dtype(self.dtype)?,
            blocks => blocks.select_rows(ids)?.dense(self.dtype)?,
        };
        Ok(match self.embed_scale {
            Some(s) => x.affine(s, 0.0)?,
            None => x,
        })
    }

    /// Final norm, output head (f32) and the family's soft cap.
    pub(super) fn head(&self, x: &Tensor, plan: &Plan) -> Result<Tensor> {
        // f32 logits (f64 on an f64 model, for gradient checks).
        let out = if self.dtype == DType::F64 {
            DType::F64
        } else {
            DType::F32
        };
        let input = NormedInput::new(x, Some(&self.norm));
        let logits = self
            .linear_normed(&self.lm_head, &input, plan)?
            .to_dtype(out)?;
        Ok(match self.family.final_softcap {
            Some(cap) => ((logits / cap)?.tanh()? * cap)?,
            None => logits,
        })
    }

    /// [`Self::head`] written into `dest` (f32, shaped like the logits):
    /// by the head's GEMV itself where it can (no soft cap, f32).
    pub(super) fn head_into(&self, x: &Tensor, plan: &Plan, dest: &Tensor) -> Result<()> {
        if self.family.final_softcap.is_none() && self.dtype == DType::F32 {
            let input = NormedInput::new(x, Some(&self.norm));
            let (logits, written) =
                self.linear_normed_into(&self.lm_head, &input, plan, Some(dest))?;
            if !written {
                dest.slice_set(&logits, 0, 0)?;
            }
            return Ok(());
        }
        Ok(dest.slice_set(&self.head(x, plan)?, 0, 0)?)
    }

    /// Block `i`: x + attn_out(o(attention(attn_in(x)))), then x plus
    /// mlp_out(down(mlp(mlp_in(x)))), each norm present as the family says.
    /// `attend` is the attention of this run's kind (host-known positions,
    /// or the device-side position of a replayed decode step), its heads
    /// concatenated before the o projection; `hook` sees the residual
    /// stream and the MLP state at each hook point, except where `sink`
    /// gives a device buffer for a point and the kernel that forms the
    /// state writes it there itself. Without an output norm, a projection
    /// and the residual add run as one kernel where they can, and the down
    /// projection forms the gated product as it reads it.
    pub(super) fn block(
        &self,
        i: usize,
        x: Tensor,
        plan: &Plan,
        attend: impl FnOnce(&NormedInput<'_>) -> Result<Tensor>,
        hook: &mut dyn FnMut(usize, HookPoint, &Tensor) -> Result<()>,
        sink: &dyn Fn(usize, HookPoint) -> Option<Tensor>,
    ) -> Result<Tensor> {
        let block = &self.blocks[i];
        let norms = &block.norms;
        hook(i, HookPoint::ResidPre, &x)?;
        let heads = attend(&NormedInput::new(&x, norms.attn_in.as_ref()))?;
        let x = match &norms.attn_out {
            None => {
                let dest = sink(i, HookPoint::ResidMid);
                let (y, written) = plan.linear_plus_into(&block.o, &heads, &x, dest.as_ref())?;
                if !written {
                    hook(i, HookPoint::ResidMid, &y)?;
                }
                y
            }
            Some(w) => {
                let y = (x + self.norm_opt(plan.linear(&block.o, &heads)?, Some(w), plan)?)?;
                hook(i, HookPoint::ResidMid, &y)?;
                y
            }
        };
        let input = NormedInput::new(&x, norms.mlp_in.as_ref());
        let mut inter = if plan.runs_apart(&[&block.gate, &block.up]) {
            let h = self.normed(&input, plan)?;
            let gate = plan.linear(&block.gate, &h)?;
            (self.activate(&gate, plan)? * plan.linear(&block.up, &h)?)?
        } else {
            let gate_up = self.linear_normed(&block.gate_up, &input, plan)?;
            if let Some(y) = self.gated_down(i, &gate_up, &x, plan, hook, sink)? {
                return Ok(y);
            }
            let d_ff = self.config.d_ff;
            let fused = match plan.differentiable() {
                false => super::fused::gated(&gate_up, d_ff, self.family.activation)?,
                true => None,
            };
            match fused {
                Some(inter) => inter,
                None => {
                    let gate = gate_up.narrow(2, 0, d_ff)?;
                    (self.activate(&gate, plan)? * gate_up.narrow(2, d_ff, d_ff)?)?
                }
            }
        };
        if let Some(m) = plan.ffn_mask(i) {
            inter = inter.broadcast_mul(m)?;
        }
        hook(i, HookPoint::MlpPost, &inter)?;
        let x = match &norms.mlp_out {
            None => plan.linear_plus(&block.down, &inter, &x)?,
            Some(w) => (x + self.norm_opt(plan.linear(&block.down, &inter)?, Some(w), plan)?)?,
        };
        hook(i, HookPoint::ResidPost, &x)?;
        Ok(x)
    }

    /// x + down(act(gate) * up * mask) as one GEMV that forms the gated
    /// product as it reads it (the family has no norm after the MLP), the
    /// MLP state written to its sink by the same kernel, or not formed at
    /// all where nothing wants it. None where that kernel cannot run.
    fn gated_down(
        &self,
        i: usize,
        gate_up: &Tensor,
        x: &Tensor,
        plan: &Plan,
        hook: &mut dyn FnMut(usize, HookPoint, &Tensor) -> Result<()>,
        sink: &dyn Fn(usize, HookPoint) -> Option<Tensor>,
    ) -> Result<Option<Tensor>> {
        let block = &self.blocks[i];
        let mlp_dest = sink(i, HookPoint::MlpPost);
        let mlp_lost = plan.wants(i, HookPoint::MlpPost) && mlp_dest.is_none();
        if block.norms.mlp_out.is_some() || mlp_lost {
            return Ok(None);
        }
        let dest = sink(i, HookPoint::ResidPost);
        let input = GemvInput::Gated {
            gate_up,
            act: self.family.activation,
            mask: plan.ffn_mask(i),
        };
        let tees = Tees {
            out: dest.as_ref(),
            input: mlp_dest.as_ref(),
        };
        let Some(y) = plan.linear_fused(&block.down, input, Some(x), tees)? else {
            return Ok(None);
        };
        if dest.is_none() {
            hook(i, HookPoint::ResidPost, &y)?;
        }
        Ok(Some(y))
    }
}
