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

mod capture;
mod gemv;
mod graph;
pub mod hooks;
pub mod intervention;
mod kv;
mod plan;
pub mod rope;

use candle_core::{DType, Device, Tensor, D};

use crate::checkpoint::{Architecture, Checkpoint, CheckpointError, ModelConfig, RopeScaling};
use capture::Captures;
use hooks::{CaptureRequest, Captured, HookPoint};
use intervention::Interventions;
pub use kv::Cache;
use kv::{KvShape, LayerKv};
use plan::Plan;

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

struct Linear {
    name: String,
    weight: Tensor,
    bias: Option<Tensor>,
}

struct Block {
    input_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    post_attention_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
    /// q, k and v stacked by rows: one matmul instead of three. q, k and v
    /// are views into it, so the weights are stored once.
    qkv: Linear,
    /// gate and up stacked by rows, likewise.
    gate_up: Linear,
}

impl Block {
    fn new(
        input_norm: Tensor,
        [q, k, v, o]: [Linear; 4],
        post_attention_norm: Tensor,
        [gate, up, down]: [Linear; 3],
    ) -> Result<Self> {
        let placeholder = || Linear {
            name: String::new(),
            weight: input_norm.clone(),
            bias: None,
        };
        let mut block = Self {
            input_norm: input_norm.clone(),
            q,
            k,
            v,
            o,
            post_attention_norm,
            gate,
            up,
            down,
            qkv: placeholder(),
            gate_up: placeholder(),
        };
        block.fuse()?;
        Ok(block)
    }

    /// Rebuilds the stacked matrices from the parts (after a part changed)
    /// and points the parts back into them.
    fn fuse(&mut self) -> Result<()> {
        self.qkv = stack_rows(&mut [&mut self.q, &mut self.k, &mut self.v])?;
        self.gate_up = stack_rows(&mut [&mut self.gate, &mut self.up])?;
        Ok(())
    }
}

