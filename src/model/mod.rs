//! The model layer: our own forward pass over candle operations, because
//! candle-transformers' models return only the last logits and expose nothing
//! inside. Llama family (SmolLM/SmolLM2, Llama 2/3, Mistral; Qwen2's q/k/v
//! biases too): RMSNorm, RoPE, grouped-query attention with a causal mask,
//! SwiGLU MLP, tied or untied output head.
//!
//! Every run can capture reduced hook states ([`hooks`]) and apply
//! per-sequence interventions ([`intervention`]) without reloading weights.
//! Quantized checkpoints are computed as their dequantized weights in f32
//! (converted at load, or held as blocks that mwtop's own kernels read; see
//! [`WeightPrecision`]): candle's quantized matmul rounds activations to 8
//! bits, which is wrong for a tool about activations in the tens of thousands.

mod attention;
mod block;
pub mod branches;
mod capture;
mod family;
mod frozen;
mod fused;
mod gemv;
mod graph;
pub mod hooks;
pub mod intervention;
mod kv;
mod load;
pub mod lora;
mod matrix;
mod options;
mod pending;
mod placement;
mod plan;
pub mod rope;
mod split_matmul;
mod weights;

use candle_core::{DType, Device, Tensor, D};

use crate::checkpoint::{CheckpointError, ModelConfig, WeightId};
use attention::{causal_mask, Masking, Positions};
pub use branches::Branches;
use capture::Captures;
use hooks::Captured;
pub use kv::Cache;
use matrix::Matrix;
pub use options::{CancelToken, LogitsMode, RunOptions};
pub use pending::PendingCaptures;
pub use placement::{PartBytes, Placement};
use plan::Plan;
use weights::{Block, Linear};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("model: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("{0}")]
    Invalid(String),
    #[error("cancelled")]
    Cancelled,
    /// Recording or replaying a CUDA graph failed (the run falls back to
    /// eager kernels).
    #[error("CUDA graph: {0}")]
    Graph(String),
}

pub type Result<T> = std::result::Result<T, ModelError>;

pub struct ForwardOutput {
    /// f32 logits on the model's device, shaped as [`LogitsMode`] says.
    pub logits: Option<Tensor>,
    pub captures: Vec<Captured>,
    /// A replayed decode step's captures, when [`RunOptions::defer_captures`]
    /// asked for them later (then `captures` is empty).
    pub pending: Option<PendingCaptures>,
}

impl ForwardOutput {
    /// This run's captures: read at once, or deferred to be read later.
    pub fn take_captures(&mut self) -> StepCaptures {
        match self.pending.take() {
            Some(p) => StepCaptures::Pending(p),
            None => StepCaptures::Ready(std::mem::take(&mut self.captures)),
        }
    }
}

/// A run's captures, ready or still to be read (see [`PendingCaptures`]).
pub enum StepCaptures {
    Ready(Vec<Captured>),
    Pending(PendingCaptures),
}

impl StepCaptures {
    pub fn wait(self) -> Result<Vec<Captured>> {
        match self {
            Self::Ready(c) => Ok(c),
            Self::Pending(p) => p.wait(),
        }
    }
}

/// The most positions the rotary tables hold (64 MB at head_dim 128): a
/// claimed context of millions would otherwise cost gigabytes up front.
/// Longer texts are scored with a sliding window.
const ROPE_POSITIONS_MAX: usize = 1 << 17;

/// Which dtype the matrices are held in on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightPrecision {
    /// Every weight converted to the compute dtype at load (a dense f32
    /// copy of a bf16 checkpoint: twice its size).
    Compute,
    /// Matrices (the projections, the embedding, the head) stay in the
    /// float dtype the checkpoint stores them in (bf16, f16), or as the
    /// GGUF file's quantized blocks (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K,
    /// Q5_K, Q6_K; other formats are converted); each product reads them
    /// as they are and computes in the compute dtype, so results are those
    /// of the converted weights, at the stored size in memory.
    Stored,
}

