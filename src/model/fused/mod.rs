//! Fused ops where candle would run several memory-bound kernels in a
//! row, and backwards for the fused ops candle has none for.
//!
//! Inference (CUDA kernels): the attention mask's add and the softmax (one
//! read of the scores instead of three passes), the gated MLP's activation
//! and product (one read of gate and up), and a decode step's own kernels:
//! the GEMV that norms, gates, adds and tees as it multiplies
//! ([`gemv`], also over GGUF blocks), and one attention kernel with RoPE and
//! the cache store ([`decode_attention`]); GGUF blocks dequantized for a
//! prompt's product ([`dequantize`]). Training (custom ops with a written-out
//! backward, on every device): the softmax with its mask, RMSNorm; RoPE's
//! is in [`super::rope`]. Each computes in f32 what the composed candle ops
//! compute, with the same formulas, so the numbers agree to the last bits
//! or within f32 rounding of a sum's order; where a kernel cannot run (the
//! CPU, other dtypes, NVRTC missing) candle's ops run instead.

use candle_core::backend::BackendStorage;
use candle_core::{DType, Tensor};

use super::family::Activation;
use super::matrix::{Blocks, Matrix};
use super::Result;

/// softmax(scores + mask) over the last dim. `scores` is (b, heads, t,
/// keys) viewed as (b, kv_heads, rep * t, keys); `mask` is (t, keys) or
/// (b, 1, 1, t, keys), additive.
pub(super) fn masked_softmax(scores: &Tensor, mask: &Tensor, t: usize) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if let Some(y) = cuda::masked_softmax(scores, mask, t)? {
        return Ok(y);
    }
    let (b, kv, rows, keys) = scores.dims4()?;
    let masked = scores
        .reshape((b, kv, rows / t, t, keys))?
        .broadcast_add(mask)?
        .reshape((b, kv, rows, keys))?;
    Ok(candle_nn::ops::softmax_last_dim(&masked)?)
}

/// softmax(scores [+ mask]) over the last dim with a backward, for
/// training: candle's composed softmax runs five kernels forward and more
/// backward over the (b, heads, t, keys) scores, the largest tensors of a
/// training step; this runs one each way on a GPU (the mask's add fused,
/// dx = y (g - sum(g y)) in one pass), the same formulas on the CPU.
/// Shapes as [`masked_softmax`].
pub(super) fn softmax_with_grad(
    scores: &Tensor,
    mask: Option<&Tensor>,
    t: usize,
) -> Result<Tensor> {
    let (b, kv, rows, _) = scores.dims4()?;
    let op = SoftmaxGrad {
        mask: mask.map(Tensor::contiguous).transpose()?,
        t,
        heads: kv * (rows / t),
        batch: b,
    };
    Ok(scores.contiguous()?.apply_op1(op)?)
}

/// The softmax of [`softmax_with_grad`]; the mask is a constant.
struct SoftmaxGrad {
    mask: Option<Tensor>,
    t: usize,
    /// Query heads (kv_heads * rep): rows of one batch entry are heads * t.
    heads: usize,
    batch: usize,
}

impl SoftmaxGrad {
    /// The composed forward on a tensor: what the CPU runs.
    fn composed(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = match &self.mask {
            Some(m) => {
                let keys = x.dim(candle_core::D::Minus1)?;
                let shape = x.shape().clone();
                x.reshape((self.batch, self.heads, self.t, keys))?
                    .broadcast_add(&m.reshape(((), 1, self.t, keys))?)?
                    .reshape(shape)?
            }
            None => x.clone(),
        };
        candle_nn::ops::softmax_last_dim(&x)
    }
}

impl candle_core::CustomOp1 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "mwtop-softmax-with-grad"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        cpu_through(storage, layout, |x| self.composed(x))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
        if storage.dtype() != DType::F32 || !cuda::available() {
            return cuda_through(storage, layout, |x| self.composed(x));
        }
        let held = self
            .mask
            .as_ref()
            .map(|m| (m.storage_and_layout(), m.rank() == 5));
        let mask = match &held {
            Some(((st, l), batched)) => match &**st {
                candle_core::Storage::Cuda(c) => Some((c, *l, *batched)),
                _ => candle_core::bail!("softmax: the mask is on another device"),
            },
            None => None,
        };
        cuda::softmax_storage(storage, layout, mask, self.t, self.heads)
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        #[cfg(feature = "cuda")]
        if let Some(dx) = cuda::softmax_backward(res, grad)? {
            return Ok(Some(dx));
        }
        let dot = (grad * res)?.sum_keepdim(candle_core::D::Minus1)?;
        Ok(Some((res * grad.broadcast_sub(&dot)?)?))
    }
}

