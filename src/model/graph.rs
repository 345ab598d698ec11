//! One-token decode steps recorded once and replayed as a CUDA graph.
//!
//! A small model decodes one token in hundreds of kernels of a few
//! microseconds each; launched one by one from candle, the host took ~6 ms
//! per token while the GPU mostly waited. A step whose kernels read
//! everything that changes per token (token ids, position) from device
//! memory can be recorded once and replayed with one launch. So this step
//! differs from the eager one, exactly, in that the position lives in a
//! device buffer: on a GPU the attention kernel rotates q and k at it,
//! stores k and v there and reads the keys up to it (see
//! [`super::fused::decode_attention`]); elsewhere rotary tables are
//! gathered at it, keys and values scattered to it, and attention runs
//! over the whole cache buffer with a mask built from it (masked scores are
//! -inf, so their weights are exactly 0).
//!
//! Captures land in device slabs, written there by the kernels that form
//! the states where they can (else copied), copied to the host once per
//! step and reduced there by the same code as CPU captures.

use candle_core::{DType, Tensor};

use super::fused::StepRope;
use super::hooks::{CaptureRequest, Captured, HookPoint};
use super::intervention::Interventions;
use super::kv::{Cache, LayerKv};
use super::pending::{reduce_slabs, PendingCaptures, SlabSet};
use super::plan::Plan;
#[cfg(feature = "cuda")]
use super::ModelError;
use super::{ForwardOutput, LogitsMode, Model, Result, RunOptions};

/// What a recorded step was recorded for; any change records a new one.
#[derive(Debug, Clone, PartialEq)]
struct StepKey {
    batch: usize,
    capacity: usize,
    capture: Vec<CaptureRequest>,
    interventions: Vec<Interventions>,
    logits: bool,
    weights: u64,
}

/// Device buffers a static step reads and writes. They outlive the step, so
/// a replay finds them at the addresses it was recorded with.
struct StepIo {
    /// u32: the batch's token ids, then the position.
    inputs: Tensor,
    /// 0..capacity (u32), and the mask's two values per position.
    positions: Tensor,
    /// positions + the sliding window (u32), when a layer slides: key j is
    /// inside the window of query p when j + w > p.
    window_ends: Option<Tensor>,
    open: Tensor,
    closed: Tensor,
    /// (batch, 1, vocab) f32.
    logits: Option<Tensor>,
    /// The captured hook points' states, where anything is captured.
    slabs: Option<SlabSet>,
    /// The plan's d_ff masks (the recorded kernels read them).
    _masks: Vec<Tensor>,
}

/// A static decode step for one cache: its buffers and, on a GPU, its graph.
pub(super) struct DecodeGraph {
    key: StepKey,
    io: StepIo,
    #[cfg(feature = "cuda")]
    exec: Option<candle_core::cuda::cudarc::driver::CudaGraph>,
    /// Steps run so far (the first runs eagerly: it loads every kernel,
    /// uploads every kernel's shape parameters and lets cuBLAS settle before
    /// anything is recorded).
    steps: usize,
}

impl Model {
    /// Whether this one-token step of a cached run can take the static path.
    pub(super) fn static_step_applies(
        &self,
        t: usize,
        cache: &Cache,
        plan: &Plan,
        opts: &RunOptions,
    ) -> bool {
        #[cfg(test)]
        let forced = cache.force_static;
        #[cfg(not(test))]
        let forced = false;
        t == 1
            && opts.logits != LogitsMode::NextToken
            && (forced || (self.device().is_cuda() && self.decode_graphs))
            // One recorded step runs on one device's stream.
            && !self.placement.is_split()
            && !cache.graph_failed
            && !plan.has_weight_edits()
            && !plan.adapts()
            && opts.key_padding.is_none()
            && opts.cancel.as_ref().is_none_or(|c| !c.is_cancelled())
    }

