//! The CUDA side of [`super`]: the kernels' source (compiled once per
//! process by NVRTC) and their launches.

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{
    CudaFunction, CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda::cudarc::nvrtc;
use candle_core::cuda::{CudaStorage, WrapErr};
use candle_core::{CustomOp1, CustomOp2, DType, Layout, Shape, Tensor};

use super::super::family::Activation;
use super::super::Result;
use super::eligible;

/// The kernels (see kernels.cu), compiled by NVRTC once per process.
const SOURCE: &str = include_str!("kernels.cu");

/// Whether the kernels compiled (else every caller takes candle's ops).
pub(super) fn available() -> bool {
    ptx().is_some()
}

/// The kernels' PTX, compiled once per process; None (and one warning)
/// when NVRTC cannot compile them.
fn ptx() -> Option<&'static str> {
    static PTX: OnceLock<Option<String>> = OnceLock::new();
    PTX.get_or_init(|| match nvrtc::compile_ptx(SOURCE) {
        Ok(p) => Some(p.to_src()),
        Err(e) => {
            tracing::warn!("fused kernels unavailable, using candle's ({e})");
            None
        }
    })
    .as_deref()
}

pub(super) fn prepare(dev: &candle_core::CudaDevice) -> Result<()> {
    if let Some(ptx) = ptx() {
        for name in [
            "mwtop_masked_softmax",
            "mwtop_softmax_bwd",
            "mwtop_rmsnorm_bwd",
            "mwtop_gated",
            "mwtop_gemv16",
            "mwtop_gemv32",
            "mwtop_rmsnorm",
            "mwtop_rope_store",
            "mwtop_decode_attention",
        ] {
            dev.get_or_load_custom_func(name, "mwtop_fused", ptx)?;
        }
    }
    Ok(())
}

fn contiguous_slice<'a>(
    s: &'a CudaStorage,
    l: &Layout,
) -> candle_core::Result<candle_core::cuda::cudarc::driver::CudaView<'a, f32>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(s.as_cuda_slice::<f32>()?.slice(a..b)),
        None => candle_core::bail!("fused kernel: input not contiguous"),
    }
}

struct MaskedSoftmax {
    t: usize,
    heads: usize,
    batched: bool,
}

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "mwtop-masked-softmax"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("mwtop-masked-softmax runs on CUDA only")
    }

    fn cuda_fwd(
        &self,
        s: &CudaStorage,
        sl: &Layout,
        m: &CudaStorage,
        ml: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        softmax_storage(s, sl, Some((m, ml, self.batched)), self.t, self.heads)
    }
}

/// One warp per row of `rows` x `cols`.
fn row_config(rows: usize) -> LaunchConfig {
    const ROWS_PER_BLOCK: usize = 4;
    LaunchConfig {
        grid_dim: (rows.div_ceil(ROWS_PER_BLOCK) as u32, 1, 1),
        block_dim: (32, ROWS_PER_BLOCK as u32, 1),
        shared_mem_bytes: 0,
    }
}

/// Rows and the last dim's length of a layout.
fn rows_cols(l: &Layout) -> (usize, usize) {
    let dims = l.shape().dims();
    let cols = dims[dims.len() - 1];
    (l.shape().elem_count() / cols, cols)
}

/// The fused module's function `name` and an output of `n` f32 that
/// the kernel writes in full.
fn kernel(
    dev: &candle_core::CudaDevice,
    name: &str,
    n: usize,
) -> candle_core::Result<(CudaFunction, CudaSlice<f32>)> {
    let ptx = ptx().ok_or_else(|| candle_core::Error::Msg("no PTX".into()))?;
    let func = dev
        .get_or_load_custom_func(name, "mwtop_fused", ptx)?
        .into_cuda_function();
    // SAFETY: every element is written by the kernel before it is read.
    let out = unsafe { dev.alloc::<f32>(n)? };
    Ok((func, out))
}

