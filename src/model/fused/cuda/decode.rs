//! A replayed decode step's own kernels: RoPE with the cache store, and
//! attention over the filled cache (see kernels.cu).

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{CudaView, LaunchConfig};
use candle_core::cuda::CudaStorage;
use candle_core::{CustomOp1, DType, Layout, Shape, Tensor};

use super::super::super::Result;
use super::super::eligible;
use super::launch::{function, Args};
use super::{contiguous_slice, ptx, Held};

/// The inputs of [`rope_store`] beside q (see the kernel).
struct RopeStore {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    /// Scaled cos, scaled sin (for q), cos, sin (for k).
    tables: [Tensor; 4],
    k_cache: Tensor,
    v_cache: Tensor,
}

impl CustomOp1 for RopeStore {
    fn name(&self) -> &'static str {
        "mwtop-rope-store"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("mwtop-rope-store runs on CUDA only")
    }

    fn cuda_fwd(&self, ps: &CudaStorage, pl: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let dev = ps.device();
        let pos = contiguous_slice_u32(ps, pl)?;
        let (b, nq, _, hd) = self.q.dims4()?;
        let (_, nk, cap, _) = self.k_cache.dims4()?;
        let (q, k, v) = (
            Held::new(&self.q)?,
            Held::new(&self.k)?,
            Held::new(&self.v)?,
        );
        let ((qv, sq), (kv, sk), (vv, sv)) = (rows_of(&q)?, rows_of(&k)?, rows_of(&v)?);
        let held = [&self.k_cache, &self.v_cache]
            .into_iter()
            .chain(&self.tables)
            .map(Held::new)
            .collect::<candle_core::Result<Vec<_>>>()?;
        let views = held
            .iter()
            .map(Held::view)
            .collect::<candle_core::Result<Vec<_>>>()?;
        // SAFETY: the kernel writes every element of q_out.
        let out = unsafe { dev.alloc::<f32>(b * nq * hd)? };
        let (func, overlapped) = function(dev, "mwtop_rope_store")?;
        let threads = b * (nq + 2 * nk) * (hd / 2);
        let mut args = Args::new(dev);
        args.view(&qv).view(&kv).view(&vv);
        for t in &views[2..6] {
            args.view(t);
        }
        args.view(&pos).slice(&out).view(&views[0]).view(&views[1]);
        for i in [b, nq, nk, hd, cap] {
            args.i32(i as i32);
        }
        args.i64(sq).i64(sk).i64(sv);
        let cfg = LaunchConfig {
            grid_dim: (threads.div_ceil(128) as u32, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments match the kernel's signature and sizes. The
        // kernel writes the caches in place: they are device buffers of this
        // step, written only by kernels on this stream, never viewed from the
        // host while it runs (the same contract as candle's scatter_set).
        unsafe { args.launch(&func, overlapped, cfg) }?;
        Ok((
            candle_core::cuda::CudaStorage::wrap_cuda_slice(out, dev.clone()),
            Shape::from((b, nq, 1, hd)),
        ))
    }
}

/// The u32 elements of a contiguous storage.
fn contiguous_slice_u32<'a>(
    s: &'a CudaStorage,
    l: &Layout,
) -> candle_core::Result<CudaView<'a, u32>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(s.as_cuda_slice::<u32>()?.slice(a..b)),
        None => candle_core::bail!("fused kernel: input not contiguous"),
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