/// RMSNorm with a stored (frozen) weight and a backward, for training:
/// candle's fused kernel forward (its own op has no backward; the composed
/// `rms_norm_slow` runs seven kernels forward and more backward), and
/// dx = g w r - x r^3 sum(g w x) / d, r = 1 / sqrt(mean(x^2) + eps), in one
/// kernel on a GPU.
pub(super) fn rms_norm_with_grad(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    let x = x.contiguous()?;
    if !x.track_op() {
        return Ok(rms_forward(&x, w, eps)?);
    }
    Ok(x.apply_op1(RmsNormGrad {
        w: w.contiguous()?,
        eps,
    })?)
}

/// candle's fused RMSNorm, composed for f64 (gradient checks), which its
/// kernel does not take.
fn rms_forward(x: &Tensor, w: &Tensor, eps: f32) -> candle_core::Result<Tensor> {
    match x.dtype() {
        DType::F64 => candle_nn::ops::rms_norm_slow(x, w, eps),
        _ => candle_nn::ops::rms_norm(x, w, eps),
    }
}

struct RmsNormGrad {
    w: Tensor,
    eps: f32,
}

impl candle_core::CustomOp1 for RmsNormGrad {
    fn name(&self) -> &'static str {
        "mwtop-rms-norm-with-grad"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        cpu_through(storage, layout, |x| rms_forward(x, &self.w, self.eps))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
        cuda_through(storage, layout, |x| rms_forward(x, &self.w, self.eps))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        #[cfg(feature = "cuda")]
        if let Some(dx) = cuda::rms_norm_backward(x, &self.w, g, self.eps)? {
            return Ok(Some(dx));
        }
        let d = x.dim(candle_core::D::Minus1)? as f64;
        let r = x
            .sqr()?
            .sum_keepdim(candle_core::D::Minus1)?
            .affine(1.0 / d, self.eps as f64)?
            .sqrt()?
            .recip()?;
        let gw = g.broadcast_mul(&self.w)?;
        let dot = (&gw * x)?.sum_keepdim(candle_core::D::Minus1)?;
        let k3 = (r.powf(3.0)? * dot)?.affine(1.0 / d, 0.0)?;
        Ok(Some((gw.broadcast_mul(&r)? - x.broadcast_mul(&k3)?)?))
    }
}

/// A custom op's CPU forward by candle's ops on the tensor its input holds
/// (a copy): how an op with a hand-written backward reuses candle's
/// forward.
pub(super) fn cpu_through(
    storage: &candle_core::CpuStorage,
    layout: &candle_core::Layout,
    f: impl FnOnce(&Tensor) -> candle_core::Result<Tensor>,
) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
    let x = Tensor::from_storage(
        candle_core::Storage::Cpu(storage.try_clone(layout)?),
        layout.shape().clone(),
        candle_core::op::BackpropOp::none(),
        false,
    );
    let y = f(&x)?.contiguous()?;
    let (st, l) = y.storage_and_layout();
    match &*st {
        candle_core::Storage::Cpu(c) => Ok((c.try_clone(l)?, l.shape().clone())),
        _ => candle_core::bail!("custom op: device mismatch"),
    }
}

/// [`cpu_through`] on a CUDA device.
#[cfg(feature = "cuda")]
pub(super) fn cuda_through(
    storage: &candle_core::CudaStorage,
    layout: &candle_core::Layout,
    f: impl FnOnce(&Tensor) -> candle_core::Result<Tensor>,
) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
    let x = Tensor::from_storage(
        candle_core::Storage::Cuda(storage.try_clone(layout)?),
        layout.shape().clone(),
        candle_core::op::BackpropOp::none(),
        false,
    );
    let y = f(&x)?.contiguous()?;
    let (st, l) = y.storage_and_layout();
    match &*st {
        candle_core::Storage::Cuda(c) => Ok((c.try_clone(l)?, l.shape().clone())),
        _ => candle_core::bail!("custom op: device mismatch"),
    }
}

/// act(gate) * up from one (b, t, 2 * d_ff) product holding gate, then up.
pub(super) fn gated(gate_up: &Tensor, d_ff: usize, act: Activation) -> Result<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    if let Some(y) = cuda::gated(gate_up, d_ff, act)? {
        return Ok(Some(y));
    }
    gated_cpu(gate_up, d_ff, act)
}

