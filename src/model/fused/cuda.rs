//! The CUDA side of [`super`]: the kernels' source (compiled once per
//! process by NVRTC) and their launches.

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{
    CudaFunction, CudaSlice, CudaView, LaunchConfig, PushKernelArg,
};
use candle_core::cuda::cudarc::nvrtc;
use candle_core::cuda::{CudaStorage, WrapErr};
use candle_core::{CustomOp1, CustomOp2, Layout, Shape, Tensor};

use super::super::family::Activation;
use super::super::matrix::Blocks;
use super::super::Result;
use super::eligible;

mod decode;
mod gemv;
mod launch;

pub(super) use decode::decode_attention;
pub(super) use gemv::gemv;

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
        let names = [
            "mwtop_masked_softmax",
            "mwtop_softmax_bwd",
            "mwtop_rmsnorm_bwd",
            "mwtop_gated",
            "mwtop_dequant",
            "mwtop_rmsnorm",
            "mwtop_decode_attention",
        ]
        .into_iter()
        .chain(gemv::kernel_names().iter().map(String::as_str));
        for name in names {
            dev.get_or_load_custom_func(name, "mwtop_fused", ptx)?;
            // The module the decode kernels launch from on this device.
            launch::function(dev, name)?;
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
        // SAFETY: the kernel writes every element of out.
        let out = unsafe { dev.alloc::<f32>(n)? };
        let (func, overlapped) = launch::function(dev, "mwtop_gated")?;
        let mut args = launch::Args::new(dev);
        args.view(&x)
            .slice(&out)
            .i64(n as i64)
            .i32(self.d_ff as i32)
            .i32(self.gelu as i32);
        // SAFETY: the arguments match the kernel's signature and sizes.
        unsafe { args.launch(&func, overlapped, LaunchConfig::for_num_elems(n as u32)) }?;
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
        // SAFETY: the kernel writes every element of out.
        let out = unsafe { dev.alloc::<f32>(rows * cols)? };
        let (func, overlapped) = launch::function(dev, "mwtop_rmsnorm")?;
        let mut args = launch::Args::new(dev);
        args.view(&x)
            .view(&w)
            .slice(&out)
            .i32(cols as i32)
            .f32(self.eps);
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments match the kernel's signature and sizes.
        unsafe { args.launch(&func, overlapped, cfg) }?;
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

/// GGUF blocks (rows, row bytes) u8 dequantized to f32 (rows, cols).
struct Dequantize {
    format: i32,
    cols: usize,
}

impl CustomOp1 for Dequantize {
    fn name(&self) -> &'static str {
        "mwtop-dequantize"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("mwtop-dequantize runs on CUDA only")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let dev = s.device();
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("dequantize: blocks not contiguous")
        };
        let (rows, row_bytes) = l.shape().dims2()?;
        // The kernel's aligned loads hold for whole rows from a buffer's start.
        if a % row_bytes.max(1) != 0 {
            candle_core::bail!("dequantize: the blocks do not start at a whole row")
        }
        let w = s.as_cuda_slice::<u8>()?.slice(a..b);
        let total = rows * self.cols;
        // SAFETY: the kernel writes every element of out.
        let out = unsafe { dev.alloc::<f32>(total)? };
        let (func, overlapped) = launch::function(dev, "mwtop_dequant")?;
        let mut args = launch::Args::new(dev);
        args.view(&w)
            .slice(&out)
            .i32(self.format)
            .i64(rows as i64)
            .i32(self.cols as i32);
        // A thread per part of 8 weights.
        let parts = total / 8;
        let cfg = LaunchConfig {
            grid_dim: (parts.div_ceil(256).clamp(1, 1 << 16) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments match the kernel's signature; out holds
        // rows * cols, the blocks rows whole rows of cols weights.
        unsafe { args.launch(&func, overlapped, cfg) }?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev.clone()),
            Shape::from((rows, self.cols)),
        ))
    }
}

pub(super) fn dequantize(blocks: &Blocks) -> Result<Option<Tensor>> {
    let b = &blocks.bytes;
    if !b.device().is_cuda() || ptx().is_none() || !blocks.cols.is_multiple_of(32) {
        return Ok(None);
    }
    let op = Dequantize {
        format: crate::checkpoint::gguf::ggml_dtype_id(blocks.format) as i32,
        cols: blocks.cols,
    };
    Ok(Some(b.contiguous()?.apply_op1_no_bwd(&op)?))
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

#[cfg(test)]
mod tests {
    /// NVRTC compiles the kernels (it needs no GPU): a kernel that does not
    /// compile would otherwise show only as candle's slower ops on the GPU.
    #[test]
    fn the_kernels_compile() {
        let ptx = super::nvrtc::compile_ptx(super::SOURCE).expect("NVRTC compiles the kernels");
        let names = [
            "mwtop_dequant",
            "mwtop_rmsnorm",
            "mwtop_gated",
            "mwtop_decode_attention",
        ]
        .into_iter()
        .chain(super::gemv::kernel_names().iter().map(String::as_str));
        for name in names {
            let entry = format!(".entry {name}(");
            assert!(ptx.to_src().contains(&entry), "{name}");
        }
    }
}
