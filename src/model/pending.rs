//! A replayed decode step's captures: where the step keeps them (one device
//! buffer), and their reduction off the caller's path. On a GPU the buffer
//! is snapshotted on the device behind the step (a few microseconds), and a
//! pool thread copies the snapshot to the host on a stream of its own while
//! the caller samples and the next step runs, then reduces it. Waiting for
//! the step, copying as it ended, then sampling with the GPU idle had cost
//! about 120 us of a ~1 ms step (run 20). Elsewhere the buffer is copied as
//! the step ends and only the reductions leave the caller.

use candle_core::{DType, Device, Tensor};

use super::hooks::{self, CaptureRequest, Captured, HookName, HookPoint};
use super::Result;

/// The hook points of a block, in the order a forward visits them.
pub(super) const POINTS: [HookPoint; 4] = [
    HookPoint::ResidPre,
    HookPoint::ResidMid,
    HookPoint::MlpPost,
    HookPoint::ResidPost,
];

/// A slab's dims: (layers, batch, tokens, width).
type SlabDims = (usize, usize, usize, usize);

/// One block's state in a slab: (batch, tokens, width).
type StateDims = (usize, usize, usize);

/// A static step's capture slabs, all views of one device buffer, so the
/// step's states reach the host in one copy (one wait) instead of one per
/// hook point. Block i's input is block i-1's output, so the residual
/// stream entering a block is kept only for block 0 and read from the
/// previous block's output row for the rest: a step with captures records
/// the same kernels as one without, less one copy per layer.
pub(super) struct SlabSet {
    buffer: Tensor,
    /// Per captured point: its view of `buffer`, and that view's start in it.
    parts: Vec<(HookPoint, Tensor, usize)>,
    /// The GPU's snapshots and their copy stream, made on first use.
    #[cfg(feature = "cuda")]
    lane: std::sync::OnceLock<Option<lane::CopyLane>>,
}

impl SlabSet {
    /// Slabs for every point some request of `capture` wants at some layer
    /// (and the block outputs, where only block inputs are wanted). None
    /// where nothing is captured.
    pub(super) fn new(
        capture: &[CaptureRequest],
        (n_layers, batch, d_model, d_ff): (usize, usize, usize, usize),
        dtype: DType,
        dev: &Device,
    ) -> Result<Option<Self>> {
        let wanted = |p: HookPoint| (0..n_layers).any(|l| capture.iter().any(|r| r.wants(l, p)));
        let shapes: Vec<(HookPoint, SlabDims)> = POINTS
            .into_iter()
            .filter(|&p| wanted(p) || (p == HookPoint::ResidPost && wanted(HookPoint::ResidPre)))
            .map(|p| match p {
                HookPoint::ResidPre => (p, (1, batch, 1, d_model)),
                HookPoint::MlpPost => (p, (n_layers, batch, 1, d_ff)),
                _ => (p, (n_layers, batch, 1, d_model)),
            })
            .collect();
        if shapes.is_empty() {
            return Ok(None);
        }
        let size = |(l, b, t, w): SlabDims| l * b * t * w;
        let total = shapes.iter().map(|&(_, d)| size(d)).sum::<usize>();
        let buffer = Tensor::zeros(total, dtype, dev)?;
        let mut start = 0;
        let mut parts = Vec::with_capacity(shapes.len());
        for (point, dims) in shapes {
            let view = buffer.narrow(0, start, size(dims))?.reshape(dims)?;
            parts.push((point, view, start));
            start += size(dims);
        }
        Ok(Some(Self {
            buffer,
            parts,
            #[cfg(feature = "cuda")]
            lane: std::sync::OnceLock::new(),
        }))
    }

    /// The slab row a kernel may write block `layer`'s state at `point`
    /// into itself. None for block inputs after the first: the previous
    /// block's output row holds them.
    pub(super) fn row(&self, layer: usize, point: HookPoint) -> Option<Tensor> {
        if point == HookPoint::ResidPre && layer > 0 {
            return None;
        }
        let (_, slab, _) = self.parts.iter().find(|(p, ..)| *p == point)?;
        slab.get(layer).ok()
    }

    /// Copies a state into its slab row, where the set keeps one for it.
    pub(super) fn record(&self, layer: usize, point: HookPoint, x: &Tensor) -> Result<()> {
        if let Some(row) = self.row(layer, point) {
            row.slice_set(x, 0, 0)?;
        }
        Ok(())
    }

