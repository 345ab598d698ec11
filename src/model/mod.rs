//! The model layer: our own forward pass over candle operations, because
//! candle-transformers' models return only the last logits and expose nothing
//! inside. Llama family (SmolLM/SmolLM2, Llama 2/3, Mistral; Qwen2's q/k/v
//! biases too): RMSNorm, RoPE, grouped-query attention with a causal mask,
//! SwiGLU MLP, tied or untied output head.
//!
//! Every run can capture reduced hook states ([`hooks`]) and apply
//! per-sequence interventions ([`intervention`]) without reloading weights.
//! Quantized checkpoints are dequantized to dense weights: candle's quantized
//! matmul rounds activations to 8 bits, which is wrong for a tool about
//! activations in the tens of thousands.

mod attention;
mod capture;
mod gemv;
mod graph;
pub mod hooks;
pub mod intervention;
mod kv;
mod plan;
pub mod rope;
mod weights;

use candle_core::{DType, Device, Tensor, D};

use crate::checkpoint::{
    Architecture, Checkpoint, CheckpointError, ModelConfig, NormId, NormKind, Proj, RopeScaling,
    WeightId,
};
use attention::causal_mask;
use capture::Captures;
use hooks::{CaptureRequest, Captured, HookPoint};
use intervention::Interventions;
pub use kv::Cache;
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

/// Which logits a forward returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsMode {
    /// (batch, tokens, vocab): every position (perplexity, comparisons).
    All,
    /// (batch, 1, vocab): only the last position (generation).
    Last,
    /// No logits (activation-only probes skip the output head).
    None,
}

/// What one forward does besides computing logits.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub capture: Vec<CaptureRequest>,
    /// One entry per batch row, or a single entry for every row.
    pub interventions: Vec<Interventions>,
    pub logits: LogitsMode,
    /// Checked between layers: a cancelled run stops with [`ModelError::Cancelled`].
    pub cancel: Option<CancelToken>,
}

/// Cancels runs that a newer request made obsolete: the token is live while
/// the shared epoch still equals the epoch it was made at.
#[derive(Debug, Clone)]
pub struct CancelToken {
    epoch: std::sync::Arc<std::sync::atomic::AtomicU64>,
    at: u64,
}

impl CancelToken {
    pub fn new(epoch: std::sync::Arc<std::sync::atomic::AtomicU64>, at: u64) -> Self {
        Self { epoch, at }
    }

    pub fn is_cancelled(&self) -> bool {
        self.epoch.load(std::sync::atomic::Ordering::Relaxed) != self.at
    }
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            capture: Vec::new(),
            interventions: Vec::new(),
            logits: LogitsMode::All,
            cancel: None,
        }
    }
}

pub struct ForwardOutput {
    /// f32 logits on the model's device, shaped as [`LogitsMode`] says.
    pub logits: Option<Tensor>,
    pub captures: Vec<Captured>,
}

/// The most positions the rotary tables hold (64 MB at head_dim 128): a
/// claimed context of millions would otherwise cost gigabytes up front.
/// Longer texts are scored with a sliding window.
const ROPE_POSITIONS_MAX: usize = 1 << 17;

/// A loaded model: dense weights on one device in one dtype.
pub struct Model {
    config: ModelConfig,
    device: Device,
    dtype: DType,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    lm_head: Linear,
    rope: rope::Rope,
    /// Bumped by every change of the loaded weights (recorded decode steps
    /// read the weights' memory, so they are recorded again).
    weights_version: u64,
    /// One-token steps on a CUDA device replay a recorded graph.
    decode_graphs: bool,
}