/// softmax(s [+ mask]) of contiguous f32 scores: the kernel's launch.
pub(super) fn softmax_storage(
    s: &CudaStorage,
    sl: &Layout,
    mask: Option<(&CudaStorage, &Layout, bool)>,
    t: usize,
    heads: usize,
) -> candle_core::Result<(CudaStorage, Shape)> {
    let dev = s.device();
    let scores = contiguous_slice(s, sl)?;
    let mask = match mask {
        Some((m, ml, batched)) => Some((contiguous_slice(m, ml)?, batched)),
        None => None,
    };
    let (rows, cols) = rows_cols(sl);
    let (func, out) = kernel(dev, "mwtop_masked_softmax", rows * cols)?;
    let (rows_i, cols_i, t_i, heads_i) = (rows as i32, cols as i32, t as i32, heads as i32);
    let batched_i = mask.as_ref().is_some_and(|(_, b)| *b) as i32;
    let has_mask_i = mask.is_some() as i32;
    let stream = dev.cuda_stream();
    let mut b = stream.launch_builder(&func);
    b.arg(&scores);
    match &mask {
        Some((m, _)) => b.arg(m),
        // Never read without a mask.
        None => b.arg(&scores),
    };
    b.arg(&out);
    b.arg(&rows_i);
    b.arg(&cols_i);
    b.arg(&t_i);
    b.arg(&heads_i);
    b.arg(&batched_i);
    b.arg(&has_mask_i);
    // SAFETY: the arguments match the kernel's signature and sizes.
    unsafe { b.launch(row_config(rows)) }.w()?;
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        sl.shape().clone(),
    ))
}

struct SoftmaxBwd;

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "mwtop-softmax-bwd"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("mwtop-softmax-bwd runs on CUDA only")
    }

    fn cuda_fwd(
        &self,
        y: &CudaStorage,
        yl: &Layout,
        g: &CudaStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let dev = y.device();
        let (yv, gv) = (contiguous_slice(y, yl)?, contiguous_slice(g, gl)?);
        let (rows, cols) = rows_cols(yl);
        let (func, out) = kernel(dev, "mwtop_softmax_bwd", rows * cols)?;
        let (rows_i, cols_i) = (rows as i32, cols as i32);
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&func);
        b.arg(&yv);
        b.arg(&gv);
        b.arg(&out);
        b.arg(&rows_i);
        b.arg(&cols_i);
        // SAFETY: the arguments match the kernel's signature and sizes.
        unsafe { b.launch(row_config(rows)) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev.clone()),
            yl.shape().clone(),
        ))
    }
}

struct RmsNormBwd {
    w: Tensor,
    eps: f32,
}

impl CustomOp2 for RmsNormBwd {
    fn name(&self) -> &'static str {
        "mwtop-rms-norm-bwd"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("mwtop-rms-norm-bwd runs on CUDA only")
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        g: &CudaStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let dev = x.device();
        let (xv, gv) = (contiguous_slice(x, xl)?, contiguous_slice(g, gl)?);
        let (w_storage, wl) = self.w.storage_and_layout();
        let wv = match &*w_storage {
            candle_core::Storage::Cuda(c) => contiguous_slice(c, wl)?,
            _ => candle_core::bail!("rms norm: the weight is on another device"),
        };
        let (rows, cols) = rows_cols(xl);
        let (func, out) = kernel(dev, "mwtop_rmsnorm_bwd", rows * cols)?;
        let (rows_i, cols_i, eps) = (rows as i32, cols as i32, self.eps);
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&func);
        b.arg(&xv);
        b.arg(&wv);
        b.arg(&gv);
        b.arg(&out);
        b.arg(&rows_i);
        b.arg(&cols_i);
        b.arg(&eps);
        // SAFETY: the arguments match the kernel's signature and sizes.
        unsafe { b.launch(row_config(rows)) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev.clone()),
            xl.shape().clone(),
        ))
    }
}

/// dx of an RMSNorm from its input and dy, in one kernel.
pub(super) fn rms_norm_backward(
    x: &Tensor,
    w: &Tensor,
    g: &Tensor,
    eps: f32,
) -> candle_core::Result<Option<Tensor>> {
    if !eligible(x) || g.dtype() != x.dtype() || w.dtype() != x.dtype() || ptx().is_none() {
        return Ok(None);
    }
    let op = RmsNormBwd {
        w: w.contiguous()?,
        eps,
    };
    x.contiguous()?
        .apply_op2_no_bwd(&g.contiguous()?, &op)
        .map(Some)
}

