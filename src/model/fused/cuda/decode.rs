//! A replayed decode step's attention (see `mwtop_decode_attention` in
//! kernels.cu): RoPE of the token's q and k, its k and v stored into the
//! cache, and attention over the cache's open keys, in one kernel.

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{CudaView, LaunchConfig};
use candle_core::cuda::CudaStorage;
use candle_core::{CustomOp1, DType, Layout, Shape, Tensor};

use super::super::super::Result;
use super::super::{eligible, StepRope};
use super::launch::{function, Args};
use super::{ptx, Held};

/// Everything the kernel reads and writes beside the position (the op's
/// input).
struct DecodeAttention {
    /// (rows, heads, 1, head_dim), each row's heads together.
    q: Tensor,
    /// The token's k and v like q, and the tables (scaled cos and sin for
    /// q, cos and sin for k), when the kernel rotates and stores them.
    fresh: Option<(Tensor, Tensor, [Tensor; 4])>,
    k_cache: Tensor,
    v_cache: Tensor,
    /// The sliding window (0: none).
    window: i32,
    heads: usize,
    kv_heads: usize,
    softcap: f32,
}

/// Threads per block of the decode-attention kernel.
const ATTENTION_THREADS: usize = 256;
/// Dynamic shared memory the decode-attention kernel may take without
/// opting in to more (48 KiB, less its static reduction buffer).
const ATTENTION_SHARED_BYTES: usize = 48 * 1024 - 256;

impl CustomOp1 for DecodeAttention {
    fn name(&self) -> &'static str {
        "mwtop-decode-attention"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("mwtop-decode-attention runs on CUDA only")
    }

    fn cuda_fwd(&self, ps: &CudaStorage, pl: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let dev = ps.device();
        let Some((p0, p1)) = pl.contiguous_offsets() else {
            candle_core::bail!("decode attention: the position is not contiguous")
        };
        let pos = ps.as_cuda_slice::<u32>()?.slice(p0..p1);
        let (b, _, cap, hd) = self.k_cache.dims4()?;
        let (k, v) = (Held::new(&self.k_cache)?, Held::new(&self.v_cache)?);
        let (kv, vv) = (k.view()?, v.view()?);
        let q = Held::new(&self.q)?;
        let (qv, q_stride) = rows_of(&q)?;
        let fresh = match &self.fresh {
            Some((k_new, v_new, tables)) => {
                let held = [k_new, v_new]
                    .into_iter()
                    .chain(tables)
                    .map(Held::new)
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Some(held)
            }
            None => None,
        };
        let rows = b * self.heads;
        // SAFETY: the kernel writes every element of out.
        let out = unsafe { dev.alloc::<f32>(rows * hd)? };
        let (func, overlapped) = function(dev, "mwtop_decode_attention")?;
        // float4 loads of keys and values: every row of the caches 16-byte
        // aligned, and a float4 of dims per thread of one part.
        let aligned = [k.layout, v.layout]
            .iter()
            .all(|l| l.start_offset().is_multiple_of(4));
        let vec = aligned && hd.is_multiple_of(32) && hd / 4 <= ATTENTION_THREADS;
        let per_thread = if vec { 4 } else { 1 };
        let parts = (ATTENTION_THREADS / (hd / per_thread)).max(1);
        // q, the token's k and v, and the parts' sums in shared memory, the
        // scores too where they fit.
        let fixed = (3 + parts) * hd * 4;
        let scores_shared = fixed + cap * 4 <= ATTENTION_SHARED_BYTES;
        let scratch = match scores_shared {
            true => None,
            // SAFETY: the kernel writes every score it reads (up to the
            // last open key) before reading it.
            false => Some(unsafe { dev.alloc::<f32>(rows * cap)? }),
        };
        let mut args = Args::new(dev);
        args.view(&qv).i64(q_stride);
        match &fresh {
            Some(held) => {
                let (kn, k_stride) = rows_of(&held[0])?;
                let (vn, v_stride) = rows_of(&held[1])?;
                args.view(&kn).view(&vn).i64(k_stride).i64(v_stride);
                for t in &held[2..6] {
                    args.view(&t.view()?);
                }
            }
            // Null tables: q comes rotated, the cache holds the token.
            None => {
                args.maybe::<f32>(None).maybe::<f32>(None).i64(0).i64(0);
                for _ in 0..4 {
                    args.maybe::<f32>(None);
                }
            }
        }
        args.view(&kv).view(&vv);
        // Without scratch (null), the scores stay in shared memory.
        match &scratch {
            Some(s) => args.slice(s),
            None => args.maybe::<f32>(None),
        };
        args.slice(&out);
        for i in [self.heads, self.kv_heads, cap, hd] {
            args.i32(i as i32);
        }
        args.f32(self.softcap)
            .i32(vec as i32)
            .i32(scores_shared as i32)
            .view(&pos)
            .i32(self.window);
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (ATTENTION_THREADS as u32, 1, 1),
            shared_mem_bytes: (fixed + if scores_shared { cap * 4 } else { 0 }) as u32,
        };
        // SAFETY: the arguments match the kernel's signature and sizes. The
        // kernel writes the caches in place at the position: they are device
        // buffers of this step, written only by kernels on this stream,
        // never viewed from the host while it runs (the same contract as
        // candle's scatter_set).
        unsafe { args.launch(&func, overlapped, cfg) }?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev.clone()),
            Shape::from((b, 1, self.heads * hd)),
        ))
    }
}