/// One linear map whose rows are `parts`' rows in order; each part becomes a
/// view of its rows (no second copy of the weights).
fn stack_rows(parts: &mut [&mut Linear]) -> Result<Linear> {
    let weights: Vec<&Tensor> = parts.iter().map(|l| &l.weight).collect();
    let weight = Tensor::cat(&weights, 0)?;
    let bias = if parts.iter().any(|l| l.bias.is_some()) {
        let biases = parts
            .iter()
            .map(|l| match &l.bias {
                Some(b) => Ok(b.clone()),
                None => Tensor::zeros(l.weight.dim(0)?, l.weight.dtype(), l.weight.device()),
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Some(Tensor::cat(&biases, 0)?)
    } else {
        None
    };
    let mut row = 0;
    for part in parts.iter_mut() {
        let rows = part.weight.dim(0)?;
        part.weight = weight.narrow(0, row, rows)?;
        if let (Some(b), Some(_)) = (&bias, &part.bias) {
            part.bias = Some(b.narrow(0, row, rows)?);
        }
        row += rows;
    }
    let name = parts
        .iter()
        .map(|l| l.name.as_str())
        .collect::<Vec<_>>()
        .join("+");
    Ok(Linear { name, weight, bias })
}

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
            |get: &mut dyn FnMut(&str) -> Result<Tensor>, name: String| -> Result<Linear> {
                let weight = get(&format!("{name}.weight"))?;
                let bias_name = format!("{name}.bias");
                let bias = match ckpt.info(&bias_name) {
                    Some(_) => Some(ckpt.tensor(&bias_name, dtype, device)?),
                    None => None,
                };
                Ok(Linear {
                    name: format!("{name}.weight"),
                    weight,
                    bias,
                })
            };
        let embed = get("model.embed_tokens.weight")?;
        let mut blocks = Vec::with_capacity(config.n_layers);
        for i in 0..config.n_layers {
            let p = format!("model.layers.{i}");
            let input_norm = get(&format!("{p}.input_layernorm.weight"))?;
            let attn = [
                linear(&mut get, format!("{p}.self_attn.q_proj"))?,
                linear(&mut get, format!("{p}.self_attn.k_proj"))?,
                linear(&mut get, format!("{p}.self_attn.v_proj"))?,
                linear(&mut get, format!("{p}.self_attn.o_proj"))?,
            ];
            let post_attention_norm = get(&format!("{p}.post_attention_layernorm.weight"))?;
            let mlp = [
                linear(&mut get, format!("{p}.mlp.gate_proj"))?,
                linear(&mut get, format!("{p}.mlp.up_proj"))?,
                linear(&mut get, format!("{p}.mlp.down_proj"))?,
            ];
            blocks.push(Block::new(input_norm, attn, post_attention_norm, mlp)?);
        }
        let norm = get("model.norm.weight")?;
        let lm_head = if config.tied_embeddings && ckpt.info("lm_head.weight").is_none() {
            Linear {
                name: "model.embed_tokens.weight".into(),
                weight: embed.clone(),
                bias: None,
            }
        } else {
            linear(&mut get, "lm_head".into())?
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
        let rope = rope::Rope::new(
            &inv,
            config.max_position_embeddings.max(4096),
            dtype,
            device,
        )?;
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

    /// Zeroes rows of W_up and W_gate of one layer in the loaded weights: the
    /// paper's definition of the attack, kept to prove the d_ff mask equal to it.
    pub fn physically_zero_ffn_rows(&mut self, layer: usize, dims: &[usize]) -> Result<()> {
        let d_ff = self.config.d_ff;
        let mut keep = vec![1f32; d_ff];
        for &d in dims {
            keep[d] = 0.0;
        }
        let mask = Tensor::from_vec(keep, (d_ff, 1), &self.device)?.to_dtype(self.dtype)?;
        let block = &mut self.blocks[layer];
        block.up.weight = block.up.weight.broadcast_mul(&mask)?;
        block.gate.weight = block.gate.weight.broadcast_mul(&mask)?;
        self.weights_version += 1;
        block.fuse()
    }

    /// Sets W[row, col] of a loaded matrix for good (unlike a [`intervention::WeightEdit`],
    /// which lasts one run). With tied embeddings the output head changes too.
    pub fn set_weight_entry(
        &mut self,
        name: &str,
        row: usize,
        col: usize,
        value: f32,
    ) -> Result<()> {
        let w = self
            .weight(name)
            .ok_or_else(|| ModelError::Invalid(format!("no matrix named {name}")))?;
        let (rows, cols) = w.dims2()?;
        if row >= rows || col >= cols {
            return Err(ModelError::Invalid(format!(
                "{name}[{row}, {col}] is outside [{rows}, {cols}]"
            )));
        }
        let mut v = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        v[row * cols + col] = value;
        let new = Tensor::from_vec(v, (rows, cols), &self.device)?.to_dtype(self.dtype)?;
        self.weights_version += 1;
        let canonical = self.canonical_weight_name(name);
        if canonical == "model.embed_tokens.weight" {
            self.embed = new.clone();
        }
        if canonical == self.lm_head.name {
            self.lm_head.weight = new;
            return Ok(());
        }
        if canonical == "model.embed_tokens.weight" {
            return Ok(());
        }
        let rest = canonical.strip_prefix("model.layers.").unwrap_or_default();
        let (layer, part) = rest.split_once('.').unwrap_or_default();
        let block = &mut self.blocks[layer.parse::<usize>().unwrap_or_default()];
        let slot = match part {
            "self_attn.q_proj.weight" => &mut block.q.weight,
            "self_attn.k_proj.weight" => &mut block.k.weight,
            "self_attn.v_proj.weight" => &mut block.v.weight,
            "self_attn.o_proj.weight" => &mut block.o.weight,
            "mlp.gate_proj.weight" => &mut block.gate.weight,
            "mlp.up_proj.weight" => &mut block.up.weight,
            _ => &mut block.down.weight,
        };
        *slot = new;
        block.fuse()
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
            let shape = KvShape {
                batch: b,
                kv_heads: self.config.n_kv_heads,
                head_dim: self.config.head_dim,
            };
            c.reserve(
                self.config.n_layers,
                shape,
                start + t,
                self.dtype,
                &self.device,
            )?;
        }
        let flat: Vec<u32> = tokens.iter().flatten().copied().collect();
        let ids = Tensor::from_vec(flat.clone(), (b, t), &self.device)?;
        let mut x =
            self.embed
                .embedding(&ids.flatten_all()?)?
                .reshape((b, t, self.config.d_model))?;
        x = plan.edit_embedding(self, x, &flat, b, t)?;
        let mask = causal_mask(t, start, self.dtype, &self.device)?;
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
                |h| self.attention(block, h, start, mask.as_ref(), kv, &plan),
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

    /// q, k, v of one block as (b, heads, t, head_dim), q rotated and scaled
    /// by `rotate_q`, k by `rotate_k`.
    fn project_qkv(
        &self,
        block: &Block,
        h: &Tensor,
        plan: &Plan,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, t, _) = h.dims3()?;
        let c = &self.config;
        let (nq, nk) = (c.n_heads, c.n_kv_heads);
        // (b, t, heads, head_dim) per projection; a view of one matmul's
        // output unless a weight edit of q, k or v needs them apart.
        let (q, k, v) = if plan.edits_any(&[&block.q, &block.k, &block.v]) {
            let heads = |l: &Linear, n: usize| -> Result<Tensor> {
                Ok(plan.linear(l, h)?.reshape((b, t, n, c.head_dim))?)
            };
            (
                heads(&block.q, nq)?,
                heads(&block.k, nk)?,
                heads(&block.v, nk)?,
            )
        } else {
            let y = plan
                .linear(&block.qkv, h)?
                .reshape((b, t, nq + 2 * nk, c.head_dim))?;
            (
                y.narrow(2, 0, nq)?,
                y.narrow(2, nq, nk)?,
                y.narrow(2, nq + nk, nk)?,
            )
        };
        // (b, heads, t, head_dim); for one token of one row this is a view.
        let split = |y: Tensor| y.transpose(1, 2)?.contiguous();
        Ok((split(q)?, split(k)?, split(v)?))
    }

    /// softmax(q k^T + mask) v for grouped queries, back to (b, t, heads * head_dim).
    /// q is already scaled. Keys and values may be row ranges of a longer
    /// buffer: matmul takes their batch stride as it is, no copy.
    fn attend_grouped(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, _, t, _) = q.dims4()?;
        let c = &self.config;
        // Grouped-query attention without copying keys and values per head: the
        // `rep` query heads that share a key/value head are stacked as rows of
        // one matrix, so each kv head is one batched matmul.
        let rep = c.n_heads / c.n_kv_heads;
        let total = k.dim(2)?;
        let q = q.reshape((b, c.n_kv_heads, rep * t, c.head_dim))?;
        let mut scores = q.matmul(&k.t()?)?;
        if let Some(m) = mask {
            scores = scores
                .reshape((b, c.n_kv_heads, rep, t, total))?
                .broadcast_add(m)?
                .reshape((b, c.n_kv_heads, rep * t, total))?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        Ok(probs
            .matmul(v)?
            .reshape((b, c.n_heads, t, c.head_dim))?
            .transpose(1, 2)?
            .reshape((b, t, c.n_heads * c.head_dim))?)
    }

    fn attention(
        &self,
        block: &Block,
        h: &Tensor,
        start: usize,
        mask: Option<&Tensor>,
        cache: Option<&mut LayerKv>,
        plan: &Plan,
    ) -> Result<Tensor> {
        let (q, k, v) = self.project_qkv(block, h, plan)?;
        // The attention scale 1/sqrt(head_dim) is folded into q's rotation.
        let q = self.rope.apply_scaled(&q, start)?;
        let k = self.rope.apply(&k, start)?;
        let (k, v) = match cache {
            Some(cache) => cache.append(&k, &v, start)?,
            None => (k, v),
        };
        let y = self.attend_grouped(&q, &k, &v, mask)?;
        plan.linear(&block.o, &y)
    }
}

/// (t, start + t) additive mask: query i (absolute start + i) sees keys <= start + i.
fn causal_mask(t: usize, start: usize, dtype: DType, device: &Device) -> Result<Option<Tensor>> {
    if t == 1 {
        return Ok(None);
    }
    let total = start + t;
    let m: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..total).map(move |j| {
                if j > start + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Ok(Some(
        Tensor::from_vec(m, (t, total), device)?.to_dtype(dtype)?,
    ))
}

impl Model {
    /// With tied embeddings, lm_head.weight and model.embed_tokens.weight are one matrix.
    fn canonical_weight_name(&self, name: &str) -> String {
        if name == "lm_head.weight" && self.lm_head.name == "model.embed_tokens.weight" {
            "model.embed_tokens.weight".into()
        } else {
            name.to_string()
        }
    }

    /// A loaded weight matrix by canonical name.
    pub fn weight(&self, name: &str) -> Option<&Tensor> {
        let name = self.canonical_weight_name(name);
        if name == "model.embed_tokens.weight" {
            return Some(&self.embed);
        }
        if name == self.lm_head.name {
            return Some(&self.lm_head.weight);
        }
        let rest = name.strip_prefix("model.layers.")?;
        let (layer, part) = rest.split_once('.')?;
        let block = self.blocks.get(layer.parse::<usize>().ok()?)?;
        Some(match part {
            "self_attn.q_proj.weight" => &block.q.weight,
            "self_attn.k_proj.weight" => &block.k.weight,
            "self_attn.v_proj.weight" => &block.v.weight,
            "self_attn.o_proj.weight" => &block.o.weight,
            "mlp.gate_proj.weight" => &block.gate.weight,
            "mlp.up_proj.weight" => &block.up.weight,
            "mlp.down_proj.weight" => &block.down.weight,
            _ => return None,
        })
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