/// dx of a softmax from its output and dy, in one kernel.
pub(super) fn softmax_backward(y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
    if !eligible(y) || g.dtype() != y.dtype() || ptx().is_none() {
        return Ok(None);
    }
    y.contiguous()?
        .apply_op2_no_bwd(&g.contiguous()?, &SoftmaxBwd)
        .map(Some)
}

pub(super) fn masked_softmax(scores: &Tensor, mask: &Tensor, t: usize) -> Result<Option<Tensor>> {
    if !eligible(scores) || mask.dtype() != scores.dtype() || ptx().is_none() {
        return Ok(None);
    }
    let (b, kv, rows, keys) = scores.dims4()?;
    let batched = match mask.dims() {
        [mt, mk] if *mt == t && *mk == keys => false,
        [mb, 1, 1, mt, mk] if *mb == b && *mt == t && *mk == keys => true,
        _ => return Ok(None),
    };
    let op = MaskedSoftmax {
        t,
        heads: kv * (rows / t),
        batched,
    };
    Ok(Some(
        scores
            .contiguous()?
            .apply_op2_no_bwd(&mask.contiguous()?, &op)?,
    ))
}

struct Gated {
    d_ff: usize,
    gelu: bool,
}

impl CustomOp1 for Gated {
    fn name(&self) -> &'static str {
        "mwtop-gated"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("mwtop-gated runs on CUDA only")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let dev = s.device();
        let x = contiguous_slice(s, l)?;
        let mut dims = l.shape().dims().to_vec();
        let last = dims.len() - 1;
        dims[last] = self.d_ff;
        let n = l.shape().elem_count() / 2;
        let (func, out) = kernel(dev, "mwtop_gated", n)?;
        let cfg = LaunchConfig::for_num_elems(n as u32);
        let (n_i, dff_i, gelu_i) = (n as i64, self.d_ff as i32, self.gelu as i32);
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&func);
        b.arg(&x);
        b.arg(&out);
        b.arg(&n_i);
        b.arg(&dff_i);
        b.arg(&gelu_i);
        // SAFETY: the arguments match the kernel's signature and sizes.
        unsafe { b.launch(cfg) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev.clone()),
            Shape::from(dims),
        ))
    }
}

pub(super) fn gated(gate_up: &Tensor, d_ff: usize, act: Activation) -> Result<Option<Tensor>> {
    if !eligible(gate_up) || ptx().is_none() || gate_up.dims().last() != Some(&(2 * d_ff)) {
        return Ok(None);
    }
    let op = Gated {
        d_ff,
        gelu: matches!(act, Activation::GeluTanh),
    };
    Ok(Some(gate_up.contiguous()?.apply_op1_no_bwd(&op)?))
}

/// The matrix of [`gemv`]: f32, or 16-bit floats read as raw bits; and
/// what the product is added to, if anything ((n, rows), contiguous).
struct Gemv {
    w: Tensor,
    add: Option<Tensor>,
    /// RMSNorm's weight and eps, applied to x first.
    norm: Option<(Tensor, f32)>,
}