/// The rotary tables of one device: every layer's, and the sliding layers'
/// own where their base differs (Gemma 3).
struct DeviceRopes {
    global: rope::Rope,
    local: Option<rope::Rope>,
}

/// A loaded model: dense weights on one device, or layers split over
/// several (see [`Placement`]); activations in one compute dtype, matrices
/// in it or as stored (see [`WeightPrecision`]).
pub struct Model {
    config: ModelConfig,
    placement: Placement,
    dtype: DType,
    precision: WeightPrecision,
    embed: Matrix,
    blocks: Vec<Block>,
    norm: Tensor,
    lm_head: Linear,
    /// How this family computes a block.
    family: family::Family,
    /// sqrt(d_model) in the compute dtype, for families that scale embeddings.
    embed_scale: Option<f64>,
    /// The rotary tables on each device of [`Self::placement`], in its order.
    ropes: Vec<DeviceRopes>,
    /// The order q/k rows are held in when only part of each head rotates.
    rotary_order: Option<rope::RotaryOrder>,
    /// Bumped by every change of the loaded weights (recorded decode steps
    /// read the weights' memory, so they are recorded again).
    weights_version: u64,
    /// One-token steps on a CUDA device replay a recorded graph.
    decode_graphs: bool,
    /// Bytes the attention scores of one forward may take before queries
    /// are processed in tiles (see [`attention::tile_rows`]).
    attention_budget: usize,
}

/// Default for [`Model::set_attention_budget`] on the CPU: tiles start
/// where a single score matrix would pass 64 MiB (a 2048-token window of a
/// small model), so a long window fits beside the weights in a few GB.
pub const ATTENTION_BUDGET_CPU: usize = 64 << 20;

/// The same on a GPU: 1 GiB, so the batches of zero-shot scoring and
/// perplexity sweeps stay single kernels, and only windows of many
/// thousand tokens are tiled.
pub const ATTENTION_BUDGET_GPU: usize = 1 << 30;

/// The default attention budget of a model on `device`.
pub fn attention_budget_for(device: &Device) -> usize {
    if device.is_cpu() {
        ATTENTION_BUDGET_CPU
    } else {
        ATTENTION_BUDGET_GPU
    }
}

/// Bytes of logits one chunk of [`LogitsMode::NextToken`] holds.
const NEXT_TOKEN_CHUNK_BYTES: usize = 64 << 20;

impl Model {
    /// The norm on layer `i`'s MLP output, as the multiplier it applies;
    /// None for families without one (or a layer the model lacks).
    pub fn post_mlp_norm(&self, layer: usize) -> Option<&Tensor> {
        self.blocks.get(layer)?.norms.mlp_out.as_ref()
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The device of the embedding (the only one unless the layers are
    /// split; see [`Self::placement`]).
    pub fn device(&self) -> &Device {
        self.placement.first()
    }

    /// Which device holds each layer; the head is on the last.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn weight_precision(&self) -> WeightPrecision {
        self.precision
    }

    /// Bytes the weights take on the device (each tensor once, views of a
    /// stacked matrix not counted again).
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes_per_device().iter().sum()
    }

    /// [`Self::weight_bytes`] of each device of [`Self::placement`], in
    /// its order (one entry unless the layers are split).
    pub fn weight_bytes_per_device(&self) -> Vec<usize> {
        let size = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        let linear = |l: &Linear| l.weight.bytes() + l.bias.as_ref().map_or(0, size);
        let devices = self.placement.devices().len();
        let mut bytes = vec![0; devices];
        bytes[0] += self.embed.bytes();
        bytes[devices - 1] += size(&self.norm);
        // A tied head is the embedding itself, unless a split put a copy
        // of it on another device.
        let copied = !self
            .lm_head
            .weight
            .device()
            .same_device(self.embed.device());
        if self.lm_head.id != Some(WeightId::Embed) || copied {
            bytes[devices - 1] += linear(&self.lm_head);
        }
        for (i, b) in self.blocks.iter().enumerate() {
            let on = &mut bytes[self.placement.layer_index(i)];
            *on += linear(&b.qkv) + linear(&b.o) + linear(&b.gate_up) + linear(&b.down);
            let n = &b.norms;
            for t in [&n.attn_in, &n.attn_out, &n.mlp_in, &n.mlp_out, &n.q, &n.k]
                .into_iter()
                .flatten()
            {
                *on += size(t);
            }
        }
        bytes
    }

