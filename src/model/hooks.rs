//! Hook points (TransformerLens names) and what a run captures at them.
//!
//! A capture names a hook point and a reduction; the reduction runs where the
//! tensor lives (CPU or GPU), so only small results cross to the host. Nothing
//! is captured unless asked for.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Result, Tensor};
use serde::Serialize;

/// Where in a block a state is observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum HookPoint {
    /// The residual stream entering block i.
    ResidPre,
    /// After the attention residual add, before the MLP.
    ResidMid,
    /// The residual stream leaving block i.
    ResidPost,
    /// The d_ff intermediate state act(gate(x)) * up(x): the input of down_proj,
    /// after any d_ff mask.
    MlpPost,
}

impl HookPoint {
    pub const ALL: [HookPoint; 4] = [
        Self::ResidPre,
        Self::ResidMid,
        Self::ResidPost,
        Self::MlpPost,
    ];

    fn suffix(self) -> &'static str {
        match self {
            Self::ResidPre => "hook_resid_pre",
            Self::ResidMid => "hook_resid_mid",
            Self::ResidPost => "hook_resid_post",
            Self::MlpPost => "mlp.hook_post",
        }
    }
}

/// A hook point of one layer: `blocks.{layer}.hook_resid_post`, ...
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct HookName {
    pub layer: usize,
    pub point: HookPoint,
}

impl HookName {
    pub fn new(layer: usize, point: HookPoint) -> Self {
        Self { layer, point }
    }
}

impl fmt::Display for HookName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "blocks.{}.{}", self.layer, self.point.suffix())
    }
}

impl FromStr for HookName {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let rest = s
            .strip_prefix("blocks.")
            .ok_or_else(|| format!("hook name {s:?} must start with blocks."))?;
        let (layer, suffix) = rest
            .split_once('.')
            .ok_or_else(|| format!("hook name {s:?} has no hook after the layer"))?;
        let layer = layer
            .parse()
            .map_err(|_| format!("hook name {s:?}: {layer:?} is not a layer index"))?;
        let point = HookPoint::ALL
            .into_iter()
            .find(|p| p.suffix() == suffix)
            .ok_or_else(|| format!("hook name {s:?}: unknown hook {suffix:?}"))?;
        Ok(Self { layer, point })
    }
}

/// How a captured (batch, tokens, dims) state is reduced before leaving the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Reduction {
    /// max over tokens of |x|: (batch, dims).
    MaxAbsPerDim,
    /// median over dims of |x| for each token: (batch, tokens).
    MedianAbsPerToken,
    /// median of |x| over the whole (tokens, dims) state: (batch, 1).
    MedianAbs,
    /// the k largest |x| over tokens x dims: values (batch, k) and flat indices.
    TopK(usize),
    /// one token's whole vector: (batch, dims).
    Position(usize),
    /// everything: (batch, tokens, dims).
    Full,
}

/// What to capture: at these layers (None: every layer), this point, reduced so.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaptureRequest {
    pub layers: Option<Vec<usize>>,
    pub point: HookPoint,
    pub reduction: Reduction,
}

impl CaptureRequest {
    pub fn every_layer(point: HookPoint, reduction: Reduction) -> Self {
        Self {
            layers: None,
            point,
            reduction,
        }
    }

    pub fn at(layer: usize, point: HookPoint, reduction: Reduction) -> Self {
        Self {
            layers: Some(vec![layer]),
            point,
            reduction,
        }
    }

    pub(crate) fn wants(&self, layer: usize, point: HookPoint) -> bool {
        self.point == point && self.layers.as_ref().is_none_or(|l| l.contains(&layer))
    }
}

/// One reduced capture, on the host, as f32.
#[derive(Debug, Clone, Serialize)]
pub struct Captured {
    pub hook: HookName,
    pub reduction: Reduction,
    /// Row-major shape of `values`.
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
    /// For TopK: flat index (token * dims + dim) of each value.
    pub indices: Vec<u32>,
}

impl Captured {
    fn of(
        hook: HookName,
        reduction: Reduction,
        shape: Vec<usize>,
        values: Vec<f32>,
        indices: Vec<u32>,
    ) -> Self {
        Self {
            hook,
            reduction,
            shape,
            values,
            indices,
        }
    }

    /// Values of batch row `b`; None past the batch.
    pub fn row(&self, b: usize) -> Option<&[f32]> {
        let per: usize = self.shape.iter().skip(1).product();
        let start = b.checked_mul(per)?;
        self.values.get(start..start.checked_add(per)?)
    }
}

/// The lower middle of `v` (as `torch.median`, which the published
/// massive-activation code uses); reorders `v`. O(n), no full sort.
fn lower_median(v: &mut [f32]) -> f32 {
    if v.is_empty() {
        return 0.0;
    }
    let mid = (v.len() - 1) / 2;
    *v.select_nth_unstable_by(mid, f32::total_cmp).1
}