impl CustomOp1 for Gemv {
    fn name(&self) -> &'static str {
        "mwtop-gemv"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("mwtop-gemv runs on CUDA only")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let dev = s.device();
        let x = contiguous_slice(s, l)?;
        let (rows, cols) = self.w.dims2()?;
        let n = l.shape().elem_count() / cols;
        let (w_storage, wl) = self.w.storage_and_layout();
        let candle_core::Storage::Cuda(wc) = &*w_storage else {
            candle_core::bail!("gemv: the weight is on another device")
        };
        let Some((start, end)) = wl.contiguous_offsets() else {
            candle_core::bail!("gemv: the weight is not contiguous")
        };
        let add = self.add.as_ref().map(Held::new).transpose()?;
        let add = add.as_ref().map(Held::view).transpose()?;
        let norm = self.norm.as_ref().map(|(g, _)| Held::new(g)).transpose()?;
        let g = norm.as_ref().map(Held::view).transpose()?;
        let eps = self.norm.as_ref().map_or(0.0, |(_, eps)| *eps);
        // x (and the norm's weight) as 16-byte loads where they start aligned.
        let x_aligned = l.start_offset().is_multiple_of(4)
            && norm
                .as_ref()
                .is_none_or(|h| h.layout.start_offset().is_multiple_of(4));
        let inputs = GemvInputs {
            x: &x,
            add: add.as_ref(),
            norm: g.as_ref().map(|g| (g, eps)),
        };
        let out = if self.w.dtype() == DType::F32 {
            let wv = wc.as_cuda_slice::<f32>()?.slice(start..end);
            // 16-byte loads when every row of W and of x starts aligned.
            let vec4 = (cols.is_multiple_of(4) && start.is_multiple_of(4) && x_aligned) as i32;
            launch_gemv(dev, "mwtop_gemv32", &wv, &inputs, (rows, cols, n), &[vec4])?
        } else {
            let is_bf16 = self.w.dtype() == DType::BF16;
            // Both 16-bit dtypes as their bits: the kernel widens them itself.
            let wv = if is_bf16 {
                let v = wc.as_cuda_slice::<half::bf16>()?.slice(start..end);
                // SAFETY: bf16 and u16 have the same size and any bits are a u16.
                unsafe { v.transmute::<u16>(end - start) }
            } else {
                let v = wc.as_cuda_slice::<half::f16>()?.slice(start..end);
                // SAFETY: as above, for f16.
                unsafe { v.transmute::<u16>(end - start) }
            }
            .ok_or_else(|| candle_core::Error::Msg("gemv: cannot view the weight's bits".into()))?;
            // 16-byte loads when every row of W and x itself start 16-byte
            // aligned (allocations are; a view's offset and the row length
            // must keep them so).
            let vec8 = (cols.is_multiple_of(8) && start.is_multiple_of(8) && x_aligned) as i32;
            let flags = [is_bf16 as i32, vec8];
            launch_gemv(dev, "mwtop_gemv16", &wv, &inputs, (rows, cols, n), &flags)?
        };
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev.clone()),
            Shape::from((n, rows)),
        ))
    }
}

/// A GEMV's activations: x, what the product is added to, and the
/// RMSNorm (weight, eps) x goes through first.
struct GemvInputs<'a> {
    x: &'a CudaView<'a, f32>,
    add: Option<&'a CudaView<'a, f32>>,
    norm: Option<(&'a CudaView<'a, f32>, f32)>,
}

/// Launches GEMV kernel `name` over W's rows: (W, x, y, add, g, eps, rows,
/// cols, n, then `flags`), y (n, rows) = add + W norm(x), without `add`
/// and the norm where they are not given.
fn launch_gemv<T: DeviceRepr>(
    dev: &candle_core::CudaDevice,
    name: &str,
    w: &CudaView<'_, T>,
    inputs: &GemvInputs<'_>,
    (rows, cols, n): (usize, usize, usize),
    flags: &[i32],
) -> candle_core::Result<CudaSlice<f32>> {
    let (func, out) = kernel(dev, name, n * rows)?;
    let (rows_i, cols_i, n_i) = (rows as i32, cols as i32, n as i32);
    let null = 0u64; // the kernel's null pointer: no addend, no norm
    let eps = inputs.norm.map_or(0.0, |(_, eps)| eps);
    let stream = dev.cuda_stream();
    let mut b = stream.launch_builder(&func);
    b.arg(w);
    b.arg(inputs.x);
    b.arg(&out);
    match inputs.add {
        Some(a) => b.arg(a),
        None => b.arg(&null),
    };
    match inputs.norm {
        Some((g, _)) => b.arg(g),
        None => b.arg(&null),
    };
    b.arg(&eps);
    b.arg(&rows_i);
    b.arg(&cols_i);
    b.arg(&n_i);
    for f in flags {
        b.arg(f);
    }
    // SAFETY: the kernels take these arguments in this order (gemv16 its
    // two flags, gemv32 its one), with y of n * rows.
    unsafe { b.launch(row_config(rows)) }.w()?;
    Ok(out)
}

