//! A replayed decode step's captures: where the step keeps them (one device
//! buffer), and their reduction off the caller's path. The buffer is copied
//! to the host as the step ends, and its dozens of small reductions run on
//! a pool thread, so the caller samples and launches the next step
//! meanwhile instead of after them.

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
        Ok(Some(Self { buffer, parts }))
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
        let parts = self
            .parts
            .iter()
            .map(|(p, slab, start)| Ok((*p, *start, slab.dims4()?)))
            .collect::<Result<_>>()?;
        Ok(HostSlabs { values, parts })
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
    reduced: std::sync::mpsc::Receiver<Vec<Captured>>,
}

impl PendingCaptures {
    /// Copies `slabs` to the host (waiting for the step that wrote them)
    /// and starts reducing them on the pool.
    pub(super) fn take(
        slabs: &SlabSet,
        requests: &[CaptureRequest],
        n_layers: usize,
    ) -> Result<Self> {
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
            let _ = send.send(out);
        });
        Ok(Self { reduced })
    }

    /// The step's captures, reduced in the order an eager forward takes them.
    pub fn wait(self) -> Result<Vec<Captured>> {
        self.reduced.recv().map_err(|_| {
            super::ModelError::Invalid("a decode step's capture reduction stopped".into())
        })
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
