//! A replayed decode step's captures, read later: a copy of the step's
//! slabs taken on the device right after it, which the host copies and
//! reduces while the GPU runs the next step (read at once, the host's copy
//! and dozens of reductions per token stall the GPU between steps).

use candle_core::{DType, Tensor};

#[cfg(feature = "cuda")]
use candle_core::cuda::WrapErr;

use super::hooks::{self, CaptureRequest, Captured, HookName, HookPoint};
use super::Result;

/// The hook points of a block, in the order a forward visits them.
pub(super) const POINTS: [HookPoint; 4] = [
    HookPoint::ResidPre,
    HookPoint::ResidMid,
    HookPoint::MlpPost,
    HookPoint::ResidPost,
];

/// One hook point's states on the host: (point, values, (layers, batch, tokens, width)).
type HostSlab = (HookPoint, Vec<f32>, (usize, usize, usize, usize));

/// A step's captures still on the device (see the module docs).
pub struct PendingCaptures {
    /// Per hook point: an f32 copy of its (layers, batch, 1, width) slab.
    slabs: Vec<(HookPoint, Tensor)>,
    requests: Vec<CaptureRequest>,
    n_layers: usize,
    /// On a GPU: the event after the copies, and the stream that reads
    /// them (not the compute stream, which is busy with the next step).
    #[cfg(feature = "cuda")]
    reader: Option<(
        candle_core::cuda::cudarc::driver::CudaEvent,
        std::sync::Arc<candle_core::cuda::cudarc::driver::CudaStream>,
    )>,
}

impl PendingCaptures {
    /// Copies `slabs` on their device (queued after the step that wrote
    /// them); `reader` is the stream that will copy them to the host.
    pub(super) fn take(
        slabs: &[(HookPoint, Tensor)],
        requests: &[CaptureRequest],
        n_layers: usize,
        #[cfg(feature = "cuda")] reader: Option<
            &std::sync::Arc<candle_core::cuda::cudarc::driver::CudaStream>,
        >,
    ) -> Result<Self> {
        let slabs = slabs
            .iter()
            .map(|(point, slab)| {
                // A fresh buffer: the next step writes the slab itself.
                let copy = if slab.dtype() == DType::F32 {
                    slab.copy()?
                } else {
                    slab.to_dtype(DType::F32)?
                };
                Ok((*point, copy))
            })
            .collect::<Result<Vec<_>>>()?;
        #[cfg(feature = "cuda")]
        let reader = match (slabs.first().map(|(_, s)| s.device()), reader) {
            (Some(candle_core::Device::Cuda(dev)), Some(stream)) => {
                let event = dev.cuda_stream().record_event(None).w()?;
                Some((event, stream.clone()))
            }
            _ => None,
        };
        Ok(Self {
            slabs,
            requests: requests.to_vec(),
            n_layers,
            #[cfg(feature = "cuda")]
            reader,
        })
    }