    /// The whole buffer on the host as f32, in one copy (which waits for
    /// the step that wrote it).
    pub(super) fn to_host(&self) -> Result<HostSlabs> {
        let values = self.buffer.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        Ok(HostSlabs {
            values,
            parts: self.host_parts()?,
        })
    }

    /// Where each point's slab starts in the buffer, and its dims.
    fn host_parts(&self) -> Result<Vec<(HookPoint, usize, SlabDims)>> {
        self.parts
            .iter()
            .map(|(p, slab, start)| Ok((*p, *start, slab.dims4()?)))
            .collect()
    }
}

/// A step's slabs on the host: the buffer's values and, per point, where
/// its slab starts and its dims.
pub(super) struct HostSlabs {
    values: Vec<f32>,
    parts: Vec<(HookPoint, usize, SlabDims)>,
}

impl HostSlabs {
    /// Block `layer`'s state at `point`, (batch, tokens, width) values.
    fn state(&self, layer: usize, point: HookPoint) -> Option<(&[f32], StateDims)> {
        let (point, layer) = match point {
            HookPoint::ResidPre if layer > 0 => (HookPoint::ResidPost, layer - 1),
            p => (p, layer),
        };
        let &(_, start, (_, b, t, w)) = self.parts.iter().find(|(p, ..)| *p == point)?;
        let size = b * t * w;
        let from = start + layer * size;
        Some((self.values.get(from..from + size)?, (b, t, w)))
    }
}

/// A step's captures being reduced (see the module docs).
pub struct PendingCaptures {
    reduced: std::sync::mpsc::Receiver<Result<Vec<Captured>>>,
}

