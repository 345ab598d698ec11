//! Self-attention with host-known positions: q/k/v projections, rotary
//! embedding, the key/value cache and grouped-query attention.

use candle_core::{DType, Device, Tensor};

use super::block::NormedInput;
use super::branches::BranchTables;
use super::family::QkNorm;
use super::kv::LayerKv;
use super::plan::Plan;
use super::rope::Rope;
use super::weights::Block;
use super::{Model, Result};

impl Model {
    /// The rotary tables of layer `i` (sliding layers may have their own base).
    /// On its layer's device when the layers are split.
    pub(super) fn rope_for(&self, layer: usize) -> &Rope {
        let r = &self.ropes[self.placement.layer_index(layer)];
        match (&r.local, self.config.attention.window(layer)) {
            (Some(local), Some(_)) => local,
            _ => &r.global,
        }
    }

    /// q, k, v of one block as (b, heads, t, head_dim), queries and keys
    /// normalized where the family says (before RoPE).
    pub(super) fn project_qkv(
        &self,
        block: &Block,
        input: &NormedInput<'_>,
        plan: &Plan,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (q, k, v) = self.project_qkv_views(block, input, plan)?;
        Ok((q.contiguous()?, k.contiguous()?, v.contiguous()?))
    }

    /// [`Self::project_qkv`] as views (b, heads, t, head_dim) of the
    /// projections, not copied out: a decode step's kernels read a row's
    /// heads where the one qkv product left them.
    pub(super) fn project_qkv_views(
        &self,
        block: &Block,
        input: &NormedInput<'_>,
        plan: &Plan,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, t, _) = input.x.dims3()?;
        let c = &self.config;
        let (nq, nk, hd) = (c.n_heads, c.n_kv_heads, c.head_dim);
        let norms = &block.norms;
        let apart = plan.runs_apart(&[&block.q, &block.k, &block.v]);
        // (b, t, heads, head_dim) per projection; a view of one matmul's
        // output unless a weight edit of q, k or v needs them apart, or the
        // norm spans the whole projection (OLMo 2).
        let (q, k, v) = if apart || self.family.qk_norm == Some(QkNorm::Whole) {
            let (q, k, v) = if apart {
                let h = self.normed(input, plan)?;
                (
                    plan.linear(&block.q, &h)?,
                    plan.linear(&block.k, &h)?,
                    plan.linear(&block.v, &h)?,
                )
            } else {
                let y = self.linear_normed(&block.qkv, input, plan)?;
                (
                    y.narrow(2, 0, nq * hd)?,
                    y.narrow(2, nq * hd, nk * hd)?,
                    y.narrow(2, (nq + nk) * hd, nk * hd)?,
                )
            };
            let (q, k) = match self.family.qk_norm {
                Some(QkNorm::Whole) => (
                    self.norm_opt(q, norms.q.as_ref(), plan)?,
                    self.norm_opt(k, norms.k.as_ref(), plan)?,
                ),
                _ => (q, k),
            };
            (
                q.reshape((b, t, nq, hd))?,
                k.reshape((b, t, nk, hd))?,
                v.reshape((b, t, nk, hd))?,
            )
        } else {
            let y =
                self.linear_normed(&block.qkv, input, plan)?
                    .reshape((b, t, nq + 2 * nk, hd))?;
            (
                y.narrow(2, 0, nq)?,
                y.narrow(2, nq, nk)?,
                y.narrow(2, nq + nk, nk)?,
            )
        };
        let (q, k) = match self.family.qk_norm {
            Some(QkNorm::PerHead) => (
                self.norm_opt(q, norms.q.as_ref(), plan)?,
                self.norm_opt(k, norms.k.as_ref(), plan)?,
            ),
            _ => (q, k),
        };
        // (b, heads, t, head_dim), views.
        let split = |y: Tensor| y.transpose(1, 2);
        Ok((split(q)?, split(k)?, split(v)?))
    }

    /// softmax(q k^T + mask) v for grouped queries, back to (b, t, heads * head_dim).
    /// q is already scaled (and divided by a soft cap). Keys and values may be row ranges of a longer
    /// buffer: matmul takes their batch stride as it is, no copy.
    pub(super) fn attend_grouped(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        differentiable: bool,
    ) -> Result<Tensor> {
        let (b, _, t, _) = q.dims4()?;
        let c = &self.config;
        // Grouped-query attention without copying keys and values per head: the
        // `rep` query heads that share a key/value head are stacked as rows of
        // one matrix, so each kv head is one batched matmul.
        let rep = c.n_heads / c.n_kv_heads;
        let q = q.reshape((b, c.n_kv_heads, rep * t, c.head_dim))?;
        // On the CPU outside training, each product's rows split over the
        // pool at once (see `split_matmul`); elsewhere candle's matmul.
        let product = |a: &Tensor, b: &Tensor| -> Result<Tensor> {
            let split = if differentiable {
                None
            } else {
                super::split_matmul::batched(a, b)?
            };
            Ok(match split {
                Some(y) => y,
                None => a.matmul(b)?,
            })
        };
        let mut scores = product(&q, &k.t()?)?;
        // Gemma 2 caps the scaled scores before the mask: cap * tanh(s / cap),
        // the 1 / cap already in q's scale.
        if let Some(cap) = self.family.attn_softcap {
            scores = scores.tanh()?.affine(cap, 0.0)?;
        }
        let probs = match mask {
            _ if differentiable => super::fused::softmax_with_grad(&scores, mask, t)?,
            Some(m) => super::fused::masked_softmax(&scores, m, t)?,
            None => candle_nn::ops::softmax_last_dim(&scores)?,
        };
        Ok(product(&probs, v)?
            .reshape((b, c.n_heads, t, c.head_dim))?
            .transpose(1, 2)?
            .reshape((b, t, c.n_heads * c.head_dim))?)
    }

    /// Block `layer`'s attention over `h`: the heads concatenated, (b, t,
    /// heads * head_dim), before the o projection (the block applies it).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attention(
        &self,
        layer: usize,
        block: &Block,
        h: &NormedInput<'_>,
        at: Positions<'_>,
        masking: Masking<'_>,
        cache: Option<&mut LayerKv>,
        plan: &Plan,
    ) -> Result<Tensor> {
        let (q, k, v) = self.project_qkv(block, h, plan)?;
        // The attention scale is folded into q's rotation.
        let diff = plan.differentiable();
        let (q, k, start) = match at {
            Positions::From(start) => {
                let rope = self.rope_for(layer);
                (
                    rope.apply_scaled(&q, start, diff)?,
                    rope.apply(&k, start, diff)?,
                    start,
                )
            }
            Positions::Given(tables) => {
                let rows = match (&tables.local, self.config.attention.window(layer)) {
                    (Some(local), Some(_)) => local,
                    _ => &tables.global,
                };
                (
                    self.ropes[0].global.rotate_at(&q, rows, true)?,
                    self.ropes[0].global.rotate_at(&k, rows, false)?,
                    0,
                )
            }
        };
        let (k, v) = match cache {
            Some(cache) => cache.append(&k, &v, start)?,
            None => (k, v),
        };
        let y = match masking {
            Masking::Whole(mask) => self.attend_grouped(&q, &k, &v, mask, diff)?,
            Masking::Tiled { rows, pads } => {
                let window = self.config.attention.window(layer);
                let tile = TileMask::Built { window, pads };
                self.attend_tiled(&q, &k, &v, start, rows, tile, diff)?
            }
            Masking::TiledOf { rows, mask } => {
                self.attend_tiled(&q, &k, &v, start, rows, TileMask::Of(mask), diff)?
            }
        };
        Ok(y)
    }

    /// [`Self::attend_grouped`] over tiles of `rows` queries: each tile sees
    /// only the keys its causal (and sliding) window reaches, with a mask
    /// built for it alone, so memory grows with the window, not its square.
    /// Every query's softmax still spans all its keys at once: the result is
    /// the untiled one, not an online-softmax approximation.
    #[allow(clippy::too_many_arguments)]
    fn attend_tiled(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        start: usize,
        rows: usize,
        tile: TileMask<'_>,
        differentiable: bool,
    ) -> Result<Tensor> {
        let t = q.dim(2)?;
        let mut parts = Vec::with_capacity(t.div_ceil(rows));
        let mut a = 0;
        while a < t {
            let n = rows.min(t - a);
            let first = start + a;
            let k_end = first + n;
            let (k_start, mask) = match tile {
                TileMask::Built { window, pads } => {
                    let k_start = window.map_or(0, |w| (first + 1).saturating_sub(w));
                    let mask = tile_mask(
                        first,
                        n,
                        k_start..k_end,
                        window,
                        pads,
                        self.dtype,
                        q.device(),
                    )?;
                    (k_start, mask)
                }
                // A whole (rows, 1, 1, t, t) mask of a run without a cache:
                // this tile's queries over the keys before their end.
                TileMask::Of(whole) => {
                    let mask = whole.narrow(3, a, n)?.narrow(4, 0, k_end)?.contiguous()?;
                    (0, mask)
                }
            };
            let keys = k_end - k_start;
            parts.push(self.attend_grouped(
                &q.narrow(2, a, n)?.contiguous()?,
                &k.narrow(2, k_start, keys)?,
                &v.narrow(2, k_start, keys)?,
                Some(&mask),
                differentiable,
            )?);
            a += n;
        }
        Ok(Tensor::cat(&parts, 1)?)
    }
}

