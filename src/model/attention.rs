//! Self-attention with host-known positions: q/k/v projections, rotary
//! embedding, the key/value cache and grouped-query attention.

use candle_core::{DType, Device, Tensor};

use super::kv::LayerKv;
use super::plan::Plan;
use super::weights::{Block, Linear};
use super::{Model, Result};

impl Model {
    /// q, k, v of one block as (b, heads, t, head_dim), q rotated and scaled
    /// by `rotate_q`, k by `rotate_k`.
    pub(super) fn project_qkv(
        &self,
        block: &Block,
        h: &Tensor,
        plan: &Plan,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, t, _) = h.dims3()?;
        let c = &self.config;
        let (nq, nk) = (c.n_heads, c.n_kv_heads);
        // (b, t, heads, head_dim) per projection; a view of one matmul's
        // output unless a weight edit of q, k or v needs them apart.
        let (q, k, v) = if plan.edits_any(&[&block.q, &block.k, &block.v]) {
            let heads = |l: &Linear, n: usize| -> Result<Tensor> {
                Ok(plan.linear(l, h)?.reshape((b, t, n, c.head_dim))?)
            };
            (
                heads(&block.q, nq)?,
                heads(&block.k, nk)?,
                heads(&block.v, nk)?,
            )
        } else {
            let y = plan
                .linear(&block.qkv, h)?
                .reshape((b, t, nq + 2 * nk, c.head_dim))?;
            (
                y.narrow(2, 0, nq)?,
                y.narrow(2, nq, nk)?,
                y.narrow(2, nq + nk, nk)?,
            )
        };
        // (b, heads, t, head_dim); for one token of one row this is a view.
        let split = |y: Tensor| y.transpose(1, 2)?.contiguous();
        Ok((split(q)?, split(k)?, split(v)?))
    }

    /// softmax(q k^T + mask) v for grouped queries, back to (b, t, heads * head_dim).
    /// q is already scaled. Keys and values may be row ranges of a longer
    /// buffer: matmul takes their batch stride as it is, no copy.
    pub(super) fn attend_grouped(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, _, t, _) = q.dims4()?;
        let c = &self.config;
        // Grouped-query attention without copying keys and values per head: the
        // `rep` query heads that share a key/value head are stacked as rows of
        // one matrix, so each kv head is one batched matmul.
        let rep = c.n_heads / c.n_kv_heads;
        let total = k.dim(2)?;
        let q = q.reshape((b, c.n_kv_heads, rep * t, c.head_dim))?;
        let mut scores = q.matmul(&k.t()?)?;
        if let Some(m) = mask {
            scores = scores
                .reshape((b, c.n_kv_heads, rep, t, total))?
                .broadcast_add(m)?
                .reshape((b, c.n_kv_heads, rep * t, total))?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        Ok(probs
            .matmul(v)?
            .reshape((b, c.n_heads, t, c.head_dim))?
            .transpose(1, 2)?
            .reshape((b, t, c.n_heads * c.head_dim))?)
    }

    pub(super) fn attention(
        &self,
        block: &Block,
        h: &Tensor,
        start: usize,
        mask: Option<&Tensor>,
        cache: Option<&mut LayerKv>,
        plan: &Plan,
    ) -> Result<Tensor> {
        let (q, k, v) = self.project_qkv(block, h, plan)?;
        // The attention scale 1/sqrt(head_dim) is folded into q's rotation.
        let q = self.rope.apply_scaled(&q, start)?;
        let k = self.rope.apply(&k, start)?;
        let (k, v) = match cache {
            Some(cache) => cache.append(&k, &v, start)?,
            None => (k, v),
        };
        let y = self.attend_grouped(&q, &k, &v, mask)?;
        plan.linear(&block.o, &y)
    }
}

/// (t, start + t) additive mask: query i (absolute p = start + i) sees keys
/// j <= p, and with a sliding window w only those with p - w < j (w keys,
/// itself included, as transformers' sliding-window mask). None when every
/// key is visible (one query within the window).
pub(super) fn causal_mask(
    t: usize,
    start: usize,
    window: Option<usize>,
    dtype: DType,
    device: &Device,
) -> Result<Option<Tensor>> {
    let total = start + t;
    let w = window.unwrap_or(usize::MAX);
    if t == 1 && total <= w {
        return Ok(None);
    }
    let m: Vec<f32> = (0..t)
        .flat_map(|i| {
            let p = start + i;
            (0..total).map(move |j| {
                if j > p || p - j >= w {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Ok(Some(
        Tensor::from_vec(m, (t, total), device)?.to_dtype(dtype)?,
    ))
}
