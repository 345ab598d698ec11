//! The GEMV of a decode step (see `mwtop_gemv` and, for GGUF blocks,
//! `mwtop_gemvq` in kernels.cu): W times a few rows of x, with what the
//! block around it would otherwise run as kernels of their own folded in.

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::sys::CUfunction_attribute_enum;
use candle_core::cuda::cudarc::driver::{CudaFunction, CudaView, LaunchConfig};
use candle_core::cuda::{CudaStorage, WrapErr};
use candle_core::{CustomOp1, DType, Layout, Shape, Tensor};

use super::super::super::family::Activation;
use super::super::super::matrix::Matrix;
use super::super::super::Result;
use super::super::{eligible, GemvInput, Tees};
use super::launch::{function, Args};
use super::{contiguous_slice, ptx, Held};
use crate::checkpoint::gguf::ggml_dtype_id;

/// The kernel's input modes (MWTOP_IN_* in kernels.cu).
const IN_PLAIN: i32 = 0;
const IN_NORM: i32 = 1;
const IN_SILU: i32 = 2;
const IN_GELU: i32 = 3;

/// The most bytes of input a block stages in shared memory (the H100/H200
/// allow 227 KiB a block); larger inputs are read from L2 by each warp.
const STAGE_MAX_BYTES: usize = 96 * 1024;
/// Shared memory a kernel may take without opting in, less the staging's
/// static reduction buffer.
const SHARED_DEFAULT_BYTES: usize = 48 * 1024 - 1024;

/// Inputs at least this wide count as a large model's: each warp reading
/// and norming the whole row itself (several round trips to L2 before its
/// first product) costs more than staging it once per block. On the H200
/// an 8B-shaped Q4_0 model (rows of 4,096) decoded at 177 tok/s staged in
/// blocks of 16 warps against 139 unstaged in blocks of 4; SmolLM2's rows
/// of 576 measured faster unstaged.
const WIDE_INPUT: usize = 2048;

/// Warps (one weight row each) per block: `MWTOP_GEMV_BLOCK_ROWS`, else 16
/// for wide inputs (a block stages its input once for all of them) and 4
/// for narrow ones.
fn rows_per_block(cols: usize) -> usize {
    static ROWS: OnceLock<Option<usize>> = OnceLock::new();
    let set = *ROWS.get_or_init(|| {
        std::env::var("MWTOP_GEMV_BLOCK_ROWS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|r| (1..=32).contains(r))
    });
    set.unwrap_or(if cols >= WIDE_INPUT { 16 } else { 4 })
}

/// Whether plain and normed inputs are staged in shared memory:
/// `MWTOP_GEMV_STAGE=1` always, `=0` never (to measure it), else for wide
/// inputs (see [`WIDE_INPUT`]). The gated input is always staged where it
/// fits: it is formed once per block there.
fn stage_plain(cols: usize) -> bool {
    static SET: OnceLock<Option<bool>> = OnceLock::new();
    let set = *SET.get_or_init(|| match std::env::var("MWTOP_GEMV_STAGE").as_deref() {
        Ok("1") => Some(true),
        Ok("0") => Some(false),
        _ => None,
    });
    set.unwrap_or(cols >= WIDE_INPUT)
}

/// Whether every product takes the general kernel, whatever its rows
/// (`MWTOP_GEMV_GENERAL=1`, to measure the one- and two-row builds against
/// it; the sums run in the same order in all of them).
fn general_only() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("MWTOP_GEMV_GENERAL").is_ok_and(|v| v == "1"))
}

/// GGUF type ids with a block GEMV kernel, `mwtop_gemvq<id>` in kernels.cu
/// (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K).
const BLOCK_FORMAT_IDS: [i32; 8] = [2, 3, 6, 7, 8, 12, 13, 14];

/// Every GEMV kernel's name, built once: per weight kind (f32, 16-bit,
/// then each block format of [`BLOCK_FORMAT_IDS`]) the general build, then
/// those for exactly one and two rows (`_r1`, `_r2`).
pub(super) fn kernel_names() -> &'static [String] {
    static NAMES: OnceLock<Vec<String>> = OnceLock::new();
    NAMES.get_or_init(|| {
        ["mwtop_gemv32".to_string(), "mwtop_gemv16".to_string()]
            .into_iter()
            .chain(BLOCK_FORMAT_IDS.iter().map(|id| format!("mwtop_gemvq{id}")))
            .flat_map(|base| ["", "_r1", "_r2"].map(|s| format!("{base}{s}")))
            .collect()
    })
}

/// The kernel for weights of `kind` (0 f32, 1 16-bit, 2 + i the i-th block
/// format) and `n` rows: the build for exactly one or two rows (a decode
/// step, the A/B pair), which holds fewer sums and inputs in registers than
/// the general one.
fn kernel_name(kind: usize, n: usize) -> &'static str {
    let build = match (n, general_only()) {
        (1, false) => 1,
        (2, false) => 2,
        _ => 0,
    };
    &kernel_names()[3 * kind + build]
}

