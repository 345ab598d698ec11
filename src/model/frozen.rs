//! x W^T for a frozen W inside a differentiable forward. candle's matmul
//! backward computes the gradient of both factors, so a frozen weight
//! would still cost a second matmul (and a weight-sized gradient) per
//! projection per step; this op's backward computes only d/dx = g W.

use candle_core::backend::BackendStorage;
use candle_core::op::BackpropOp;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Storage, Tensor};

use super::Result;

struct FrozenMatmul {
    /// (out, in).
    weight: Tensor,
}

impl FrozenMatmul {
    /// The input as a tensor (its storage shared by the copy `try_clone`
    /// makes), multiplied by W^T.
    fn product(&self, storage: Storage, layout: &Layout) -> candle_core::Result<Tensor> {
        let x = Tensor::from_storage(storage, layout.shape().clone(), BackpropOp::none(), false);
        x.matmul(&self.weight.t()?)
    }
}

/// The storage of a fresh, contiguous result.
fn own_storage<T>(
    y: &Tensor,
    take: impl FnOnce(&Storage, &Layout) -> candle_core::Result<T>,
) -> candle_core::Result<(T, Shape)> {
    let y = y.contiguous()?;
    let (storage, layout) = y.storage_and_layout();
    Ok((take(&storage, layout)?, layout.shape().clone()))
}

fn contiguous_only(layout: &Layout) -> candle_core::Result<()> {
    if layout.is_contiguous() && layout.start_offset() == 0 {
        Ok(())
    } else {
        Err(candle_core::Error::Msg(
            "frozen matmul: the input must be contiguous from offset 0".into(),
        ))
    }
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        contiguous_only(layout)?;
        let y = self.product(Storage::Cpu(storage.try_clone(layout)?), layout)?;
        own_storage(&y, |s, l| match s {
            Storage::Cpu(c) => c.try_clone(l),
            _ => Err(candle_core::Error::Msg(
                "frozen matmul: device mismatch".into(),
            )),
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        contiguous_only(layout)?;
        let y = self.product(Storage::Cuda(storage.try_clone(layout)?), layout)?;
        own_storage(&y, |s, l| match s {
            Storage::Cuda(c) => c.try_clone(l),
            _ => Err(candle_core::Error::Msg(
                "frozen matmul: device mismatch".into(),
            )),
        })
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.weight)?))
    }
}

/// x (n, in) times W^T (W (out, in), frozen): the differentiable product
/// whose backward reaches x only.
pub(super) fn frozen_matmul(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    if !x.track_op() {
        return Ok(x.matmul(&weight.t()?)?);
    }
    Ok(x.contiguous()?.apply_op1(FrozenMatmul {
        weight: weight.clone(),
    })?)
}