/// W x for up to `gemv::MAX_ROWS` rows of x, plus `add` (as many rows of
/// W's row count) when given, x through RMSNorm (weight, eps) first when
/// `norm` is given; (n, rows).
pub(super) fn gemv(
    w: &Tensor,
    x: &Tensor,
    add: Option<&Tensor>,
    norm: Option<(&Tensor, f32)>,
) -> Result<Option<Tensor>> {
    let float = matches!(w.dtype(), DType::F32 | DType::BF16 | DType::F16);
    if !eligible(x) || !float || !w.device().same_device(x.device()) || ptx().is_none() {
        return Ok(None);
    }
    let (rows, cols) = w.dims2()?;
    let n = x.elem_count() / cols.max(1);
    let rows_fit = (1..=crate::model::gemv::MAX_ROWS).contains(&n) && n * cols == x.elem_count();
    if !rows_fit || x.dim(x.rank() - 1)? != cols || !w.is_contiguous() {
        return Ok(None);
    }
    let add = match add {
        Some(a) if eligible(a) && a.device().same_device(x.device()) => {
            if a.elem_count() != n * rows || a.dim(a.rank() - 1)? != rows {
                return Ok(None);
            }
            Some(a.reshape((n, rows))?.contiguous()?)
        }
        Some(_) => return Ok(None),
        None => None,
    };
    let norm = match norm {
        Some((g, eps)) if eligible(g) && g.device().same_device(x.device()) => {
            if g.elem_count() != cols {
                return Ok(None);
            }
            Some((g.contiguous()?, eps))
        }
        Some(_) => return Ok(None),
        None => None,
    };
    let op = Gemv {
        w: w.clone(),
        add,
        norm,
    };
    Ok(Some(
        x.reshape((n, cols))?.contiguous()?.apply_op1_no_bwd(&op)?,
    ))
}

/// RMSNorm of contiguous f32 rows with f32 weights (see the kernel).
struct RmsNorm {
    eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "mwtop-rmsnorm"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("mwtop-rmsnorm runs on CUDA only")
    }

    fn cuda_fwd(
        &self,
        s: &CudaStorage,
        l: &Layout,
        ws: &CudaStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let dev = s.device();
        let x = contiguous_slice(s, l)?;
        let w = contiguous_slice(ws, wl)?;
        let (rows, cols) = rows_cols(l);
        let (func, out) = kernel(dev, "mwtop_rmsnorm", rows * cols)?;
        let cols_i = cols as i32;
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&func);
        b.arg(&x);
        b.arg(&w);
        b.arg(&out);
        b.arg(&cols_i);
        b.arg(&self.eps);
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments match the kernel's signature and sizes.
        unsafe { b.launch(cfg) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev.clone()),
            l.shape().clone(),
        ))
    }
}

pub(super) fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Option<Tensor>> {
    let cols = x.dim(x.rank() - 1)?;
    if !eligible(x) || !eligible(w) || !w.device().same_device(x.device()) || ptx().is_none() {
        return Ok(None);
    }
    if w.elem_count() != cols || cols == 0 || x.elem_count() / cols > u32::MAX as usize {
        return Ok(None);
    }
    let op = RmsNorm { eps };
    Ok(Some(
        x.contiguous()?.apply_op2_no_bwd(&w.contiguous()?, &op)?,
    ))
}

/// A tensor's f32 CUDA storage, held for a launch.
struct Held<'a> {
    guard: candle_core::StorageRef<'a>,
    layout: &'a Layout,
}

impl<'a> Held<'a> {
    fn new(t: &'a Tensor) -> candle_core::Result<Self> {
        let (guard, layout) = t.storage_and_layout();
        Ok(Self { guard, layout })
    }