    pub fn new_cache(&self) -> Cache {
        Cache::new()
    }

    /// Whether one-token steps with a cache on a CUDA device replay a
    /// recorded CUDA graph (default) or launch their kernels one by one.
    pub fn set_decode_graphs(&mut self, on: bool) {
        self.decode_graphs = on;
    }

    /// Bytes the attention scores (and their softmax) of one forward may
    /// take before the queries are processed in tiles. Tiling changes
    /// memory, not results: each query still sees all its keys at once.
    pub fn set_attention_budget(&mut self, bytes: usize) {
        self.attention_budget = bytes.max(1);
    }

    /// The longest sequence the position tables cover.
    pub fn max_positions(&self) -> usize {
        self.ropes[0].global.max_positions
    }

    /// Runs `tokens` (batch of equal-length sequences) from the cache's
    /// position on (a fresh run when `cache` is None).
    pub fn forward(
        &self,
        tokens: &[Vec<u32>],
        cache: Option<&mut Cache>,
        opts: &RunOptions,
    ) -> Result<ForwardOutput> {
        let b = tokens.len();
        let t = tokens.first().map_or(0, Vec::len);
        if b == 0 || t == 0 {
            return Err(ModelError::Invalid(
                "forward needs at least one token".into(),
            ));
        }
        if tokens.iter().any(|s| s.len() != t) {
            return Err(ModelError::Invalid(
                "all sequences of a batch must have the same length".into(),
            ));
        }
        if opts.key_padding.as_ref().is_some_and(|p| p.len() != b) {
            return Err(ModelError::Invalid(format!(
                "{} key-padding counts for a batch of {b}",
                opts.key_padding.as_ref().map_or(0, Vec::len)
            )));
        }
        if !(opts.interventions.len() <= 1 || opts.interventions.len() == b) {
            return Err(ModelError::Invalid(format!(
                "{} intervention sets for a batch of {b}",
                opts.interventions.len()
            )));
        }
        let n_layers = self.config.n_layers;
        for req in &opts.capture {
            if let Some(&l) = req.layers.iter().flatten().find(|&&l| l >= n_layers) {
                return Err(ModelError::Invalid(format!(
                    "capture at layer {l}: the model has layers 0..{}",
                    n_layers - 1
                )));
            }
        }
        let vocab = self.config.vocab_size as u32;
        if let Some(bad) = tokens.iter().flatten().find(|&&id| id >= vocab) {
            return Err(ModelError::Invalid(format!(
                "token id {bad} is outside the vocabulary ({vocab})"
            )));
        }
        let start = cache.as_ref().map_or(0, |c| c.len);
        let max_positions = self.max_positions();
        if start + t > max_positions {
            return Err(ModelError::Invalid(format!(
                "{} positions exceed the model's {} (use a sliding window)",
                start + t,
                max_positions
            )));
        }
        if let Some(br) = &opts.branches {
            if cache.is_some() || opts.key_padding.is_some() || opts.differentiable {
                return Err(ModelError::Invalid(
                    "a branched run takes no cache, key padding or gradients".into(),
                ));
            }
            br.check(b, t, max_positions)?;
        }
        let plan = Plan::new(self, opts, b)?;
        let mut cache = cache;
        if let Some(c) = cache.as_deref_mut() {
            if self.static_step_applies(t, c, &plan, opts) {
                match self.forward_static(tokens, c, opts, &plan) {
                    Err(ModelError::Graph(e)) => {
                        tracing::warn!("decoding without a CUDA graph: {e}");
                        c.graph_failed = true;
                        c.graph = None;
                    }
                    done => return done,
                }
            }
            c.reserve(self, b, start + t)?;
        }
        // Layers every row computes alike run for the first row only; its
        // state is copied to all rows where they part.
        let shared = plan.shared_layers(tokens, n_layers, cache.is_some());
        let rows = if shared > 0 { 1 } else { b };
        let flat: Vec<u32> = tokens[..rows].iter().flatten().copied().collect();
        let ids = Tensor::from_vec(flat.clone(), (rows, t), self.device())?;
        let mut x = self
            .embed_ids(&ids.flatten_all()?)?
            .reshape((rows, t, self.config.d_model))?;
        x = plan.edit_embedding(self, x, &flat, rows, t)?;
        let every_row = |x: Tensor| -> Result<Tensor> {
            Ok(x.broadcast_as((b, t, self.config.d_model))?.contiguous()?)
        };
        let layout = &self.config.attention;
        let pads = opts.key_padding.as_deref();
        // Long runs attend in tiles of queries, each with its own mask; short
        // ones build each mask once for every layer.
        let tiles = attention::tile_rows(
            b,
            self.config.n_heads,
            t,
            start + t,
            self.dtype,
            self.attention_budget,
        );
        let windowed = match layout.sliding_window {
            Some(w) if (0..self.config.n_layers).any(|i| layout.window(i).is_some()) => Some(w),
            _ => None,
        };
        let (full_mask, sliding_mask) = match (&opts.branches, tiles) {
            (Some(br), _) => (
                Some(br.mask(b, t, None, self.dtype, self.device())?),
                windowed
                    .map(|w| br.mask(b, t, Some(w), self.dtype, self.device()))
                    .transpose()?,
            ),
            (None, Some(_)) => (None, None),
            (None, None) => (
                causal_mask(t, start, None, pads, self.dtype, self.device())?,
                match windowed {
                    Some(w) => causal_mask(t, start, Some(w), pads, self.dtype, self.device())?,
                    None => None,
                },
            ),
        };
        let branch_tables = match &opts.branches {
            Some(br) => {
                let r = &self.ropes[0];
                Some(br.tables(b, t, &r.global, r.local.as_ref(), self.device())?)
            }
            None => None,
        };
        let (mut full_mask, mut sliding_mask, mut branch_tables) =
            (full_mask, sliding_mask, branch_tables);
        let mut captures = Captures::default();
        let mut on = 0;
        for (i, block) in self.blocks.iter().enumerate() {
            if opts.cancel.as_ref().is_some_and(CancelToken::is_cancelled) {
                return Err(ModelError::Cancelled);
            }
            // A group boundary of a split model: the residual stream and
            // this forward's masks and tables move to the next device.
            if self.placement.layer_index(i) != on {
                on = self.placement.layer_index(i);
                let dev = self.placement.of_layer(i);
                x = x.to_device(dev)?;
                full_mask = full_mask.map(|m| m.to_device(dev)).transpose()?;
                sliding_mask = sliding_mask.map(|m| m.to_device(dev)).transpose()?;
                branch_tables = branch_tables.map(|b| b.to_device(dev)).transpose()?;
            }
            if i == shared && rows < b {
                x = every_row(x)?;
            }
            let at = match &branch_tables {
                Some(tables) => Positions::Given(tables),
                None => Positions::From(start),
            };
            let kv = cache.as_mut().map(|c| &mut c.layers[i]);
            x = self.block(
                i,
                x,
                &plan,
                |h| {
                    let mask = match layout.window(i) {
                        Some(_) => sliding_mask.as_ref(),
                        None => full_mask.as_ref(),
                    };
                    let masking = match (tiles, &opts.branches, mask) {
                        (Some(rows), Some(_), Some(mask)) => Masking::TiledOf { rows, mask },
                        (Some(rows), ..) => Masking::Tiled { rows, pads },
                        (None, ..) => Masking::Whole(mask),
                    };
                    self.attention(i, block, h, at, masking, kv, &plan)
                },
                &mut |layer, point, x| plan.capture(layer, point, x, &mut captures),
                &|_, _| None,
            )?;
        }
        let mut x = x.to_device(self.placement.last())?;
        if shared == n_layers && rows < b {
            x = every_row(x)?;
        }
        if let Some(c) = cache {
            c.len = start + t;
        }
        let logits = match opts.logits {
            LogitsMode::None => None,
            LogitsMode::Selected => {
                let total = (b * t) as u32;
                if let Some(&p) = opts.selected.iter().find(|&&p| p >= total) {
                    return Err(ModelError::Invalid(format!(
                        "selected position {p} is outside the batch's {total}"
                    )));
                }
                let n = opts.selected.len();
                let index = Tensor::from_vec(opts.selected.clone(), n, x.device())?;
                let rows = x
                    .reshape((b * t, self.config.d_model))?
                    .index_select(&index, 0)?
                    .reshape((1, n, self.config.d_model))?;
                Some(self.head(&rows, &plan)?.squeeze(0)?)
            }
            LogitsMode::NextToken => Some(self.next_token_logprobs_chunked(&x, tokens, &plan)?),
            mode => {
                let x = if mode == LogitsMode::Last {
                    x.narrow(1, t - 1, 1)?.contiguous()?
                } else {
                    x
                };
                Some(self.head(&x, &plan)?)
            }
        };
        Ok(ForwardOutput {
            logits,
            captures: captures.finish()?,
            pending: None,
        })
    }
}