/// [`gated`] on the CPU for contiguous f32: one pass over the rows, split
/// over the pool. candle's composed ops take the gate's strided view one
/// element at a time on one thread, then multiply in another pass: on two
/// cores that serial pass was the largest part of a prompt's non-matmul
/// time. Each value is formed by candle's own formulas in the same order
/// (silu(g) = g / (1 + exp(-g)), then times up), so the bits are the same.
fn gated_cpu(gate_up: &Tensor, d_ff: usize, act: Activation) -> Result<Option<Tensor>> {
    use candle_core::{CpuStorage, Device, Storage};
    use rayon::prelude::*;
    if !matches!(gate_up.device(), Device::Cpu)
        || gate_up.dtype() != DType::F32
        || !gate_up.is_contiguous()
        || gate_up.dims().last() != Some(&(2 * d_ff))
        || d_ff == 0
    {
        return Ok(None);
    }
    let (storage, layout) = gate_up.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
        return Ok(None);
    };
    let rows = gate_up.elem_count() / (2 * d_ff);
    let src = &data[layout.start_offset()..layout.start_offset() + rows * 2 * d_ff];
    let mut out = vec![0f32; rows * d_ff];
    // candle's GELU (tanh) constant, as it writes it.
    #[allow(clippy::excessive_precision)]
    const SQRT_TWO_OVER_PI: f32 = 0.79788456080286535587989211986876373;
    out.par_chunks_mut(d_ff)
        .zip(src.par_chunks(2 * d_ff))
        .for_each(|(o, gu)| {
            let (g, u) = gu.split_at(d_ff);
            match act {
                Activation::Silu => {
                    for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                        *o = g / (1.0 + (-g).exp()) * u;
                    }
                }
                Activation::GeluTanh => {
                    for ((o, &v), &u) in o.iter_mut().zip(g).zip(u) {
                        let a = 0.5
                            * v
                            * (1.0 + f32::tanh(SQRT_TWO_OVER_PI * v * (1.0 + 0.044715 * v * v)));
                        *o = a * u;
                    }
                }
            }
        });
    drop(storage);
    let mut dims = gate_up.dims().to_vec();
    *dims.last_mut().expect("checked above") = d_ff;
    Ok(Some(Tensor::from_vec(out, dims, &Device::Cpu)?))
}

/// What a GPU GEMV multiplies W by, formed as it reads its input.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(super) enum GemvInput<'a> {
    /// x as it is.
    Plain(&'a Tensor),
    /// RMSNorm(x) times the norm's weight: the norm before a projection
    /// without a kernel (and a round trip of the normed rows) of its own.
    Normed {
        x: &'a Tensor,
        weight: &'a Tensor,
        eps: f32,
    },
    /// act(gate) * up, times the row's d_ff mask where one is given (rows,
    /// d_ff), from one (rows, 2 d_ff) product holding gate, then up: the
    /// gated MLP's product formed as the down projection reads it.
    Gated {
        gate_up: &'a Tensor,
        act: Activation,
        mask: Option<&'a Tensor>,
    },
}

impl GemvInput<'_> {
    /// The tensor the kernel reads.
    pub(super) fn x(&self) -> &Tensor {
        match self {
            Self::Plain(x) | Self::Normed { x, .. } => x,
            Self::Gated { gate_up, .. } => gate_up,
        }
    }
}

/// Device buffers a GPU GEMV also writes: `out` the product (as it is
/// returned), `input` the gated input it formed. A replayed decode step's
/// hook slabs and logits take their rows this way instead of a copy each.
#[derive(Default, Clone, Copy)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(super) struct Tees<'a> {
    pub out: Option<&'a Tensor>,
    pub input: Option<&'a Tensor>,
}

/// y = add + in(x) W^T for up to [`super::gemv::MAX_ROWS`] rows of x (a
/// token, or the A/B pair's two), W (out, in) f32, or held as bf16/f16 or
/// GGUF blocks (see [`super::WeightPrecision::Stored`]), and x f32, on a
/// GPU: one read of the matrix, each weight widened exactly to f32 (blocks
/// dequantized as [`dequantize`] does) and every dot product
/// summed in f32, each row in the same order as alone. Shape (rows of x,
/// out). `in` is the [`GemvInput`]; `add` (shaped like the product), when
/// given, is the residual stream's sum without a kernel of its own; `tees`
/// are written too. None where it does not apply (the CPU, more rows, a
/// gated input too large to stage, a tee it cannot write); the caller then
/// composes candle's ops.
pub(super) fn gemv(
    w: &Matrix,
    input: GemvInput<'_>,
    add: Option<&Tensor>,
    tees: Tees<'_>,
) -> Result<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    {
        cuda::gemv(w, input, add, tees)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (w, input, add, tees);
        Ok(None)
    }
}