    /// One token per row at the cache's position through the static step.
    /// Errors from recording the graph come back as [`ModelError::Graph`]:
    /// the caller then decodes this cache eagerly.
    pub(super) fn forward_static(
        &self,
        tokens: &[Vec<u32>],
        cache: &mut Cache,
        opts: &RunOptions,
        plan: &Plan,
    ) -> Result<ForwardOutput> {
        let b = tokens.len();
        let start = cache.len;
        cache.reserve(self, b, start + 1)?;
        let key = StepKey {
            batch: b,
            capacity: cache.capacity(),
            capture: opts.capture.clone(),
            interventions: opts.interventions.clone(),
            logits: opts.logits != LogitsMode::None,
            weights: self.weights_version,
        };
        if cache.graph.as_ref().is_some_and(|g| g.key != key) {
            cache.graph = None;
        }
        if cache.graph.is_none() {
            let io = StepIo::new(self, &key, plan)?;
            cache.graph = Some(DecodeGraph {
                key,
                io,
                #[cfg(feature = "cuda")]
                exec: None,
                steps: 0,
            });
        }
        let graph = cache.graph.as_mut().expect("set above");
        let entered = std::time::Instant::now();
        let mut inputs: Vec<u32> = tokens.iter().map(|row| row[0]).collect();
        inputs.push(start as u32);
        graph
            .io
            .inputs
            .slice_set(&Tensor::from_vec(inputs, b + 1, self.device())?, 0, 0)?;
        let uploaded = entered.elapsed();
        self.run_step(graph, &cache.layers, plan)?;
        tracing::debug!(
            upload_us = uploaded.as_micros() as u64,
            launch_us = (entered.elapsed() - uploaded).as_micros() as u64,
            "decode step launched"
        );
        cache.len = start + 1;
        let graph = cache.graph.as_ref().expect("set above");
        let logits = graph.io.logits.as_ref().map(Tensor::copy).transpose()?;
        if let (true, Some(slabs)) = (opts.defer_captures, &graph.io.slabs) {
            let pending = PendingCaptures::take(slabs, &opts.capture, self.config.n_layers)?;
            return Ok(ForwardOutput {
                logits,
                captures: Vec::new(),
                pending: Some(pending),
            });
        }
        Ok(ForwardOutput {
            logits,
            captures: self.read_captures(&graph.io, opts)?,
            pending: None,
        })
    }

    /// Replays the recorded step, records it, or runs it eagerly.
    fn run_step(&self, graph: &mut DecodeGraph, layers: &[LayerKv], plan: &Plan) -> Result<()> {
        graph.steps += 1;
        #[cfg(feature = "cuda")]
        if let candle_core::Device::Cuda(dev) = self.device() {
            // candle uploads the shapes and strides of strided kernels from
            // host memory; a recording would keep pointers to freed host
            // buffers. With this cache on, the eager first step uploads each
            // once to device memory that lives on, and the recording reuses it.
            let _params = dev.enable_cuda_graph_htod_cache();
            if graph.exec.is_none() && graph.steps > 1 {
                graph.exec = Some(self.record(dev, &graph.io, layers, plan)?);
                tracing::debug!("decode step recorded as a CUDA graph");
            }
            return match &graph.exec {
                Some(exec) => exec.launch().map_err(|e| ModelError::Graph(e.to_string())),
                None => self.static_body(&graph.io, layers, plan),
            };
        }
        self.static_body(&graph.io, layers, plan)
    }

    /// Records the step on the device's stream. Nothing runs while
    /// recording; every tensor made during it is freed within it, so the
    /// graph's memory is its own and a replay needs no host allocation.
    #[cfg(feature = "cuda")]
    fn record(
        &self,
        dev: &candle_core::CudaDevice,
        io: &StepIo,
        layers: &[LayerKv],
        plan: &Plan,
    ) -> Result<candle_core::cuda::cudarc::driver::CudaGraph> {
        use candle_core::cuda::cudarc::driver::sys;
        let graph_err = |e: &dyn std::fmt::Display| ModelError::Graph(e.to_string());
        let stream = dev.cuda_stream();
        stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
            .map_err(|e| graph_err(&e))?;
        let body = self.static_body(io, layers, plan);
        let graph = stream.end_capture(sys::CUgraphInstantiate_flags(0));
        body.map_err(|e| graph_err(&e))?;
        let graph = graph
            .map_err(|e| graph_err(&e))?
            .ok_or_else(|| ModelError::Graph("nothing was recorded".into()))?;
        graph.upload().map_err(|e| graph_err(&e))?;
        Ok(graph)
    }