/// The matrix and everything the kernel reads or writes beside x.
struct Gemv {
    /// Dense (rows, cols), or GGUF blocks' bytes (rows, row bytes).
    w: Tensor,
    /// The blocks' GGUF type id, for blocks.
    format: Option<i32>,
    cols: usize,
    add: Option<Tensor>,
    mode: i32,
    /// The norm's weight (cols), or the d_ff mask (n, cols).
    aux: Option<Tensor>,
    eps: f32,
    staged: bool,
    tee_out: Option<Tensor>,
    tee_input: Option<Tensor>,
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
        let (rows, cols) = (self.w.dim(0)?, self.cols);
        let x_cols = if self.mode >= IN_SILU { 2 * cols } else { cols };
        let n = l.shape().elem_count() / x_cols;
        let (w_storage, wl) = self.w.storage_and_layout();
        let candle_core::Storage::Cuda(wc) = &*w_storage else {
            candle_core::bail!("gemv: the weight is on another device")
        };
        let Some((start, end)) = wl.contiguous_offsets() else {
            candle_core::bail!("gemv: the weight is not contiguous")
        };
        let (add, aux) = (held(&self.add)?, held(&self.aux)?);
        let (tee_out, tee_input) = (held(&self.tee_out)?, held(&self.tee_input)?);
        let (add, aux, tee_out, tee_input) = (
            viewed(&add)?,
            viewed(&aux)?,
            viewed(&tee_out)?,
            viewed(&tee_input)?,
        );
        // 16-byte loads of x, the norm's weight or the mask, and the tee of
        // the input, where all start aligned and the rows keep them so.
        let aligned = |t: &Option<Tensor>| {
            t.as_ref()
                .is_none_or(|t| t.layout().start_offset().is_multiple_of(4))
        };
        let x_aligned = cols.is_multiple_of(4)
            && l.start_offset().is_multiple_of(4)
            && aligned(&self.aux)
            && aligned(&self.tee_input);
        let staged = match (self.staged, x_aligned) {
            (false, _) => 0,
            (true, false) => 1,
            (true, true) => 2,
        };
        if self.format.is_some() && staged == 0 && !x_aligned {
            candle_core::bail!("gemv: blocks need x aligned or staged")
        }
        // SAFETY: every element of y is written by the kernel.
        let out = unsafe { dev.alloc::<f32>(n * rows)? };
        let is_16 = matches!(self.w.dtype(), DType::BF16 | DType::F16);
        let kind = match (self.format, is_16) {
            (Some(id), _) => {
                let Some(i) = BLOCK_FORMAT_IDS.iter().position(|&f| f == id) else {
                    candle_core::bail!("gemv: no kernel for GGUF type {id}")
                };
                2 + i
            }
            (None, true) => 1,
            (None, false) => 0,
        };
        let (func, overlapped) = function(dev, kernel_name(kind, n))?;
        let block_rows = rows_per_block(cols);
        let shared = if self.staged { n * cols * 4 } else { 0 };
        allow_shared(&func, shared)?;
        let mut args = Args::new(dev);
        match self.w.dtype() {
            DType::F32 => args.view(&wc.as_cuda_slice::<f32>()?.slice(start..end)),
            DType::BF16 => args.view(&wc.as_cuda_slice::<half::bf16>()?.slice(start..end)),
            DType::F16 => args.view(&wc.as_cuda_slice::<half::f16>()?.slice(start..end)),
            DType::U8 if self.format.is_some() => {
                args.view(&wc.as_cuda_slice::<u8>()?.slice(start..end))
            }
            other => candle_core::bail!("gemv: weights of {other:?}"),
        };
        args.view(&x)
            .slice(&out)
            .maybe(add.as_ref())
            .maybe(aux.as_ref())
            .f32(self.eps)
            .i32(rows as i32)
            .i32(cols as i32)
            .i32(n as i32);
        match self.format {
            Some(_) => &mut args,
            None => {
                let per = if is_16 { 8 } else { 4 };
                // Staged, the products read x from shared memory (aligned).
                let vec = cols.is_multiple_of(per)
                    && start.is_multiple_of(per)
                    && (self.staged || x_aligned);
                args.i32((self.w.dtype() == DType::BF16) as i32)
                    .i32(vec as i32)
            }
        };
        args.i32(self.mode)
            .i32(staged)
            .maybe(tee_out.as_ref())
            .maybe(tee_input.as_ref());
        let cfg = LaunchConfig {
            grid_dim: (rows.div_ceil(block_rows) as u32, 1, 1),
            block_dim: (32, block_rows as u32, 1),
            shared_mem_bytes: shared as u32,
        };
        // SAFETY: the arguments are the kernel's, in its order; y holds
        // n * rows, the tees as many as the product and its input (checked
        // by `gemv`); the kernel writes the tees as it writes y (they are
        // device buffers of this step, read only by later kernels on this
        // stream or by the host after it synchronises).
        unsafe { args.launch(&func, overlapped, cfg) }?;
        drop(w_storage);
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev.clone()),
            Shape::from((n, rows)),
        ))
    }
}