    /// The tensor's f32 elements (it must be contiguous).
    fn view(&self) -> candle_core::Result<CudaView<'_, f32>> {
        self.view_of::<f32>()
    }

    /// The tensor's elements as `T` (it must be contiguous).
    fn view_of<T: candle_core::cuda::CudaDType>(&self) -> candle_core::Result<CudaView<'_, T>> {
        let candle_core::Storage::Cuda(c) = &*self.guard else {
            candle_core::bail!("fused kernel: a tensor is on another device")
        };
        let Some((a, b)) = self.layout.contiguous_offsets() else {
            candle_core::bail!("fused kernel: input not contiguous")
        };
        Ok(c.as_cuda_slice::<T>()?.slice(a..b))
    }
}

/// The inputs of [`rope_store`] beside q (see the kernel).
struct RopeStore {
    k: Tensor,
    v: Tensor,
    /// Scaled cos, scaled sin (for q), cos, sin (for k).
    tables: [Tensor; 4],
    pos: Tensor,
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

    fn cuda_fwd(&self, qs: &CudaStorage, ql: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let dev = qs.device();
        let q = contiguous_slice(qs, ql)?;
        let (b, nq, _, hd) = ql.shape().dims4()?;
        let (_, nk, cap, _) = self.k_cache.dims4()?;
        let held = [&self.k, &self.v, &self.k_cache, &self.v_cache]
            .into_iter()
            .chain(&self.tables)
            .map(Held::new)
            .collect::<candle_core::Result<Vec<_>>>()?;
        let views = held
            .iter()
            .map(Held::view)
            .collect::<candle_core::Result<Vec<_>>>()?;
        let pos = Held::new(&self.pos)?;
        let pos = pos.view_of::<u32>()?;
        let (func, out) = kernel(dev, "mwtop_rope_store", b * nq * hd)?;
        let threads = b * (nq + 2 * nk) * (hd / 2);
        let ints = [b, nq, nk, hd, cap].map(|x| x as i32);
        let stream = dev.cuda_stream();
        let mut lb = stream.launch_builder(&func);
        lb.arg(&q);
        lb.arg(&views[0]); // k
        lb.arg(&views[1]); // v
        for t in &views[4..8] {
            lb.arg(t);
        }
        lb.arg(&pos);
        lb.arg(&out);
        lb.arg(&views[2]); // k_cache
        lb.arg(&views[3]); // v_cache
        for i in &ints {
            lb.arg(i);
        }
        let cfg = LaunchConfig {
            grid_dim: (threads.div_ceil(128) as u32, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments match the kernel's signature and sizes. The
        // kernel writes the caches in place: they are device buffers of this
        // step, written only by kernels on this stream, never viewed from the
        // host while it runs (the same contract as candle's scatter_set).
        unsafe { lb.launch(cfg) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev.clone()),
            Shape::from((b, nq, 1, hd)),
        ))
    }
}

pub(super) fn rope_store(
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
    let op = RopeStore {
        k: k.contiguous()?,
        v: v.contiguous()?,
        tables: [
            tables[0].contiguous()?,
            tables[1].contiguous()?,
            tables[2].contiguous()?,
            tables[3].contiguous()?,
        ],
        pos: pos.contiguous()?,
        k_cache: k_cache.clone(),
        v_cache: v_cache.clone(),
    };
    Ok(Some(q.contiguous()?.apply_op1_no_bwd(&op)?))
}

/// One decode step's attention (see the kernel): k and v are the cache
/// buffers, the op's inputs q and the step's additive mask.
struct DecodeAttention {
    k: Tensor,
    v: Tensor,
    /// The step's position (one u32): keys after it are not even scored.
    pos: Option<Tensor>,
    heads: usize,
    kv_heads: usize,
    softcap: f32,
}

/// Threads per block of the decode-attention kernel.
const ATTENTION_THREADS: usize = 256;
/// Dynamic shared memory the decode-attention kernel may take without
/// opting in to more (48 KiB, less its static reduction buffer).
const ATTENTION_SHARED_BYTES: usize = 48 * 1024 - 256;