/// Whether a (rows, heads, 1, head_dim) tensor keeps each row's heads
/// together, as a view of the step's one qkv product does.
fn heads_together(t: &Tensor) -> bool {
    let l = t.layout();
    let (dims, st) = (l.dims(), l.stride());
    dims.len() == 4 && st[3] == 1 && (dims[1] == 1 || st[1] == dims[3])
}

/// A [`heads_together`] tensor's elements from its first, and the
/// distance between its rows.
fn rows_of<'a>(h: &'a Held<'a>) -> candle_core::Result<(CudaView<'a, f32>, i64)> {
    let (dims, st) = (h.layout.dims(), h.layout.stride());
    let row = dims[1] * dims[3];
    let stride = if dims[0] == 1 { row } else { st[0] };
    let start = h.layout.start_offset();
    let end = start + (dims[0] - 1) * stride + row;
    let candle_core::Storage::Cuda(c) = &*h.guard else {
        candle_core::bail!("fused kernel: a tensor is on another device")
    };
    Ok((c.as_cuda_slice::<f32>()?.slice(start..end), stride as i64))
}

/// `t` itself where its heads lie together, else a copy.
fn together(t: &Tensor) -> Result<Tensor> {
    Ok(if heads_together(t) {
        t.clone()
    } else {
        t.contiguous()?
    })
}

pub(in super::super) fn decode_attention(
    q: &Tensor,
    fresh: Option<StepRope<'_>>,
    k_cache: &Tensor,
    v_cache: &Tensor,
    pos: &Tensor,
    window: Option<usize>,
    softcap: Option<f64>,
) -> Result<Option<Tensor>> {
    let window = window.map_or(0, |w| i32::try_from(w).unwrap_or(i32::MAX));
    let pos_ok =
        pos.dtype() == DType::U32 && pos.elem_count() == 1 && pos.device().same_device(q.device());
    let (Ok((b, heads, t, hd)), Ok((kb, kv_heads, _, khd))) = (q.dims4(), k_cache.dims4()) else {
        return Ok(None);
    };
    let fits = t == 1
        && kb == b
        && khd == hd
        && v_cache.dims() == k_cache.dims()
        && kv_heads > 0
        && heads.is_multiple_of(kv_heads)
        && (1..=4096).contains(&hd);
    let on = |x: &Tensor| eligible(x) && x.device().same_device(q.device());
    let caches = on(k_cache) && on(v_cache) && k_cache.is_contiguous() && v_cache.is_contiguous();
    if !pos_ok || !fits || !on(q) || !caches || ptx().is_none() {
        return Ok(None);
    }
    let fresh = match fresh {
        Some(r) => {
            let half = hd / 2;
            let token = |x: &Tensor| x.dims() == [b, kv_heads, 1, hd] && on(x);
            let tables = r
                .tables
                .iter()
                .all(|t| t.dim(1).ok() == Some(half) && on(t));
            if !hd.is_multiple_of(2) || !token(r.k) || !token(r.v) || !tables {
                return Ok(None);
            }
            let [c0, s0, c1, s1] = r.tables.map(Tensor::contiguous);
            Some((together(r.k)?, together(r.v)?, [c0?, s0?, c1?, s1?]))
        }
        None => None,
    };
    let op = DecodeAttention {
        q: together(q)?,
        fresh,
        k_cache: k_cache.clone(),
        v_cache: v_cache.clone(),
        window,
        heads,
        kv_heads,
        softcap: softcap.unwrap_or(0.0) as f32,
    };
    Ok(Some(pos.contiguous()?.apply_op1_no_bwd(&op)?))
}