impl Model {
    /// Loads every tensor of the checkpoint, dequantized, as `dtype` on `device`.
    /// `progress(done, total)` is called after each tensor.
    pub fn load(
        ckpt: &Checkpoint,
        device: &Device,
        dtype: DType,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Self> {
        let config = ckpt.config().clone();
        match config.architecture {
            Architecture::Llama | Architecture::Mistral | Architecture::Qwen2 => {}
            Architecture::Gemma3 => {
                return Err(ModelError::Unsupported(
                    "the gemma3 forward pass is not implemented yet (llama, mistral, qwen2 are)"
                        .into(),
                ))
            }
        }
        let layout = &config.attention;
        if layout.partial_rotary_factor != 1.0 {
            return Err(ModelError::Unsupported(format!(
                "partial_rotary_factor {} (RoPE on part of each head) is not implemented yet",
                layout.partial_rotary_factor
            )));
        }
        if layout
            .local_rope_theta
            .is_some_and(|t| t != config.rope_theta)
        {
            return Err(ModelError::Unsupported(
                "a separate RoPE base for sliding layers is not implemented yet".into(),
            ));
        }
        if config.hidden_act != "silu" {
            return Err(ModelError::Unsupported(format!(
                "activation {}",
                config.hidden_act
            )));
        }
        let total = 3 + config.n_layers * 9;
        let mut done = 0usize;
        let mut get = |name: &str| -> Result<Tensor> {
            let t = ckpt.tensor(name, dtype, device)?;
            done += 1;
            progress(done.min(total), total);
            Ok(t)
        };
        let linear =
            |get: &mut dyn FnMut(&str) -> Result<Tensor>, id: WeightId| -> Result<Linear> {
                let name = id.hf_name();
                let weight = get(&name)?;
                let bias_name = format!("{}.bias", name.trim_end_matches(".weight"));
                let bias = match ckpt.info(&bias_name) {
                    Some(_) => Some(ckpt.tensor(&bias_name, dtype, device)?),
                    None => None,
                };
                Ok(Linear {
                    id: Some(id),
                    weight,
                    bias,
                })
            };
        let embed = get(&WeightId::Embed.hf_name())?;
        let mut blocks = Vec::with_capacity(config.n_layers);
        for i in 0..config.n_layers {
            let mut proj = |proj: Proj| linear(&mut get, WeightId::layer(i, proj));
            let attn = [
                proj(Proj::Q)?,
                proj(Proj::K)?,
                proj(Proj::V)?,
                proj(Proj::O)?,
            ];
            let mlp = [proj(Proj::Gate)?, proj(Proj::Up)?, proj(Proj::Down)?];
            let norm = |kind| NormId::Layer { layer: i, kind }.hf_name();
            let input_norm = get(&norm(NormKind::Input))?;
            let post_attention_norm = get(&norm(NormKind::PostAttention))?;
            blocks.push(Block::new(input_norm, attn, post_attention_norm, mlp)?);
        }
        let norm = get(&NormId::Final.hf_name())?;
        let lm_head = if config.tied_embeddings && ckpt.info(&WeightId::Head.hf_name()).is_none() {
            Linear {
                id: Some(WeightId::Embed),
                weight: embed.clone(),
                bias: None,
            }
        } else {
            linear(&mut get, WeightId::Head)?
        };
        progress(total, total);
        let factors = match &config.rope_scaling {
            Some(RopeScaling::FrequencyFactors { tensor }) => Some(
                ckpt.tensor(tensor, DType::F32, &Device::Cpu)?
                    .flatten_all()?
                    .to_vec1::<f32>()?,
            ),
            _ => None,
        };
        let inv = rope::inv_freq(
            config.head_dim,
            config.rope_theta,
            config.rope_scaling.as_ref(),
            factors.as_deref(),
        );
        let positions = config
            .max_position_embeddings
            .clamp(4096, ROPE_POSITIONS_MAX);
        let rope = rope::Rope::new(&inv, positions, dtype, device)?;
        Ok(Self {
            config,
            device: device.clone(),
            dtype,
            embed,
            blocks,
            norm,
            lm_head,
            rope,
            weights_version: 0,
            decode_graphs: true,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn new_cache(&self) -> Cache {
        Cache::new()
    }

    /// Whether one-token steps with a cache on a CUDA device replay a
    /// recorded CUDA graph (default) or launch their kernels one by one.
    pub fn set_decode_graphs(&mut self, on: bool) {
        self.decode_graphs = on;
    }

    /// The longest sequence the position tables cover.
    pub fn max_positions(&self) -> usize {
        self.rope.max_positions
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
        if start + t > self.rope.max_positions {
            return Err(ModelError::Invalid(format!(
                "{} positions exceed the model's {} (use a sliding window)",
                start + t,
                self.rope.max_positions
            )));
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
        let flat: Vec<u32> = tokens.iter().flatten().copied().collect();
        let ids = Tensor::from_vec(flat.clone(), (b, t), &self.device)?;
        let mut x =
            self.embed
                .embedding(&ids.flatten_all()?)?
                .reshape((b, t, self.config.d_model))?;
        x = plan.edit_embedding(self, x, &flat, b, t)?;
        let layout = &self.config.attention;
        let full_mask = causal_mask(t, start, None, self.dtype, &self.device)?;
        let sliding_mask = match layout.sliding_window {
            Some(w) if (0..self.config.n_layers).any(|i| layout.window(i).is_some()) => {
                causal_mask(t, start, Some(w), self.dtype, &self.device)?
            }
            _ => None,
        };
        let mut captures = Captures::default();
        for (i, block) in self.blocks.iter().enumerate() {
            if opts.cancel.as_ref().is_some_and(CancelToken::is_cancelled) {
                return Err(ModelError::Cancelled);
            }
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
                    self.attention(block, h, start, mask, kv, &plan)
                },
                &mut |layer, point, x| plan.capture(layer, point, x, &mut captures),
            )?;
        }
        if let Some(c) = cache {
            c.len = start + t;
        }
        let logits = match opts.logits {
            LogitsMode::None => None,
            mode => {
                let x = if mode == LogitsMode::Last {
                    x.narrow(1, t - 1, 1)?.contiguous()?
                } else {
                    x
                };
                let h = candle_nn::ops::rms_norm(&x, &self.norm, self.config.norm_eps as f32)?;
                Some(plan.linear(&self.lm_head, &h)?.to_dtype(DType::F32)?)
            }
        };
        Ok(ForwardOutput {
            logits,
            captures: captures.finish()?,
        })
    }

    /// Block `i`: x + attention(norm(x)), then + mlp(norm(x)). `attend` is
    /// the attention of this run's kind (host-known positions, or the
    /// device-side position of a replayed decode step); `hook` sees the
    /// residual stream and the MLP state at each hook point.
    fn block(
        &self,
        i: usize,
        x: Tensor,
        plan: &Plan,
        attend: impl FnOnce(&Tensor) -> Result<Tensor>,
        hook: &mut dyn FnMut(usize, HookPoint, &Tensor) -> Result<()>,
    ) -> Result<Tensor> {
        let block = &self.blocks[i];
        let eps = self.config.norm_eps as f32;
        hook(i, HookPoint::ResidPre, &x)?;
        let h = candle_nn::ops::rms_norm(&x, &block.input_norm, eps)?;
        let x = (x + attend(&h)?)?;
        hook(i, HookPoint::ResidMid, &x)?;
        let h = candle_nn::ops::rms_norm(&x, &block.post_attention_norm, eps)?;
        let mut inter = if plan.edits_any(&[&block.gate, &block.up]) {
            let gate = plan.linear(&block.gate, &h)?;
            (candle_nn::ops::silu(&gate)? * plan.linear(&block.up, &h)?)?
        } else {
            let gate_up = plan.linear(&block.gate_up, &h)?;
            let d_ff = self.config.d_ff;
            let gate = gate_up.narrow(2, 0, d_ff)?;
            (candle_nn::ops::silu(&gate)? * gate_up.narrow(2, d_ff, d_ff)?)?
        };
        if let Some(m) = plan.ffn_mask(i) {
            inter = inter.broadcast_mul(m)?;
        }
        hook(i, HookPoint::MlpPost, &inter)?;
        let x = (x + plan.linear(&block.down, &inter)?)?;
        hook(i, HookPoint::ResidPost, &x)?;
        Ok(x)
    }
}

impl Model {
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
