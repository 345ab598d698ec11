//! A replayed decode step's captures, reduced off the caller's path. On a
//! GPU the step's slabs are copied into pinned host buffers by copies
//! queued on the step's stream behind it, so no one waits for them; a pool
//! thread waits for the copies, then runs the dozens of small reductions,
//! while the caller samples and launches the next step. Elsewhere the slabs
//! are copied as the step ends and only the reductions leave the caller.

#[cfg(feature = "cuda")]
use std::sync::{Arc, Mutex};

use candle_core::{DType, Tensor};

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
pub(super) type HostSlab = (HookPoint, Vec<f32>, (usize, usize, usize, usize));

/// A slab's dims: (layers, batch, tokens, width).
type SlabDims = (usize, usize, usize, usize);

/// A step's captures being reduced (see the module docs).
pub struct PendingCaptures {
    reduced: std::sync::mpsc::Receiver<Result<Vec<Captured>>>,
}

/// Pinned host buffers for the slabs' copies, one set per step in flight:
/// a set goes back to the pool once its step's captures are reduced, so a
/// step never copies into buffers a reduction still reads.
#[derive(Default, Clone)]
pub(super) struct PinnedSets {
    #[cfg(feature = "cuda")]
    free: Arc<Mutex<Vec<Vec<candle_core::cuda::cudarc::driver::PinnedHostSlice<f32>>>>>,
}

impl PendingCaptures {
    /// Starts reducing `slabs` on the pool: from pinned buffers filled by
    /// copies queued behind the step where the slabs are f32 on a GPU,
    /// else from host copies made now (waiting for the step).
    pub(super) fn take(
        slabs: &[(HookPoint, Tensor)],
        requests: &[CaptureRequest],
        n_layers: usize,
        pinned: &PinnedSets,
    ) -> Result<Self> {
        let requests = requests.to_vec();
        let (send, reduced) = std::sync::mpsc::sync_channel(1);
        #[cfg(feature = "cuda")]
        if let Some(queued) = pinned.queue_copies(slabs)? {
            let free = pinned.free.clone();
            rayon::spawn(move || {
                let out = read_pinned(&queued).map(|host| reduce_slabs(&host, &requests, n_layers));
                free.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(queued.set);
                // The receiver may be gone (a caller that dropped the step).
                let _ = send.send(out);
            });
            return Ok(Self { reduced });
        }
        #[cfg(not(feature = "cuda"))]
        let _ = pinned;
        let host = host_slabs(slabs)?;
        rayon::spawn(move || {
            let views: Vec<_> = host
                .iter()
                .map(|(p, v, d)| (*p, v.as_slice(), *d))
                .collect();
            let _ = send.send(Ok(reduce_slabs(&views, &requests, n_layers)));
        });
        Ok(Self { reduced })
    }

    /// The step's captures, reduced in the order an eager forward takes them.
    pub fn wait(self) -> Result<Vec<Captured>> {
        self.reduced.recv().map_err(|_| {
            super::ModelError::Invalid("a decode step's capture reduction stopped".into())
        })?
    }
}

/// A set of pinned buffers with its slabs' copies queued, and the slabs'
/// points and dims.
#[cfg(feature = "cuda")]
struct QueuedSet {
    set: Vec<candle_core::cuda::cudarc::driver::PinnedHostSlice<f32>>,
    dims: Vec<(HookPoint, SlabDims)>,
    /// Recorded on the stream after the copies: the buffers hold the step's
    /// states once it completes. (The buffers' own events are recorded only
    /// where cudarc manages synchronization across streams, which candle's
    /// single stream turns off.)
    copied: candle_core::cuda::cudarc::driver::CudaEvent,
}