    /// The step's captures, reduced on the host in the order an eager
    /// forward takes them; waits only for the copies of this step.
    pub fn wait(self) -> Result<Vec<Captured>> {
        let host = self
            .slabs
            .iter()
            .map(|(point, slab)| Ok((*point, self.read(slab)?, slab.dims4()?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(reduce_slabs(&host, &self.requests, self.n_layers))
    }

    /// One f32 slab copied to the host.
    fn read(&self, slab: &Tensor) -> Result<Vec<f32>> {
        #[cfg(feature = "cuda")]
        if let Some((event, stream)) = &self.reader {
            stream.wait(event).w()?;
            let (storage, layout) = slab.storage_and_layout();
            let candle_core::Storage::Cuda(s) = &*storage else {
                return Err(
                    candle_core::Error::Msg("a pending capture left the GPU".into()).into(),
                );
            };
            let start = layout.start_offset();
            let view = s
                .as_cuda_slice::<f32>()?
                .slice(start..start + slab.elem_count());
            let mut host = vec![0f32; slab.elem_count()];
            stream.memcpy_dtoh(&view, &mut host).w()?;
            stream.synchronize().w()?;
            return Ok(host);
        }
        Ok(slab.flatten_all()?.to_vec1::<f32>()?)
    }
}

/// Every (layer, point, request) of `requests` over the host copies of a
/// step's slabs, in the order an eager forward takes them, reduced in
/// parallel: dozens of small reductions per token.
pub(super) fn reduce_slabs(
    host: &[HostSlab],
    requests: &[CaptureRequest],
    n_layers: usize,
) -> Vec<Captured> {
    let jobs: Vec<(usize, HookPoint, &CaptureRequest)> = (0..n_layers)
        .flat_map(|layer| POINTS.into_iter().map(move |point| (layer, point)))
        .flat_map(|(layer, point)| {
            requests
                .iter()
                .filter(move |r| r.wants(layer, point))
                .map(move |r| (layer, point, r))
        })
        .collect();
    use rayon::prelude::*;
    jobs.into_par_iter()
        .map(|(layer, point, req)| {
            let (_, values, (_, b, t, d)) = host.iter().find(|(p, ..)| *p == point).expect("slab");
            let size = b * t * d;
            hooks::reduce_host(
                HookName::new(layer, point),
                req.reduction,
                &values[layer * size..(layer + 1) * size],
                (*b, *t, *d),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use crate::checkpoint::Checkpoint;
    use crate::model::hooks::{CaptureRequest, HookPoint, Reduction};
    use crate::model::{LogitsMode, Model, RunOptions, StepCaptures};
    use crate::synthetic::Spec;

    /// Deferred captures of replayed steps, each read only after the next
    /// step ran (and overwrote the slabs), equal the captures read at once.
    #[test]
    fn deferred_step_captures_equal_those_read_at_once() {
        let dir = tempfile::tempdir().unwrap();
        Spec::planted()
            .write_hf_dir(dir.path(), safetensors::Dtype::F32)
            .unwrap();
        let ckpt = Checkpoint::open_path(dir.path()).unwrap();
        let model = Model::load(&ckpt, &Device::Cpu, DType::F32, |_, _| {}).unwrap();
        let run = |defer: bool| {
            let opts = RunOptions {
                capture: vec![
                    CaptureRequest::every_layer(HookPoint::ResidPost, Reduction::TopK(4)),
                    CaptureRequest::every_layer(HookPoint::MlpPost, Reduction::Position(0)),
                ],
                logits: LogitsMode::Last,
                defer_captures: defer,
                ..Default::default()
            };
            let mut cache = model.new_cache();
            cache.force_static = true;
            let prompt = vec![256u32, 72, 101, 108];
            let mut out = model.forward(&[prompt], Some(&mut cache), &opts).unwrap();
            let mut steps = Vec::new();
            let mut pending: Option<StepCaptures> = None;
            for _ in 0..6 {
                let id = out
                    .logits
                    .as_ref()
                    .unwrap()
                    .squeeze(1)
                    .unwrap()
                    .argmax(1)
                    .unwrap();
                let id = id.to_vec1::<u32>().unwrap()[0];
                out = model.forward(&[vec![id]], Some(&mut cache), &opts).unwrap();
                if let Some(p) = pending.take() {
                    steps.push(p.wait().unwrap());
                }
                let now = out.take_captures();
                assert_eq!(matches!(now, StepCaptures::Pending(_)), defer);
                pending = Some(now);
            }
            steps.push(pending.unwrap().wait().unwrap());
            steps
        };
        let (at_once, deferred) = (run(false), run(true));
        assert_eq!(at_once.len(), 6);
        for (a, d) in at_once.iter().zip(&deferred) {
            assert_eq!(a.len(), 2 * Spec::planted().n_layers);
            for (x, y) in a.iter().zip(d) {
                assert_eq!(
                    (x.hook, &x.values, &x.indices),
                    (y.hook, &y.values, &y.indices)
                );
            }
        }
        // Consecutive steps' states differ, so a slab read after the next
        // step could not pass for its own step's.
        assert_ne!(at_once[0][0].values, at_once[1][0].values);
    }
}
