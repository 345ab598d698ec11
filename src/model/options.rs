//! What a forward is asked to do: which logits, captures,
//! interventions, adapters and batching, and how it is cancelled.

use super::branches::Branches;
use super::hooks::CaptureRequest;
use super::intervention::Interventions;
use super::lora;

/// Which logits a forward returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsMode {
    /// (batch, tokens, vocab): every position (perplexity, comparisons).
    All,
    /// (batch, 1, vocab): only the last position (generation).
    Last,
    /// No logits (activation-only probes skip the output head).
    None,
    /// (n, vocab): only the positions [`RunOptions::selected`] lists (a
    /// training loss needs the response's positions, not the prompt's).
    Selected,
    /// (batch, tokens - 1) log-probabilities: entry p of row r is
    /// log P(tokens[r][p + 1] | tokens[r][..=p]), computed a chunk of
    /// positions at a time so the (tokens, vocab) logits of a long window
    /// never exist at once (perplexity).
    NextToken,
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
    /// Left padding, one count per row: positions below it are hidden as
    /// keys, so rows of different lengths share one batch (and relative
    /// positions, all RoPE sees, are those of the unpadded row). Give the
    /// same counts to every run over one cache.
    pub key_padding: Option<Vec<usize>>,
    /// LoRA adapters applied on the fly (training, or an unmerged adapter).
    pub lora: Option<std::sync::Arc<lora::Lora>>,
    /// MacDrop's dropped elements of massive rows, for this run only.
    pub row_drop: Option<lora::RowDrop>,
    /// Only ops with a backward (candle's fused softmax, RMSNorm and RoPE
    /// kernels have none and would stop gradients silently): for training.
    pub differentiable: bool,
    /// Flat positions (row * tokens + position) for [`LogitsMode::Selected`].
    pub selected: Vec<u32>,
    /// Rows holding a shared prefix and branches (see [`branches`]); a run
    /// without a cache, padding or gradients.
    pub branches: Option<Branches>,
    /// A replayed decode step returns its captures as
    /// [`ForwardOutput::pending`], copied to the host but reduced only when
    /// read, so the caller can reduce them while the next step runs
    /// (other runs return them as usual).
    pub defer_captures: bool,
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
            key_padding: None,
            lora: None,
            row_drop: None,
            differentiable: false,
            selected: Vec::new(),
            branches: None,
            defer_captures: false,
        }
    }
}