pub(in super::super) fn rope_store(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    tables: [&Tensor; 4],
    pos: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
) -> Result<Option<Tensor>> {
    let (Ok((b, _, t, hd)), Ok((kb, nk, kt, khd))) = (q.dims4(), k.dims4()) else {
        return Ok(None);
    };
    let Ok((cb, cnk, _, chd)) = k_cache.dims4() else {
        return Ok(None);
    };
    let half = hd / 2;
    let shapes = t == 1
        && kt == 1
        && hd.is_multiple_of(2)
        && (kb, khd) == (b, hd)
        && v.dims() == k.dims()
        && (cb, cnk, chd) == (b, nk, hd)
        && v_cache.dims() == k_cache.dims()
        && tables.iter().all(|t| t.dim(1).ok() == Some(half))
        && pos.dtype() == DType::U32
        && pos.elem_count() == 1;
    let f32s = [q, k, v, k_cache, v_cache]
        .into_iter()
        .chain(tables)
        .all(|x| eligible(x) && x.device().same_device(q.device()));
    let in_place = k_cache.is_contiguous() && v_cache.is_contiguous();
    if !shapes || !f32s || !in_place || !pos.device().same_device(q.device()) || ptx().is_none() {
        return Ok(None);
    }
    let together = |t: &Tensor| -> Result<Tensor> {
        Ok(if heads_together(t) {
            t.clone()
        } else {
            t.contiguous()?
        })
    };
    let op = RopeStore {
        q: together(q)?,
        k: together(k)?,
        v: together(v)?,
        tables: [
            tables[0].contiguous()?,
            tables[1].contiguous()?,
            tables[2].contiguous()?,
            tables[3].contiguous()?,
        ],
        k_cache: k_cache.clone(),
        v_cache: v_cache.clone(),
    };
    Ok(Some(pos.contiguous()?.apply_op1_no_bwd(&op)?))
}

/// One decode step's attention (see the kernel): k and v are the cache
/// buffers, the op's inputs q and the step's additive mask.
struct DecodeAttention {
    k: Tensor,
    v: Tensor,
    /// The sliding window (0: none).
    window: i32,
    /// The step's position (one u32): keys after it are not even scored.
    pos: Tensor,
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

    fn cuda_fwd(&self, qs: &CudaStorage, ql: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let dev = qs.device();
        let q = contiguous_slice(qs, ql)?;
        let (b, _, cap, hd) = self.k.dims4()?;
        let (k, v) = (Held::new(&self.k)?, Held::new(&self.v)?);
        let (kv, vv) = (k.view()?, v.view()?);
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
        // q and the parts' sums in shared memory, the scores too where they fit.
        let fixed = (1 + parts) * hd * 4;
        let scores_shared = fixed + cap * 4 <= ATTENTION_SHARED_BYTES;
        let scratch = match scores_shared {
            true => None,
            // SAFETY: the kernel writes every score it reads (up to the
            // last open key) before reading it.
            false => Some(unsafe { dev.alloc::<f32>(rows * cap)? }),
        };
        let pos = Held::new(&self.pos)?;
        let pos = pos.view_of::<u32>()?;
        let mut args = Args::new(dev);
        args.view(&q).view(&kv).view(&vv);
        // Without scratch (null), the scores stay in shared memory.
        match &scratch {
            Some(s) => args.slice(s),
            None => args.maybe::<f32>(None),
        };
        args.slice(&out);
        for i in [self.heads, self.kv_heads, cap, hd] {
            args.i32(i as i32);
        }
        // Without a position (null), every key of the buffer is scored.
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
        // SAFETY: the arguments match the kernel's signature and sizes.
        unsafe { args.launch(&func, overlapped, cfg) }?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev.clone()),
            Shape::from((b, 1, self.heads * hd)),
        ))
    }
}

pub(in super::super) fn decode_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    pos: &Tensor,
    window: Option<usize>,
    softcap: Option<f64>,
) -> Result<Option<Tensor>> {
    let window = window.map_or(0, |w| i32::try_from(w).unwrap_or(i32::MAX));
    let pos_ok =
        pos.dtype() == DType::U32 && pos.elem_count() == 1 && pos.device().same_device(q.device());
    if !pos_ok {
        return Ok(None);
    }
    let (b, heads, t, hd) = q.dims4()?;
    let (kb, kv_heads, _, khd) = k.dims4()?;
    let fits = t == 1
        && kb == b
        && khd == hd
        && v.dims() == k.dims()
        && kv_heads > 0
        && heads.is_multiple_of(kv_heads)
        && (1..=4096).contains(&hd);
    let on = [k, v]
        .iter()
        .all(|x| eligible(x) && x.device().same_device(q.device()));
    if !fits || !eligible(q) || !on || !k.is_contiguous() || !v.is_contiguous() || ptx().is_none() {
        return Ok(None);
    }
    let op = DecodeAttention {
        k: k.clone(),
        v: v.clone(),
        window,
        pos: pos.contiguous()?,
        heads,
        kv_heads,
        softcap: softcap.unwrap_or(0.0) as f32,
    };
    Ok(Some(q.contiguous()?.apply_op1_no_bwd(&op)?))
}