/// GGUF blocks dequantized into an f32 (rows, cols) tensor on their GPU,
/// each value as candle's CPU dequantization computes it (the same
/// operations, rounded the same); None elsewhere (the caller converts on
/// the host).
pub(super) fn dequantize(blocks: &Blocks) -> Result<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    {
        cuda::dequantize(blocks)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = blocks;
        Ok(None)
    }
}

/// This token's key and value (rows, kv_heads, 1, head_dim), and the RoPE
/// tables (positions, head_dim / 2: scaled cos and sin for q, cos and sin
/// for k) a decode step's attention rotates q and k with.
#[derive(Clone, Copy)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(super) struct StepRope<'a> {
    pub k: &'a Tensor,
    pub v: &'a Tensor,
    pub tables: [&'a Tensor; 4],
}

/// One decode step's attention in one kernel, over the cache buffers
/// `k_cache` and `v_cache` (rows, kv_heads, capacity, head_dim) up to the
/// step's position `pos` (one u32 on the device), the last `window` keys of
/// them where the layer slides (the mask such a step would build, made by
/// the kernel as it reads the keys); scores capped as `cap * tanh(s)` when
/// the family caps (q carries 1 / cap). q is (rows, heads, 1, head_dim):
/// with `fresh`, as projected (q, k and v may be views of one product), the
/// kernel rotates q and k and stores k and v into the caches at `pos`
/// itself; without, q is rotated and the caches hold the token already.
/// Instead of two GEMMs and a softmax over the whole buffer (and RoPE and
/// the stores as kernels of their own): (rows, 1, heads * head_dim), or
/// None where it does not apply (the CPU; the caller composes candle's ops).
pub(super) fn decode_attention(
    q: &Tensor,
    fresh: Option<StepRope<'_>>,
    k_cache: &Tensor,
    v_cache: &Tensor,
    pos: &Tensor,
    window: Option<usize>,
    softcap: Option<f64>,
) -> Result<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    {
        cuda::decode_attention(q, fresh, k_cache, v_cache, pos, window, softcap)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (q, fresh, k_cache, v_cache, pos, window, softcap);
        Ok(None)
    }
}

/// RMSNorm over the last dim of f32 `x` times `w` on a GPU, with a block
/// per row; None elsewhere (the caller takes candle's).
pub(super) fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    {
        cuda::rms_norm(x, w, eps)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (x, w, eps);
        Ok(None)
    }
}

/// Compiles the kernels and loads them on `device` (a CUDA device; nothing
/// elsewhere), so that no later forward does it first, least of all one
/// being recorded as a CUDA graph.
pub(super) fn prepare(device: &candle_core::Device) -> Result<()> {
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(dev) = device {
        cuda::prepare(dev)?;
    }
    let _ = device;
    Ok(())
}

/// Whether the fused kernels may take this tensor (f32 on a CUDA device).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn eligible(x: &Tensor) -> bool {
    x.device().is_cuda() && x.dtype() == DType::F32
}

#[cfg(feature = "cuda")]
mod cuda;

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::{gated, Activation};

    /// The CPU's one-pass gated product equals candle's composed ops to the
    /// bit, for both activations.
    #[test]
    fn cpu_gated_product_equals_candles_composed_ops() {
        let (rows, d_ff) = (7, 33);
        let v: Vec<f32> = (0..rows * 2 * d_ff)
            .map(|i| ((i as f32) * 0.37).sin() * 6.0)
            .collect();
        let gate_up = Tensor::from_vec(v, (1, rows, 2 * d_ff), &Device::Cpu).unwrap();
        let gate = gate_up.narrow(2, 0, d_ff).unwrap();
        let up = gate_up.narrow(2, d_ff, d_ff).unwrap();
        for (act, composed) in [
            (Activation::Silu, gate.silu().unwrap()),
            (Activation::GeluTanh, gate.gelu().unwrap()),
        ] {
            let want = (composed * &up).unwrap();
            let got = gated(&gate_up, d_ff, act)
                .unwrap()
                .expect("applies on the CPU");
            assert_eq!(got.dims(), want.dims());
            let (a, b) = (
                got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
        }
    }
}