    /// The step itself: only kernels, reading the token ids and the position
    /// from `io.inputs`.
    fn static_body(&self, io: &StepIo, layers: &[LayerKv], plan: &Plan) -> Result<()> {
        let c = &self.config;
        let b = io.inputs.dim(0)? - 1;
        let ids = io.inputs.narrow(0, 0, b)?;
        let pos = io.inputs.narrow(0, b, 1)?;
        let mut x = self.embed_ids(&ids)?.reshape((b, 1, c.d_model))?;
        // The step's additive masks (all keys, and the sliding window's),
        // built only where the attention kernel cannot build them itself.
        let mut masks: Option<StepMasks> = None;
        // Where the fused kernels cannot run: the position's table rows and
        // the cache's scatter index, made once per step on first use.
        let mut composed: Option<ComposedStep> = None;
        for (i, kv) in layers.iter().enumerate() {
            let block = &self.blocks[i];
            x = self.block(
                i,
                x,
                plan,
                |h| {
                    let (q, k, v) = self.project_qkv_views(block, h, plan)?;
                    let rope = self.rope_for(i);
                    let softcap = self.family.attn_softcap;
                    let window = c.attention.window(i);
                    // On a GPU one kernel rotates q and k, stores k and v
                    // at the position and attends over the open keys.
                    let fresh = StepRope {
                        k: &k,
                        v: &v,
                        tables: rope.tables(),
                    };
                    let attend = |q: &Tensor, fresh| {
                        super::fused::decode_attention(
                            q, fresh, &kv.k, &kv.v, &pos, window, softcap,
                        )
                    };
                    if let Some(y) = attend(&q, Some(fresh))? {
                        return Ok(y);
                    }
                    // Elsewhere: candle's RoPE and scatter into the cache,
                    // then the kernel over the stored keys, or candle's
                    // attention with the step's masks.
                    let step = match &mut composed {
                        Some(s) => s,
                        none => none.insert(ComposedStep::new(self, &pos, b)?),
                    };
                    let t = match (&step.local_tables, window) {
                        (Some(local), Some(_)) => local,
                        _ => &step.tables,
                    };
                    let (q, k) = (q.contiguous()?, k.contiguous()?);
                    kv.k.scatter_set(&step.kv_index, &rope.rotate_at(&k, t, false)?, 2)?;
                    kv.v.scatter_set(&step.kv_index, &v.contiguous()?, 2)?;
                    let q = rope.rotate_at(&q, t, true)?;
                    let y = match attend(&q, None)? {
                        Some(y) => y,
                        None => {
                            let m = match &mut masks {
                                Some(m) => m,
                                none => none.insert(StepMasks::new(io, &pos)?),
                            };
                            let mask = match (window, &m.sliding) {
                                (Some(_), Some(sliding)) => sliding,
                                _ => &m.full,
                            };
                            self.attend_grouped(&q, &kv.k, &kv.v, Some(mask), false)?
                        }
                    };
                    Ok(y)
                },
                &mut |layer, point, x| io.record_hook(layer, point, x),
                &|layer, point| io.sink(layer, point),
            )?;
        }
        if let Some(out) = &io.logits {
            self.head_into(&x, plan, out)?;
        }
        Ok(())
    }

    /// The step's captures, reduced on the host in the order an eager
    /// forward takes them.
    fn read_captures(&self, io: &StepIo, opts: &RunOptions) -> Result<Vec<Captured>> {
        let Some(slabs) = &io.slabs else {
            return Ok(Vec::new());
        };
        let waited = std::time::Instant::now();
        self.device().synchronize()?;
        let began = std::time::Instant::now();
        let host = slabs.to_host()?;
        let copied = began.elapsed();
        let reduced = reduce_slabs(&host, &opts.capture, self.config.n_layers);
        tracing::debug!(
            wait_us = (began - waited).as_micros() as u64,
            copy_us = copied.as_micros() as u64,
            reduce_us = (began.elapsed() - copied).as_micros() as u64,
            "decode step's captures read"
        );
        Ok(reduced)
    }
}

/// A step's additive masks over the cache buffer: 0 up to the position and
/// -inf after it, and the same inside the sliding window where a layer slides.
struct StepMasks {
    full: Tensor,
    sliding: Option<Tensor>,
}

impl StepMasks {
    fn new(io: &StepIo, pos: &Tensor) -> Result<Self> {
        let capacity = io.positions.dim(0)?;
        let seen = io.positions.broadcast_le(pos)?;
        let full = seen
            .where_cond(&io.open, &io.closed)?
            .reshape((1, capacity))?;
        let sliding = match &io.window_ends {
            Some(ends) => {
                let inside = ends.broadcast_gt(pos)?.where_cond(&io.open, &io.closed)?;
                Some(
                    seen.where_cond(&inside, &io.closed)?
                        .reshape((1, capacity))?,
                )
            }
            None => None,
        };
        Ok(Self { full, sliding })
    }
}

/// A step's composed-op inputs: the RoPE table rows at the step's
/// position (global, and local where the family has them) and the index
/// that scatters k and v into the cache at it.
struct ComposedStep {
    tables: [Tensor; 4],
    local_tables: Option<[Tensor; 4]>,
    kv_index: Tensor,
}