fn held(t: &Option<Tensor>) -> candle_core::Result<Option<Held<'_>>> {
    t.as_ref().map(Held::new).transpose()
}

fn viewed<'a>(h: &'a Option<Held<'a>>) -> candle_core::Result<Option<CudaView<'a, f32>>> {
    h.as_ref().map(Held::view).transpose()
}

/// Lets `func` take `bytes` of dynamic shared memory when that is more
/// than a kernel gets without asking.
fn allow_shared(func: &CudaFunction, bytes: usize) -> candle_core::Result<()> {
    if bytes > SHARED_DEFAULT_BYTES {
        func.set_attribute(
            CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            bytes as i32,
        )
        .w()?;
    }
    Ok(())
}

/// An f32 tensor on x's device holding exactly `count` elements
/// contiguously: what a kernel may write through.
fn writable(t: &Tensor, x: &Tensor, count: usize) -> bool {
    eligible(t)
        && t.device().same_device(x.device())
        && t.is_contiguous()
        && t.elem_count() == count
}

/// See [`super::super::gemv`].
pub(in super::super) fn gemv(
    matrix: &Matrix,
    input: GemvInput<'_>,
    add: Option<&Tensor>,
    tees: Tees<'_>,
) -> Result<Option<Tensor>> {
    let x = input.x();
    let (w, format) = match matrix {
        Matrix::Dense(w) if matches!(w.dtype(), DType::F32 | DType::BF16 | DType::F16) => (w, None),
        // The kernel reads a block's fields with loads of up to 8 bytes,
        // aligned for rows that start at a multiple of 16 bytes.
        Matrix::Blocks(b)
            if b.bytes.layout().start_offset().is_multiple_of(16)
                && BLOCK_FORMAT_IDS.contains(&(ggml_dtype_id(b.format) as i32)) =>
        {
            (&b.bytes, Some(ggml_dtype_id(b.format) as i32))
        }
        _ => return Ok(None),
    };
    if !eligible(x) || !w.device().same_device(x.device()) || ptx().is_none() {
        return Ok(None);
    }
    let (rows, cols) = (matrix.rows()?, matrix.cols()?);
    let (mode, x_cols) = match &input {
        GemvInput::Plain(_) => (IN_PLAIN, cols),
        GemvInput::Normed { .. } => (IN_NORM, cols),
        GemvInput::Gated { act, .. } => match act {
            Activation::Silu => (IN_SILU, 2 * cols),
            Activation::GeluTanh => (IN_GELU, 2 * cols),
        },
    };
    let n = x.elem_count() / x_cols.max(1);
    let rows_fit = (1..=crate::model::gemv::MAX_ROWS).contains(&n) && n * x_cols == x.elem_count();
    if !rows_fit || x.dim(x.rank() - 1)? != x_cols || !w.is_contiguous() {
        return Ok(None);
    }
    let fits_shared = n * cols * 4 <= STAGE_MAX_BYTES;
    let staged = match mode {
        IN_SILU | IN_GELU => fits_shared,
        _ => fits_shared && stage_plain(cols),
    };
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
    let (aux, eps) = match &input {
        GemvInput::Plain(_) => (None, 0.0),
        GemvInput::Normed { weight, eps, .. } => {
            if !eligible(weight) || !weight.device().same_device(x.device()) {
                return Ok(None);
            }
            if weight.elem_count() != cols {
                return Ok(None);
            }
            (Some(weight.contiguous()?), *eps)
        }
        GemvInput::Gated { mask, .. } => {
            if !staged {
                return Ok(None);
            }
            match mask {
                Some(m) if eligible(m) && m.device().same_device(x.device()) => {
                    if m.elem_count() != n * cols {
                        return Ok(None);
                    }
                    (Some(m.contiguous()?), 0.0)
                }
                Some(_) => return Ok(None),
                None => (None, 0.0),
            }
        }
    };
    if tees.out.is_some_and(|t| !writable(t, x, n * rows)) {
        return Ok(None);
    }
    // Only the gated input is formed in full where it could be teed.
    let gated = matches!(input, GemvInput::Gated { .. });
    if tees
        .input
        .is_some_and(|t| !gated || !writable(t, x, n * cols))
    {
        return Ok(None);
    }
    let x = x.reshape((n, x_cols))?.contiguous()?;
    // Blocks are read a unit of 32 weights at a time, with 16-byte loads
    // of x's rows unless x is staged.
    let unaligned =
        |t: Option<&Tensor>| t.is_some_and(|t| !t.layout().start_offset().is_multiple_of(4));
    if format.is_some() && !staged && (unaligned(Some(&x)) || unaligned(aux.as_ref())) {
        return Ok(None);
    }
    let op = Gemv {
        w: w.clone(),
        format,
        cols,
        add,
        mode,
        aux,
        eps,
        staged,
        tee_out: tees.out.cloned(),
        tee_input: tees.input.cloned(),
    };
    Ok(Some(x.apply_op1_no_bwd(&op)?))
}