impl CustomOp2 for DecodeAttention {
    fn name(&self) -> &'static str {
        "mwtop-decode-attention"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("mwtop-decode-attention runs on CUDA only")
    }

    fn cuda_fwd(
        &self,
        qs: &CudaStorage,
        ql: &Layout,
        ms: &CudaStorage,
        ml: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let dev = qs.device();
        let q = contiguous_slice(qs, ql)?;
        let mask = contiguous_slice(ms, ml)?;
        let (b, _, cap, hd) = self.k.dims4()?;
        let (k, v) = (Held::new(&self.k)?, Held::new(&self.v)?);
        let (kv, vv) = (k.view()?, v.view()?);
        let rows = b * self.heads;
        let (func, out) = kernel(dev, "mwtop_decode_attention", rows * hd)?;
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
        let no_scratch = 0u64; // the kernel's null pointer: scores in shared memory
        let ints = [self.heads, self.kv_heads, cap, hd].map(|x| x as i32);
        let stream = dev.cuda_stream();
        let mut lb = stream.launch_builder(&func);
        lb.arg(&q);
        lb.arg(&kv);
        lb.arg(&vv);
        lb.arg(&mask);
        match &scratch {
            Some(s) => lb.arg(s),
            None => lb.arg(&no_scratch),
        };
        lb.arg(&out);
        for i in &ints {
            lb.arg(i);
        }
        lb.arg(&self.softcap);
        let flags = [vec as i32, scores_shared as i32];
        for f in &flags {
            lb.arg(f);
        }
        let pos_held = self.pos.as_ref().map(Held::new).transpose()?;
        let pos = pos_held.as_ref().map(Held::view_of::<u32>).transpose()?;
        let no_pos = 0u64; // the kernel's null pointer: every key of the buffer
        match &pos {
            Some(p) => lb.arg(p),
            None => lb.arg(&no_pos),
        };
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (ATTENTION_THREADS as u32, 1, 1),
            shared_mem_bytes: (fixed + if scores_shared { cap * 4 } else { 0 }) as u32,
        };
        // SAFETY: the arguments match the kernel's signature and sizes.
        unsafe { lb.launch(cfg) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev.clone()),
            Shape::from((b, 1, self.heads * hd)),
        ))
    }
}

pub(super) fn decode_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    pos: Option<&Tensor>,
    softcap: Option<f64>,
) -> Result<Option<Tensor>> {
    let pos_ok = pos.is_none_or(|p| {
        p.dtype() == DType::U32 && p.elem_count() == 1 && p.device().same_device(q.device())
    });
    if !pos_ok {
        return Ok(None);
    }
    let (b, heads, t, hd) = q.dims4()?;
    let (kb, kv_heads, cap, khd) = k.dims4()?;
    let fits = t == 1
        && kb == b
        && khd == hd
        && v.dims() == k.dims()
        && mask.elem_count() == cap
        && kv_heads > 0
        && heads.is_multiple_of(kv_heads)
        && (1..=4096).contains(&hd);
    let on = [k, v, mask]
        .iter()
        .all(|x| eligible(x) && x.device().same_device(q.device()));
    if !fits || !eligible(q) || !on || !k.is_contiguous() || !v.is_contiguous() || ptx().is_none() {
        return Ok(None);
    }
    let op = DecodeAttention {
        k: k.clone(),
        v: v.clone(),
        pos: pos.map(Tensor::contiguous).transpose()?,
        heads,
        kv_heads,
        softcap: softcap.unwrap_or(0.0) as f32,
    };
    Ok(Some(
        q.contiguous()?.apply_op2_no_bwd(&mask.contiguous()?, &op)?,
    ))
}

#[cfg(test)]
mod tests {
    /// NVRTC compiles the kernels (it needs no GPU): a kernel that does not
    /// compile would otherwise show only as candle's slower ops on the GPU.
    #[test]
    fn the_kernels_compile() {
        let ptx = super::nvrtc::compile_ptx(super::SOURCE).expect("NVRTC compiles the kernels");
        for name in [
            "mwtop_gemv16",
            "mwtop_gemv32",
            "mwtop_rmsnorm",
            "mwtop_gated",
            "mwtop_rope_store",
            "mwtop_decode_attention",
        ] {
            assert!(ptx.to_src().contains(name), "{name}");
        }
    }
}