#[cfg(feature = "cuda")]
impl PinnedSets {
    /// Queues each slab's copy into a free set of pinned buffers (or a new
    /// one) on the slabs' stream. None where a slab is not f32 and
    /// contiguous on a GPU.
    fn queue_copies(&self, slabs: &[(HookPoint, Tensor)]) -> Result<Option<QueuedSet>> {
        use candle_core::Storage;
        // `MWTOP_CAPTURE_PINNED=0`: copy as the step ends instead (to
        // measure the queued copies; the captures are the same).
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        if !*ON.get_or_init(|| std::env::var("MWTOP_CAPTURE_PINNED").as_deref() != Ok("0")) {
            return Ok(None);
        }
        let Some(dev) = slabs
            .first()
            .and_then(|(_, s)| s.device().as_cuda_device().ok())
        else {
            return Ok(None);
        };
        let fits = |t: &Tensor| {
            t.dtype() == DType::F32
                && t.is_contiguous()
                && t.device().same_device(slabs[0].1.device())
        };
        if !slabs.iter().all(|(_, s)| fits(s)) {
            return Ok(None);
        }
        let stream = dev.cuda_stream();
        let reuse = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut set = match reuse {
            Some(set)
                if set.len() == slabs.len()
                    && set
                        .iter()
                        .zip(slabs)
                        .all(|(b, (_, s))| b.len() == s.elem_count()) =>
            {
                set
            }
            _ => slabs
                .iter()
                .map(|(_, s)| {
                    // SAFETY: each buffer is written by its copy before it is read
                    // (`read_pinned` waits for the copy's event). Plain pinned
                    // memory, not write-combined: the host reads it.
                    unsafe {
                        stream
                            .context()
                            .alloc_pinned_with_flags::<f32>(s.elem_count(), 0)
                    }
                    .map_err(candle_core::Error::wrap)
                })
                .collect::<candle_core::Result<Vec<_>>>()?,
        };
        let mut dims = Vec::with_capacity(slabs.len());
        for ((point, slab), buf) in slabs.iter().zip(set.iter_mut()) {
            let (storage, layout) = slab.storage_and_layout();
            let Storage::Cuda(c) = &*storage else {
                return Ok(None);
            };
            let Some((a, b)) = layout.contiguous_offsets() else {
                return Ok(None);
            };
            let view = c.as_cuda_slice::<f32>()?.slice(a..b);
            // Queued behind the step on its stream; the buffer's event marks
            // the copy's end.
            stream
                .memcpy_dtoh(&view, buf)
                .map_err(candle_core::Error::wrap)?;
            dims.push((*point, slab.dims4()?));
        }
        let copied = stream
            .record_event(Some(
                candle_core::cuda::cudarc::driver::sys::CUevent_flags::CU_EVENT_BLOCKING_SYNC,
            ))
            .map_err(candle_core::Error::wrap)?;
        Ok(Some(QueuedSet { set, dims, copied }))
    }
}

/// The pinned buffers as host slabs, once their copies are done.
#[cfg(feature = "cuda")]
fn read_pinned(queued: &QueuedSet) -> Result<Vec<(HookPoint, &[f32], SlabDims)>> {
    if let Some(buf) = queued.set.first() {
        buf.context()
            .bind_to_thread()
            .map_err(candle_core::Error::wrap)?;
    }
    queued
        .copied
        .synchronize()
        .map_err(candle_core::Error::wrap)?;
    queued
        .set
        .iter()
        .zip(&queued.dims)
        .map(|(buf, (point, d))| {
            let values = buf.as_slice().map_err(candle_core::Error::wrap)?;
            Ok((*point, values, *d))
        })
        .collect()
}

/// Each slab copied to the host as f32: one copy per hook point, each
/// layer's state a slice of it.
pub(super) fn host_slabs(slabs: &[(HookPoint, Tensor)]) -> Result<Vec<HostSlab>> {
    slabs
        .iter()
        .map(|(point, slab)| {
            let dims = slab.dims4()?;
            let values = slab.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            Ok((*point, values, dims))
        })
        .collect()
}

/// Every (layer, point, request) of `requests` over the host copies of a
/// step's slabs, in the order an eager forward takes them, reduced in
/// parallel: dozens of small reductions per token.
pub(super) fn reduce_slabs(
    host: &[(HookPoint, &[f32], SlabDims)],
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

    /// Deferred captures of replayed steps, each reduced only after the
    /// next step ran (and overwrote the slabs), equal the captures read at
    /// once.
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