impl PendingCaptures {
    /// Copies `slabs` to the host (waiting for the step that wrote them)
    /// and starts reducing them on the pool.
    pub(super) fn take(
        slabs: &SlabSet,
        requests: &[CaptureRequest],
        n_layers: usize,
    ) -> Result<Self> {
        #[cfg(feature = "cuda")]
        if let Some(lane) = slabs
            .lane
            .get_or_init(|| lane::CopyLane::new(&slabs.buffer))
        {
            return lane.take(slabs, requests, n_layers);
        }
        let began = std::time::Instant::now();
        let host = slabs.to_host()?;
        let copied = began.elapsed();
        let requests = requests.to_vec();
        let (send, reduced) = std::sync::mpsc::sync_channel(1);
        rayon::spawn(move || {
            let queued = began.elapsed();
            let out = reduce_slabs(&host, &requests, n_layers);
            tracing::trace!(
                copy_us = copied.as_micros() as u64,
                start_us = (queued - copied).as_micros() as u64,
                reduce_us = (began.elapsed() - queued).as_micros() as u64,
                "a step's captures copied and reduced"
            );
            // The receiver may be gone (a caller that dropped the step).
            let _ = send.send(Ok(out));
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

/// A step's snapshots on the GPU and their copies to the host (see the
/// module docs).
#[cfg(feature = "cuda")]
mod lane {
    use std::sync::{Arc, Mutex};

    use candle_core::cuda::cudarc::driver::{
        sys::CUevent_flags, CudaSlice, CudaStream, CudaView, PinnedHostSlice,
    };
    use candle_core::{DType, Storage, Tensor};

    use super::{reduce_slabs, CaptureRequest, HostSlabs, PendingCaptures, Result, SlabSet};
    use crate::model::ModelError;

    /// A snapshot of the buffer on the device and the pinned host memory
    /// it is copied into, as bytes (the buffer's own dtype).
    struct Snapshot {
        device: CudaSlice<u8>,
        host: PinnedHostSlice<u8>,
    }

    /// The stream the snapshots are copied on, and the snapshots no step
    /// holds: a snapshot returns once its copy is read, so a step never
    /// writes into one a copy still reads.
    pub(super) struct CopyLane {
        copy: Arc<CudaStream>,
        free: Arc<Mutex<Vec<Snapshot>>>,
    }

    /// The first `len` bytes of a buffer's storage, as a device view.
    fn bytes(
        storage: &candle_core::CudaStorage,
        dtype: DType,
        len: usize,
    ) -> Result<CudaView<'_, u8>> {
        // SAFETY: a view of the same allocation, `len` bytes within it.
        let view = unsafe {
            match dtype {
                DType::F32 => storage.as_cuda_slice::<f32>()?.transmute::<u8>(len),
                DType::BF16 => storage.as_cuda_slice::<half::bf16>()?.transmute::<u8>(len),
                DType::F16 => storage.as_cuda_slice::<half::f16>()?.transmute::<u8>(len),
                _ => None,
            }
        };
        view.ok_or_else(|| ModelError::Invalid("a capture buffer of an unexpected dtype".into()))
    }

    impl CopyLane {
        /// A lane for `buffer` where it lives on a GPU (and
        /// `MWTOP_CAPTURE_COPY` is not `sync`, which copies as the step ends
        /// instead, to measure this).
        pub(super) fn new(buffer: &Tensor) -> Option<Self> {
            if std::env::var("MWTOP_CAPTURE_COPY").as_deref() == Ok("sync") {
                return None;
            }
            let dev = buffer.device().as_cuda_device().ok()?;
            if !matches!(buffer.dtype(), DType::F32 | DType::BF16 | DType::F16) {
                return None;
            }
            // mwtop turns cudarc's event tracking off (one stream per
            // device), so a second stream adds no per-buffer events; the
            // lane orders its copies itself, by an event per step.
            let copy = dev.cuda_stream().context().new_stream().ok()?;
            Some(Self {
                copy,
                free: Arc::default(),
            })
        }

        /// Snapshots the buffer behind the step on the caller's stream and
        /// starts copying and reducing the snapshot on the pool.
        pub(super) fn take(
            &self,
            slabs: &SlabSet,
            requests: &[CaptureRequest],
            n_layers: usize,
        ) -> Result<PendingCaptures> {
            let wrap = candle_core::Error::wrap;
            let dtype = slabs.buffer.dtype();
            let n_bytes = slabs.buffer.elem_count() * dtype.size_in_bytes();
            let (storage, layout) = slabs.buffer.storage_and_layout();
            let Storage::Cuda(storage) = &*storage else {
                return Err(ModelError::Invalid(
                    "a GPU capture buffer not on the GPU".into(),
                ));
            };
            // The caller's stream: the step's, whose work it orders after.
            let main = storage.device.cuda_stream();
            let reuse = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let mut snap = match reuse {
                Some(s) if s.device.len() == n_bytes => s,
                _ => Snapshot {
                    device: main.alloc_zeros::<u8>(n_bytes).map_err(wrap)?,
                    // SAFETY: the host side is written by its copy before it
                    // is read. Plain pinned memory: the host reads it.
                    host: unsafe { main.context().alloc_pinned_with_flags::<u8>(n_bytes, 0) }
                        .map_err(wrap)?,
                },
            };
            let start = layout.start_offset() * dtype.size_in_bytes();
            let source = bytes(storage, dtype, start + n_bytes)?;
            main.memcpy_dtod(&source.slice(start..), &mut snap.device)
                .map_err(wrap)?;
            let snapped = main
                .record_event(Some(CUevent_flags::CU_EVENT_DISABLE_TIMING))
                .map_err(wrap)?;
            let (copy, free) = (self.copy.clone(), self.free.clone());
            let parts = slabs.host_parts()?;
            let requests = requests.to_vec();
            let (send, reduced) = std::sync::mpsc::sync_channel(1);
            rayon::spawn(move || {
                let host = (|| -> Result<HostSlabs> {
                    copy.wait(&snapped).map_err(wrap)?;
                    copy.memcpy_dtoh(&snap.device, &mut snap.host)
                        .map_err(wrap)?;
                    copy.synchronize().map_err(wrap)?;
                    let raw = snap.host.as_slice().map_err(wrap)?;
                    Ok(HostSlabs {
                        values: host_values(raw, dtype),
                        parts,
                    })
                })();
                free.lock().unwrap_or_else(|e| e.into_inner()).push(snap);
                // The receiver may be gone (a caller that dropped the step).
                let _ = send.send(host.map(|h| reduce_slabs(&h, &requests, n_layers)));
            });
            Ok(PendingCaptures { reduced })
        }
    }

    /// The snapshot's bytes (the buffer's dtype) as f32 values.
    fn host_values(raw: &[u8], dtype: DType) -> Vec<f32> {
        match dtype {
            DType::BF16 => raw
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            DType::F16 => raw
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            _ => raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        }
    }
}

/// Every (layer, point, request) of `requests` over the host copy of a
/// step's slabs, in the order an eager forward takes them, reduced in
/// parallel: dozens of small reductions per token.
pub(super) fn reduce_slabs(
    host: &HostSlabs,
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
            let (values, dims) = host.state(layer, point).expect("a wanted point has a slab");
            hooks::reduce_host(HookName::new(layer, point), req.reduction, values, dims)
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