impl ComposedStep {
    fn new(model: &Model, pos: &Tensor, rows: usize) -> Result<Self> {
        let c = &model.config;
        Ok(Self {
            tables: model.ropes[0].global.tables_at(pos)?,
            local_tables: model.ropes[0]
                .local
                .as_ref()
                .map(|r| r.tables_at(pos))
                .transpose()?,
            kv_index: pos
                .reshape((1, 1, 1, 1))?
                .broadcast_as((rows, c.n_kv_heads, 1, c.head_dim))?
                .contiguous()?,
        })
    }
}

impl StepIo {
    fn new(model: &Model, key: &StepKey, plan: &Plan) -> Result<Self> {
        let c = &model.config;
        let (dev, dtype, cap, b) = (model.device(), model.dtype, key.capacity, key.batch);
        let slabs = SlabSet::new(&key.capture, (c.n_layers, b, c.d_model, c.d_ff), dtype, dev)?;
        Ok(Self {
            inputs: Tensor::zeros(b + 1, DType::U32, dev)?,
            positions: Tensor::arange(0u32, cap as u32, dev)?,
            window_ends: match c.attention.sliding_window {
                Some(w) if (0..c.n_layers).any(|i| c.attention.window(i).is_some()) => {
                    let w = u32::try_from(w)
                        .unwrap_or(u32::MAX)
                        .min(u32::MAX - cap as u32);
                    Some(Tensor::arange(w, w + cap as u32, dev)?)
                }
                _ => None,
            },
            open: Tensor::zeros(cap, dtype, dev)?,
            closed: Tensor::full(f32::NEG_INFINITY, cap, dev)?.to_dtype(dtype)?,
            logits: key
                .logits
                .then(|| Tensor::zeros((b, 1, c.vocab_size), DType::F32, dev))
                .transpose()?,
            slabs,
            _masks: plan.mask_tensors(),
        })
    }

    /// The slab row a kernel may write a hook's state into itself.
    fn sink(&self, layer: usize, point: HookPoint) -> Option<Tensor> {
        self.slabs.as_ref()?.row(layer, point)
    }