impl Model {
    /// [`LogitsMode::NextToken`] from the final residual stream `x`
    /// (batch, t, d): the head and log-softmax over a chunk of positions of
    /// every row at a time (rows together, so per-row interventions on the
    /// head still apply to their own row).
    fn next_token_logprobs_chunked(
        &self,
        x: &Tensor,
        tokens: &[Vec<u32>],
        plan: &Plan,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        if t < 2 {
            return Err(ModelError::Invalid(
                "next-token log-probabilities need at least 2 tokens".into(),
            ));
        }
        let per_position = b * self.config.vocab_size * 4;
        let chunk = (NEXT_TOKEN_CHUNK_BYTES / per_position.max(1)).max(1);
        let mut parts = Vec::with_capacity((t - 1).div_ceil(chunk));
        let mut from = 0;
        while from < t - 1 {
            let n = chunk.min(t - 1 - from);
            let logits = self.head(&x.narrow(1, from, n)?.contiguous()?, plan)?;
            let lsm = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
            let targets: Vec<u32> = tokens
                .iter()
                .flat_map(|row| row[from + 1..from + 1 + n].iter().copied())
                .collect();
            let targets = Tensor::from_vec(targets, (b, n, 1), x.device())?;
            parts.push(lsm.gather(&targets, 2)?.squeeze(2)?);
            from += n;
        }
        Ok(Tensor::cat(&parts, 1)?)
    }

    /// Log-probabilities (f32, host) of each next token: entry p is
    /// log P(tokens[p + 1] | tokens[..=p]) for one sequence's all-position logits.
    pub fn next_token_logprobs(logits: &Tensor, tokens: &[u32]) -> Result<Vec<f32>> {
        let t = tokens.len();
        if t < 2 {
            return Ok(Vec::new());
        }
        let logits = logits.narrow(0, 0, t - 1)?;
        let lsm = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let targets = Tensor::from_vec(tokens[1..].to_vec(), (t - 1, 1), logits.device())?;
        Ok(lsm.gather(&targets, 1)?.squeeze(1)?.to_vec1::<f32>()?)
    }
}