/// The CPU reductions, over the state's own memory (no copy): selection
/// instead of sorting, a bounded heap for top-k, tokens in parallel.
fn cpu_reduce(
    all: &[f32],
    (b, t, d): (usize, usize, usize),
    reduction: Reduction,
    captured: impl Fn(Vec<usize>, Vec<f32>, Vec<u32>) -> Captured,
) -> Captured {
    use rayon::prelude::*;
    let rows = all.chunks(t * d);
    match reduction {
        Reduction::MaxAbsPerDim => {
            let mut out = vec![0f32; b * d];
            for (r, row) in rows.enumerate() {
                let dst = &mut out[r * d..(r + 1) * d];
                for tok in row.chunks(d) {
                    for (m, v) in dst.iter_mut().zip(tok) {
                        *m = m.max(v.abs());
                    }
                }
            }
            captured(vec![b, d], out, Vec::new())
        }
        Reduction::MedianAbsPerToken => {
            let out = all
                .par_chunks(d)
                .map(|tok| {
                    let mut a: Vec<f32> = tok.iter().map(|v| v.abs()).collect();
                    lower_median(&mut a)
                })
                .collect();
            captured(vec![b, t], out, Vec::new())
        }
        Reduction::MedianAbs => {
            let out = rows
                .map(|row| {
                    let mut a: Vec<f32> = row.iter().map(|v| v.abs()).collect();
                    lower_median(&mut a)
                })
                .collect();
            captured(vec![b, 1], out, Vec::new())
        }
        Reduction::TopK(k) => {
            let k = k.min(t * d);
            let mut values = Vec::with_capacity(b * k);
            let mut indices = Vec::with_capacity(b * k);
            for row in rows {
                let top = top_k_by_abs(row, k);
                values.extend(top.iter().map(|&i| row[i as usize]));
                indices.extend(top);
            }
            captured(vec![b, k], values, indices)
        }
        Reduction::Position(_) | Reduction::Full => unreachable!("not reduced on the host"),
    }
}

/// Indices of the `k` largest |v|, largest first, in one pass with a small
/// sorted buffer (k is a handful; the state is hundreds of thousands).
fn top_k_by_abs(v: &[f32], k: usize) -> Vec<u32> {
    if k == 0 {
        return Vec::new();
    }
    // (|value|, index), sorted descending; the last entry is the threshold.
    let mut best: Vec<(f32, u32)> = Vec::with_capacity(k + 1);
    for (i, x) in v.iter().enumerate() {
        let a = x.abs();
        if best.len() == k && a <= best[k - 1].0 {
            continue;
        }
        let pos = best.partition_point(|&(b, _)| b >= a);
        best.insert(pos, (a, i as u32));
        best.truncate(k);
    }
    best.into_iter().map(|(_, i)| i).collect()
}

/// [`reduce`] of a state already in host memory: `all` is (batch, tokens,
/// dims) row-major. A replayed decode step reduces its captures of every
/// layer from one copy of each hook point this way, without a tensor per
/// layer.
pub(crate) fn reduce_host(
    hook: HookName,
    reduction: Reduction,
    all: &[f32],
    (b, t, d): (usize, usize, usize),
) -> Captured {
    let captured = |shape, values, indices| Captured::of(hook, reduction, shape, values, indices);
    match reduction {
        Reduction::Position(p) => {
            let tok = p.min(t.saturating_sub(1));
            let values = (0..b)
                .flat_map(|r| &all[(r * t + tok) * d..(r * t + tok + 1) * d])
                .copied()
                .collect();
            captured(vec![b, d], values, Vec::new())
        }
        Reduction::Full => captured(vec![b, t, d], all[..b * t * d].to_vec(), Vec::new()),
        _ => cpu_reduce(all, (b, t, d), reduction, captured),
    }
}