    /// Copies a hook's state into its slab row where the slabs keep one.
    fn record_hook(&self, layer: usize, point: HookPoint, x: &Tensor) -> Result<()> {
        match &self.slabs {
            Some(slabs) => slabs.record(layer, point, x),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::Checkpoint;
    use crate::model::hooks;
    use crate::model::intervention::{FfnMask, MaskMode};
    use crate::synthetic::Spec;
    use candle_core::Device;

    fn planted_model() -> Model {
        let dir = tempfile::tempdir().unwrap();
        Spec::planted()
            .write_hf_dir(dir.path(), safetensors::Dtype::F32)
            .unwrap();
        let ckpt = Checkpoint::open_path(dir.path()).unwrap();
        Model::load(&ckpt, &Device::Cpu, DType::F32, |_, _| {}).unwrap()
    }

    /// Greedy decode of `steps` tokens per row after `prompt`; returns every
    /// step's logits (host) and captures.
    fn decode(
        model: &Model,
        prompt: &[u32],
        opts: &RunOptions,
        rows: usize,
        steps: usize,
        static_path: bool,
    ) -> (Vec<Vec<f32>>, Vec<Vec<Captured>>) {
        let mut cache = model.new_cache();
        cache.force_static = static_path;
        let first = model
            .forward(&vec![prompt.to_vec(); rows], Some(&mut cache), opts)
            .unwrap();
        let mut next = first.logits.unwrap();
        let (mut logits, mut captures) = (Vec::new(), Vec::new());
        for _ in 0..steps {
            let ids = next.squeeze(1).unwrap().argmax(1).unwrap();
            let ids: Vec<Vec<u32>> = ids
                .to_vec1::<u32>()
                .unwrap()
                .into_iter()
                .map(|i| vec![i])
                .collect();
            let out = model.forward(&ids, Some(&mut cache), opts).unwrap();
            next = out.logits.unwrap();
            logits.push(next.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            captures.push(out.captures);
        }
        assert_eq!(cache.graph.is_some(), static_path);
        (logits, captures)
    }

    #[test]
    fn static_step_equals_eager_decode_with_masks_captures_and_growth() {
        let model = planted_model();
        let masks = FfnMask {
            mode: MaskMode::Keep,
            dims: vec![300, 17],
        };
        let mut attacked = Interventions::none();
        attacked.ffn_masks.insert(1, masks);
        let opts = RunOptions {
            capture: vec![
                CaptureRequest::every_layer(HookPoint::ResidPost, hooks::Reduction::MaxAbsPerDim),
                CaptureRequest::at(1, HookPoint::MlpPost, hooks::Reduction::TopK(4)),
                CaptureRequest::every_layer(HookPoint::ResidMid, hooks::Reduction::MedianAbs),
                CaptureRequest::at(2, HookPoint::MlpPost, hooks::Reduction::Position(0)),
                CaptureRequest::at(0, HookPoint::ResidPre, hooks::Reduction::Full),
                CaptureRequest::every_layer(HookPoint::ResidPre, hooks::Reduction::TopK(3)),
            ],
            interventions: vec![Interventions::none(), attacked],
            logits: LogitsMode::Last,
            ..Default::default()
        };
        // 508 prompt tokens: the buffers (512 positions) grow mid-decode.
        let prompt: Vec<u32> = std::iter::once(256)
            .chain((0..507).map(|i| (i * 37 % 200 + 32) as u32))
            .collect();
        let (eager_logits, eager_caps) = decode(&model, &prompt, &opts, 2, 8, false);
        let (static_logits, static_caps) = decode(&model, &prompt, &opts, 2, 8, true);
        for (step, (e, s)) in eager_logits.iter().zip(&static_logits).enumerate() {
            let diff = e
                .iter()
                .zip(s)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff < 1e-4, "step {step}: logits differ by {diff}");
        }
        for (e, s) in eager_caps.iter().zip(&static_caps) {
            assert_eq!(e.len(), 3 + 1 + 3 + 1 + 1 + 3);
            assert_eq!(e.len(), s.len());
            for (a, b) in e.iter().zip(s) {
                assert_eq!(
                    (a.hook, a.reduction, &a.shape),
                    (b.hook, b.reduction, &b.shape)
                );
                assert_eq!(a.indices, b.indices, "{:?}", a.hook);
                let diff = a
                    .values
                    .iter()
                    .zip(&b.values)
                    .map(|(x, y)| (x - y).abs() / x.abs().max(1.0))
                    .fold(0f32, f32::max);
                assert!(diff < 1e-4, "{:?} {:?}: {diff}", a.hook, a.reduction);
            }
        }
    }

    /// Block inputs alone (no block output wanted): the step keeps block
    /// 0's and reads the rest from the block outputs it keeps for them.
    #[test]
    fn static_step_block_inputs_equal_eager_ones() {
        let model = planted_model();
        let opts = RunOptions {
            capture: vec![CaptureRequest::every_layer(
                HookPoint::ResidPre,
                hooks::Reduction::Full,
            )],
            logits: LogitsMode::Last,
            ..Default::default()
        };
        let prompt = vec![256u32, 72, 101, 108, 108, 111];
        let (_, eager) = decode(&model, &prompt, &opts, 1, 4, false);
        let (_, replayed) = decode(&model, &prompt, &opts, 1, 4, true);
        assert_eq!(eager.len(), replayed.len());
        for (e, s) in eager.iter().zip(&replayed) {
            assert_eq!(e.len(), Spec::planted().n_layers);
            for (a, b) in e.iter().zip(s) {
                assert_eq!((a.hook, &a.shape), (b.hook, &b.shape));
                let diff = a
                    .values
                    .iter()
                    .zip(&b.values)
                    .map(|(x, y)| (x - y).abs() / x.abs().max(1.0))
                    .fold(0f32, f32::max);
                assert!(diff < 1e-5, "{:?}: {diff}", a.hook);
            }
        }
        // Each block's input differs from the one before it.
        assert_ne!(replayed[0][1].values, replayed[0][2].values);
    }

    /// Every family's fixture (written by transformers) decodes the same
    /// through the static step as eagerly, far past the sliding window:
    /// the step's window mask, local RoPE (Gemma 3), partial rotary (Phi-3),
    /// QK-norms, post-norms and soft caps come from the shared code.
    #[test]
    fn static_step_equals_eager_decode_for_every_family() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/families");
        for family in [
            "qwen2_swa",
            "mistral",
            "qwen3",
            "phi3",
            "olmo2",
            "gemma2",
            "gemma3",
        ] {
            let ckpt = Checkpoint::open_path(&root.join(family)).unwrap();
            let model = Model::load(&ckpt, &Device::Cpu, DType::F32, |_, _| {}).unwrap();
            let opts = RunOptions {
                logits: LogitsMode::Last,
                ..Default::default()
            };
            let prompt: Vec<u32> = std::iter::once(256)
                .chain(b"Summer is warm".map(u32::from))
                .collect();
            let (eager, _) = decode(&model, &prompt, &opts, 1, 20, false);
            let (fixed, _) = decode(&model, &prompt, &opts, 1, 20, true);
            for (step, (e, s)) in eager.iter().zip(&fixed).enumerate() {
                let diff = e
                    .iter()
                    .zip(s)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(diff < 1e-4, "{family} step {step}: logits differ by {diff}");
            }
        }
    }
}
