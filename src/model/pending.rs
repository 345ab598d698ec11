//! A replayed decode step's captures, reduced off the caller's path: the
//! step's slabs are copied to the host as the step ends (as before), and
//! their dozens of small reductions run on a pool thread, so the caller
//! samples and launches the next step meanwhile instead of after them.

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

/// A step's captures being reduced (see the module docs).
pub struct PendingCaptures {
    reduced: std::sync::mpsc::Receiver<Vec<Captured>>,
}

impl PendingCaptures {
    /// Copies `slabs` to the host (waiting for the step that wrote them)
    /// and starts reducing them on the pool.
    pub(super) fn take(
        slabs: &[(HookPoint, Tensor)],
        requests: &[CaptureRequest],
        n_layers: usize,
    ) -> Result<Self> {
        let host = host_slabs(slabs)?;
        let requests = requests.to_vec();
        let (send, reduced) = std::sync::mpsc::sync_channel(1);
        rayon::spawn(move || {
            // The receiver may be gone (a caller that dropped the step).
            let _ = send.send(reduce_slabs(&host, &requests, n_layers));
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