/// Reduces `x` (batch, tokens, dims) where it lives, then copies the (small)
/// result to the host. On the CPU the state already is host memory, so the
/// reductions run as selection algorithms over it (medians and top-k in
/// linear time instead of sorting).
pub(crate) fn reduce(hook: HookName, reduction: Reduction, x: &Tensor) -> Result<Captured> {
    let (b, t, d) = x.dims3()?;
    let x = x.to_dtype(DType::F32)?;
    let captured = |shape, values, indices| Captured::of(hook, reduction, shape, values, indices);
    if x.device().is_cpu() {
        let x = x.contiguous()?;
        let (storage, layout) = x.storage_and_layout();
        let candle_core::Storage::Cpu(candle_core::CpuStorage::F32(data)) = &*storage else {
            candle_core::bail!("reduce: expected f32 CPU storage");
        };
        let all = &data[layout.start_offset()..layout.start_offset() + b * t * d];
        return Ok(reduce_host(hook, reduction, all, (b, t, d)));
    }
    let (out, indices, shape): (Tensor, Option<Tensor>, Vec<usize>) = match reduction {
        Reduction::MaxAbsPerDim => (x.abs()?.max(1)?, None, vec![b, d]),
        Reduction::MedianAbsPerToken => {
            let a = x.abs()?.reshape((b * t, d))?.contiguous()?;
            (kth_smallest(&a, (d - 1) / 2)?, None, vec![b, t])
        }
        Reduction::MedianAbs => {
            let a = x.abs()?.reshape((b, t * d))?.contiguous()?;
            (kth_smallest(&a, (t * d - 1) / 2)?, None, vec![b, 1])
        }
        Reduction::TopK(k) if t * d <= SORTABLE => {
            // Short rows (one token): one sort kernel.
            let k = k.min(t * d);
            let flat = x.reshape((b, t * d))?;
            let idx = flat
                .abs()?
                .contiguous()?
                .arg_sort_last_dim(false)?
                .narrow(1, 0, k)?
                .contiguous()?;
            (flat.gather(&idx, 1)?, Some(idx), vec![b, k])
        }
        Reduction::TopK(k) => {
            let (values, indices) = device_top_k(&x, k)?;
            return Ok(captured(vec![b, k.min(t * d)], values, indices));
        }
        Reduction::Position(p) => (
            x.narrow(1, p.min(t.saturating_sub(1)), 1)?.squeeze(1)?,
            None,
            vec![b, d],
        ),
        Reduction::Full => (x.clone(), None, vec![b, t, d]),
    };
    Ok(captured(
        shape,
        out.flatten_all()?.to_vec1::<f32>()?,
        match indices {
            Some(i) => i.flatten_all()?.to_vec1::<u32>()?,
            None => Vec::new(),
        },
    ))
}

/// The longest row a GPU sort handles in one block (candle's bitonic sort).
const SORTABLE: usize = 1024;

/// The k-th smallest value (0-based) of each row: one sort kernel for short
/// rows, bisection for long ones.
fn kth_smallest(a: &Tensor, k: usize) -> Result<Tensor> {
    if a.dim(1)? <= SORTABLE {
        a.sort_last_dim(true)?.0.narrow(1, k, 1)?.squeeze(1)
    } else {
        kth_smallest_rows(a, k)
    }
}

/// The k-th smallest value (0-based) of each row of `a` (rows, n), found on
/// the device by bisection on the value: each step counts the entries at or
/// below the midpoint, with no sort (GPU sorts are limited to short rows) and
/// no copy to the host. It stops when the bracket is two adjacent floats, so
/// the result is exact.
pub fn kth_smallest_rows(a: &Tensor, k: usize) -> Result<Tensor> {
    let (rows, n) = a.dims2()?;
    if k >= n {
        candle_core::bail!("kth_smallest_rows: k = {k} but rows hold {n} values");
    }
    let target = (k + 1) as f64;
    let mut lo = Tensor::full(-1f32, rows, a.device())?;
    let mut hi = a.max(1)?;
    // 64 halvings take any f32 range down to adjacent floats.
    for _ in 0..64 {
        let mid = ((&lo + &hi)? * 0.5)?;
        let count = a
            .broadcast_le(&mid.unsqueeze(1)?)?
            .to_dtype(DType::F32)?
            .sum(1)?;
        let enough = count.ge(target)?;
        hi = enough.where_cond(&mid, &hi)?;
        lo = enough.where_cond(&lo, &mid)?;
    }
    Ok(hi)
}

