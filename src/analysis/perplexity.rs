//! Perplexity of a token sequence: exp(mean negative log-likelihood of every
//! token after the first).
//!
//! Longer than the window: a sliding window (as in the Hugging Face
//! perplexity guide). Windows start every `stride` tokens; each token is
//! scored exactly once, in the first window that holds it with at least one
//! token of context. With stride = window, windows do not overlap (cheapest,
//! least context); the default stride of half a window gives every token at
//! least half a window of context except in the first window.

use serde::Serialize;

/// The text the UI scores and `bench` times: our own encyclopedic passage (~400 tokens).
pub const EVAL_TEXT: &str = include_str!("../../assets/eval.txt");

use crate::model::intervention::Interventions;
use crate::model::{CancelToken, LogitsMode, Model, Result, RunOptions};

#[derive(Debug, Clone, Serialize)]
pub struct Perplexity {
    pub perplexity: f64,
    /// Mean negative log-likelihood (nats per token).
    pub nll: f64,
    /// Tokens in the text.
    pub tokens: usize,
    /// Tokens scored (tokens - 1).
    pub scored: usize,
    pub window: usize,
    pub stride: usize,
    /// log P(token i+1 | tokens ..=i) for every scored token (JSON only when asked for).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub logprobs: Vec<f32>,
}

/// Sliding-window settings.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub size: usize,
    pub stride: usize,
}

impl Window {
    /// Up to 2048 tokens (or the model's limit), stride half of that.
    pub fn default_for(model: &Model) -> Self {
        let size = model.max_positions().min(2048);
        Self {
            size,
            stride: size / 2,
        }
    }
}

/// Perplexity of `tokens` for each intervention set (one batch row each; an
/// empty slice means one unmodified run). All rows run in one batch.
pub fn perplexity(
    model: &Model,
    tokens: &[u32],
    rows: &[Interventions],
    window: Window,
) -> Result<Vec<Perplexity>> {
    perplexity_cancellable(model, tokens, rows, window, None)
}

/// [`perplexity`] that stops with `ModelError::Cancelled` once `cancel` fires.
pub fn perplexity_cancellable(
    model: &Model,
    tokens: &[u32],
    rows: &[Interventions],
    window: Window,
    cancel: Option<CancelToken>,
) -> Result<Vec<Perplexity>> {
    let n = tokens.len();
    let b = rows.len().max(1);
    if n < 2 {
        return Err(crate::model::ModelError::Invalid(format!(
            "perplexity needs at least 2 tokens, the text has {n}"
        )));
    }
    let max = model.max_positions();
    if window.size < 2 || window.size > max {
        return Err(crate::model::ModelError::Invalid(format!(
            "the window (--window) must hold 2 to {max} tokens (the model's context), not {}",
            window.size
        )));
    }
    if window.stride == 0 || window.stride >= window.size {
        return Err(crate::model::ModelError::Invalid(format!(
            "the stride (--stride) must be 1 to {} tokens (less than the window of {}), not {}",
            window.size - 1,
            window.size,
            window.stride
        )));
    }
    let (size, stride) = (window.size, window.stride);
    let mut nll = vec![0f64; b];
    let mut logprobs: Vec<Vec<f32>> = vec![Vec::with_capacity(n - 1); b];
    let mut scored_upto = 1usize; // next token index to score
    let mut begin = 0usize;
    loop {
        let end = (begin + size).min(n);
        let chunk = &tokens[begin..end];
        let batch: Vec<Vec<u32>> = vec![chunk.to_vec(); b];
        let opts = RunOptions {
            interventions: rows.to_vec(),
            logits: LogitsMode::NextToken,
            cancel: cancel.clone(),
            ..Default::default()
        };
        let scores = model
            .forward(&batch, None, &opts)?
            .logits
            .expect("next-token log-probabilities were asked for")
            .to_vec2::<f32>()?;
        for (r, (lp, total)) in scores.iter().zip(nll.iter_mut()).enumerate() {
            // lp[i] scores token begin + i + 1.
            for (i, v) in lp.iter().enumerate() {
                if begin + i + 1 >= scored_upto {
                    *total -= *v as f64;
                    logprobs[r].push(*v);
                }
            }
        }
        scored_upto = end;
        if end == n {
            break;
        }
        begin += stride;
    }
    let scored = n - 1;
    Ok(nll
        .into_iter()
        .zip(logprobs)
        .map(|(total, logprobs)| {
            let mean = total / scored as f64;
            Perplexity {
                perplexity: mean.exp(),
                nll: mean,
                tokens: n,
                scored,
                window: size,
                stride,
                logprobs,
            }
        })
        .collect())
}