/// How the queries of one forward get their mask.
#[derive(Clone, Copy)]
pub(super) enum Masking<'a> {
    /// One mask for every query (None: all keys visible).
    Whole(Option<&'a Tensor>),
    /// Queries in tiles of `rows`, each tile's mask built on the device
    /// when it is needed (see [`tile_mask`]), with these left paddings.
    Tiled {
        rows: usize,
        pads: Option<&'a [usize]>,
    },
    /// Queries in tiles of `rows`, each tile's mask cut from this whole
    /// (rows, 1, 1, t, t) mask (a branched run: see [`super::branches`]).
    TiledOf { rows: usize, mask: &'a Tensor },
}

/// Where one tile's mask comes from.
#[derive(Clone, Copy)]
enum TileMask<'a> {
    Built {
        window: Option<usize>,
        pads: Option<&'a [usize]>,
    },
    Of(&'a Tensor),
}

/// Where a run's tokens sit: consecutive positions from a start (the
/// cache's length), or one position per token (a branched run).
#[derive(Clone, Copy)]
pub(super) enum Positions<'a> {
    From(usize),
    Given(&'a BranchTables),
}

/// How many queries one attention tile holds so its scores (and their
/// softmax) stay within `budget` bytes; None when all `t` fit at once.
pub(super) fn tile_rows(
    batch: usize,
    heads: usize,
    t: usize,
    keys: usize,
    dtype: DType,
    budget: usize,
) -> Option<usize> {
    // scores and probabilities both exist during the softmax.
    let per_query = 2 * batch * heads * keys * dtype.size_in_bytes();
    let rows = (budget / per_query.max(1)).max(1);
    (rows < t).then_some(rows)
}

/// The mask [`causal_mask`] gives queries at absolute positions
/// `first..first + n` over the keys `keys`, computed on the device from
/// position comparisons: the host-built mask of a long window would itself
/// take t² memory. (n, keys) without padding, (rows, 1, 1, n, keys) with.
pub(super) fn tile_mask(
    first: usize,
    n: usize,
    keys: std::ops::Range<usize>,
    window: Option<usize>,
    pads: Option<&[usize]>,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let pos = |from: i64, len: usize| Tensor::arange(from, from + len as i64, device);
    let q = pos(first as i64, n)?.reshape((n, 1))?;
    let k = pos(keys.start as i64, keys.len())?.reshape((1, keys.len()))?;
    // Keys after the query are hidden; with a window, so are keys w or more
    // positions back (j <= p - w).
    let mut hidden = k.broadcast_gt(&q)?;
    if let Some(w) = window {
        let reach = pos(first as i64 - w as i64, n)?.reshape((n, 1))?;
        hidden = hidden.maximum(&k.broadcast_le(&reach)?)?;
    }
    let pads = pads.filter(|p| p.iter().any(|&n| n > 0));
    if let Some(pads) = pads {
        // Row r also hides its padding keys j < pads[r], except from the
        // padding query itself.
        let rows = pads.len();
        let pad = Tensor::from_vec(
            pads.iter().map(|&p| p as i64).collect::<Vec<_>>(),
            (rows, 1, 1),
            device,
        )?;
        let padding = k.broadcast_lt(&pad)?; // (rows, 1, keys)
        let not_own = k.broadcast_ne(&q)?; // (n, keys)
        hidden = padding
            .broadcast_mul(&not_own)?
            .broadcast_maximum(&hidden)?
            .reshape((rows, 1, 1, n, keys.len()))?;
    }
    let shape = hidden.shape().clone();
    let blocked = Tensor::full(f32::NEG_INFINITY, &shape, device)?.to_dtype(dtype)?;
    let open = Tensor::zeros(&shape, dtype, device)?;
    Ok(hidden.where_cond(&blocked, &open)?)
}

/// (t, start + t) additive mask: query i (absolute p = start + i) sees keys
/// j <= p, and with a sliding window w only those with p - w < j (w keys,
/// itself included, as transformers' sliding-window mask). With `pads`
/// (one per row) the mask is (rows, 1, 1, t, start + t) and row r also
/// hides keys j < pads[r] (its left padding) from every query but their
/// own (so a padding query still has one key and stays finite). None when
/// every key is visible (one query within the window, no padding).
pub(super) fn causal_mask(
    t: usize,
    start: usize,
    window: Option<usize>,
    pads: Option<&[usize]>,
    dtype: DType,
    device: &Device,
) -> Result<Option<Tensor>> {
    let total = start + t;
    let w = window.unwrap_or(usize::MAX);
    let pads = pads.filter(|p| p.iter().any(|&n| n > 0));
    if t == 1 && total <= w && pads.is_none() {
        return Ok(None);
    }
    let row = |pad: usize| {
        (0..t).flat_map(move |i| {
            let p = start + i;
            (0..total).map(move |j| {
                if j > p || p - j >= w || (j < pad && j != p) {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
    };
    let mask = match pads {
        None => Tensor::from_vec(row(0).collect::<Vec<f32>>(), (t, total), device)?,
        Some(pads) => {
            let m: Vec<f32> = pads.iter().flat_map(|&pad| row(pad)).collect();
            Tensor::from_vec(m, (pads.len(), 1, 1, t, total), device)?
        }
    };
    Ok(Some(mask.to_dtype(dtype)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every tile's device-built mask is the matching block of the host-built
    /// whole mask, with and without a window and padding.
    #[test]
    fn tile_masks_are_blocks_of_the_whole_mask() {
        let dev = Device::Cpu;
        let (t, start) = (11, 3);
        for window in [None, Some(4), Some(1)] {
            for pads in [None, Some(vec![0, 5])] {
                let whole = causal_mask(t, start, window, pads.as_deref(), DType::F32, &dev)
                    .unwrap()
                    .unwrap();
                for rows in [1, 3, 11] {
                    let mut a = 0;
                    while a < t {
                        let n = rows.min(t - a);
                        let first = start + a;
                        let keys = window.map_or(0, |w| (first + 1).saturating_sub(w))..first + n;
                        let tile = tile_mask(
                            first,
                            n,
                            keys.clone(),
                            window,
                            pads.as_deref(),
                            DType::F32,
                            &dev,
                        )
                        .unwrap();
                        let (qd, kd) = (whole.rank() - 2, whole.rank() - 1);
                        let want = whole
                            .narrow(qd, a, n)
                            .unwrap()
                            .narrow(kd, keys.start, keys.len())
                            .unwrap();
                        let (w, g) = (
                            want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                            tile.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                        );
                        assert_eq!(w, g, "window {window:?} pads {pads:?} rows {rows} at {a}");
                        // The keys left out are hidden from every query of the tile.
                        if keys.start > 0 {
                            let before = whole
                                .narrow(qd, a, n)
                                .unwrap()
                                .narrow(kd, 0, keys.start)
                                .unwrap()
                                .flatten_all()
                                .unwrap()
                                .to_vec1::<f32>()
                                .unwrap();
                            assert!(before.iter().all(|v| *v == f32::NEG_INFINITY));
                        }
                        a += n;
                    }
                }
            }
        }
    }
}