/// Top-k by |x| over (tokens x dims) without sorting the whole state: the
/// k-th largest |x| is found on the device (bisection); only the tokens whose
/// largest |x| reaches it (at most k of them) cross to the host, where the
/// final k are picked. Returns values and flat indices per batch row.
fn device_top_k(x: &Tensor, k: usize) -> Result<(Vec<f32>, Vec<u32>)> {
    let (b, t, d) = x.dims3()?;
    let k = k.min(t * d);
    let abs = x.abs()?.contiguous()?;
    let mut values = Vec::with_capacity(b * k);
    let mut indices = Vec::with_capacity(b * k);
    if k == 0 {
        return Ok((values, indices));
    }
    let threshold = kth_smallest_rows(&abs.reshape((b, t * d))?, t * d - k)?.to_vec1::<f32>()?;
    let token_max = abs.max(2)?.to_vec2::<f32>()?;
    for r in 0..b {
        let tokens: Vec<u32> = (0..t as u32)
            .filter(|&p| token_max[r][p as usize] >= threshold[r])
            .collect();
        let ids = Tensor::new(tokens.as_slice(), x.device())?;
        let rows = x.get(r)?.index_select(&ids, 0)?.to_vec2::<f32>()?;
        let mut cand: Vec<(f32, u32)> = Vec::new();
        for (row, &p) in rows.iter().zip(&tokens) {
            for (j, v) in row.iter().enumerate() {
                cand.push((*v, p * d as u32 + j as u32));
            }
        }
        cand.sort_by(|a, b| b.0.abs().total_cmp(&a.0.abs()));
        cand.truncate(k);
        values.extend(cand.iter().map(|c| c.0));
        indices.extend(cand.iter().map(|c| c.1));
    }
    Ok((values, indices))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn the_device_reductions_equal_the_cpu_ones() {
        // The GPU path (bisection, candidate tokens) run on the CPU device.
        let mut v = Vec::new();
        let mut seed = 7u64;
        for _ in 0..(2 * 37 * 64) {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            v.push(((seed >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 4.0);
        }
        v[5 * 64 + 9] = -25000.0;
        v[64 * 37 + 3] = 777.0;
        let x = Tensor::from_vec(v.clone(), (2, 37, 64), &Device::Cpu).unwrap();
        let h = HookName::new(0, HookPoint::ResidPost);
        for r in [
            Reduction::MedianAbs,
            Reduction::MedianAbsPerToken,
            Reduction::TopK(5),
        ] {
            let cpu = reduce(h, r, &x).unwrap();
            let (values, indices) = match r {
                Reduction::TopK(k) => device_top_k(&x, k).unwrap(),
                Reduction::MedianAbs => {
                    let a = x.abs().unwrap().reshape((2, 37 * 64)).unwrap();
                    (
                        kth_smallest_rows(&a, (37 * 64 - 1) / 2)
                            .unwrap()
                            .to_vec1()
                            .unwrap(),
                        vec![],
                    )
                }
                _ => {
                    let a = x.abs().unwrap().reshape((2 * 37, 64)).unwrap();
                    (
                        kth_smallest_rows(&a, 31).unwrap().to_vec1().unwrap(),
                        vec![],
                    )
                }
            };
            assert_eq!(values, cpu.values, "{r:?}");
            assert_eq!(indices, cpu.indices, "{r:?}");
        }
        // Short rows take the sort path; it agrees with the bisection.
        let a = x.abs().unwrap().reshape((2 * 37, 64)).unwrap();
        let sorted: Vec<f32> = kth_smallest(&a, 31).unwrap().to_vec1().unwrap();
        let bisected: Vec<f32> = kth_smallest_rows(&a, 31).unwrap().to_vec1().unwrap();
        assert_eq!(sorted, bisected);
    }

    #[test]
    fn hook_names_round_trip() {
        for p in HookPoint::ALL {
            let h = HookName::new(17, p);
            assert_eq!(h.to_string().parse::<HookName>().unwrap(), h);
        }
        assert_eq!(
            HookName::new(3, HookPoint::MlpPost).to_string(),
            "blocks.3.mlp.hook_post"
        );
        assert!("blocks.x.hook_resid_pre".parse::<HookName>().is_err());
        assert!("blocks.1.hook_nothing".parse::<HookName>().is_err());
    }

    #[test]
    fn reductions_compute_what_they_say() {
        // batch 1, 2 tokens, 4 dims
        let x = Tensor::new(
            &[[[1f32, -8.0, 3.0, 0.5], [-2.0, 4.0, -0.25, 6.0]]],
            &Device::Cpu,
        )
        .unwrap();
        let h = HookName::new(0, HookPoint::ResidPost);
        assert_eq!(
            reduce(h, Reduction::MaxAbsPerDim, &x).unwrap().values,
            vec![2.0, 8.0, 3.0, 6.0]
        );
        // |.| sorted: [0.5,1,3,8] -> 1 ; [0.25,2,4,6] -> 2 (lower middle, as torch.median)
        assert_eq!(
            reduce(h, Reduction::MedianAbsPerToken, &x).unwrap().values,
            vec![1.0, 2.0]
        );
        // all |.|: [0.25,0.5,1,2,3,4,6,8] -> 2
        assert_eq!(
            reduce(h, Reduction::MedianAbs, &x).unwrap().values,
            vec![2.0]
        );
        let top = reduce(h, Reduction::TopK(2), &x).unwrap();
        assert_eq!(top.values, vec![-8.0, 6.0]);
        assert_eq!(top.indices, vec![1, 7]);
        assert_eq!(
            reduce(h, Reduction::Position(1), &x).unwrap().values,
            vec![-2.0, 4.0, -0.25, 6.0]
        );
    }
}
