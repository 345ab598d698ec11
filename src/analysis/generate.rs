//! Generation: greedy or sampled (temperature, top-p, seed), tokens streamed
//! as they come, several intervention sets side by side as one batch (the
//! original and the attacked model share one forward per step).

use std::ops::ControlFlow;

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use serde::Serialize;

use crate::model::hooks::{CaptureRequest, Captured, HookPoint, Reduction};
use crate::model::intervention::Interventions;
use crate::model::{CancelToken, LogitsMode, Model, Result, RunOptions, StepCaptures};

/// The prompt the UI starts with (and `bench` times as a chat prompt).
pub const DEFAULT_PROMPT: &str = "What is the capital of France?";

#[derive(Debug, Clone, Serialize)]
pub struct GenerateParams {
    pub max_tokens: usize,
    /// 0 means greedy (argmax).
    pub temperature: f64,
    pub top_p: Option<f64>,
    pub seed: u64,
    pub stop_at_eos: bool,
    /// Records, for every generated token, each layer's largest states
    /// (see [`TokenStates`]) from the forward that chose it.
    pub states: bool,
    /// Stops the generation (as Cancelled) when a newer request supersedes it.
    #[serde(skip)]
    pub cancel: Option<CancelToken>,
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self {
            max_tokens: 64,
            temperature: 0.0,
            top_p: None,
            seed: 299_792_458,
            stop_at_eos: true,
            states: false,
            cancel: None,
        }
    }
}

impl GenerateParams {
    /// Refuses settings that would be ignored or undefined: a temperature
    /// that is negative or not a number, a top-p outside (0, 1].
    pub fn check(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(crate::model::ModelError::Invalid(format!(
                "--temperature must be a finite number >= 0 (0 is greedy), got {}",
                self.temperature
            )));
        }
        if let Some(p) = self
            .top_p
            .filter(|p| !(p.is_finite() && *p > 0.0 && *p <= 1.0))
        {
            return Err(crate::model::ModelError::Invalid(format!(
                "--top-p must lie in (0, 1], got {p}"
            )));
        }
        Ok(())
    }

    fn sampling(&self) -> Sampling {
        match (self.temperature, self.top_p) {
            (t, _) if t <= 0.0 => Sampling::ArgMax,
            (t, Some(p)) if p < 1.0 => Sampling::TopP { p, temperature: t },
            (t, _) => Sampling::All { temperature: t },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Eos,
    MaxTokens,
    Cancelled,
    /// The position tables ran out.
    Context,
}

#[derive(Debug, Clone, Serialize)]
pub struct Generated {
    pub tokens: Vec<u32>,
    /// Each token's natural log-probability under the model's own
    /// distribution (the logits' log-softmax, before any temperature or
    /// top-p): what two devices or two tools are compared by.
    pub logprobs: Vec<f32>,
    pub text: String,
    pub stop: StopReason,
    /// With [`GenerateParams::states`], one entry per token.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub states: Vec<TokenStates>,
}

/// How many of a state's largest entries a [`TokenStates`] keeps.
pub const STATE_TOP: usize = 4;

/// Where the massive activations are while a token is chosen: at the last
/// input position, each layer's [`STATE_TOP`] largest |values| (dim,
/// value) of the residual stream after attention and after the block, and
/// of the MLP's gated product (the input of down_proj), largest first.
#[derive(Debug, Clone, Serialize)]
pub struct TokenStates {
    pub resid_mid: Vec<Vec<(u32, f32)>>,
    pub mlp_post: Vec<Vec<(u32, f32)>>,
    pub resid_post: Vec<Vec<(u32, f32)>>,
}

/// The hook points [`TokenStates`] reads, at the last position of each
/// forward (`Position` past the end is the last).
fn state_captures() -> Vec<CaptureRequest> {
    [
        HookPoint::ResidMid,
        HookPoint::MlpPost,
        HookPoint::ResidPost,
    ]
    .into_iter()
    .map(|p| CaptureRequest::every_layer(p, Reduction::Position(usize::MAX)))
    .collect()
}

impl TokenStates {
    /// Batch row `row`'s states from one forward's captures.
    fn of(captures: &[Captured], row: usize, layers: usize) -> Self {
        let top = |point: HookPoint| -> Vec<Vec<(u32, f32)>> {
            (0..layers)
                .map(|layer| {
                    captures
                        .iter()
                        .find(|c| c.hook.layer == layer && c.hook.point == point)
                        .map(|c| {
                            let d = c.shape.last().copied().unwrap_or(0);
                            largest(&c.values[row * d..(row + 1) * d])
                        })
                        .unwrap_or_default()
                })
                .collect()
        };
        Self {
            resid_mid: top(HookPoint::ResidMid),
            mlp_post: top(HookPoint::MlpPost),
            resid_post: top(HookPoint::ResidPost),
        }
    }
}

/// The [`STATE_TOP`] largest |values| of `v` as (index, value), largest
/// first (ties: the lower index first).
fn largest(v: &[f32]) -> Vec<(u32, f32)> {
    let mut idx: Vec<u32> = (0..v.len() as u32).collect();
    idx.sort_by(|&a, &b| {
        v[b as usize]
            .abs()
            .total_cmp(&v[a as usize].abs())
            .then(a.cmp(&b))
    });
    idx.into_iter()
        .take(STATE_TOP)
        .map(|i| (i, v[i as usize]))
        .collect()
}

/// Incremental detokenization: emits only text that is complete (no
/// half-decoded UTF-8 sequence at the end).
struct TextStream {
    tokens: Vec<u32>,
    emitted: usize,
    /// Tokens held back waiting for the rest of a UTF-8 character.
    held: usize,
}

impl TextStream {
    fn push(&mut self, tok: &tokenizers::Tokenizer, id: u32) -> String {
        self.tokens.push(id);
        let text = tok.decode(&self.tokens, true).unwrap_or_default();
        // A character spans at most 4 byte tokens: after that, a replacement
        // character is really in the output (a broken model emits such bytes).
        let incomplete = text.ends_with('\u{FFFD}') && self.held < 3;
        if incomplete || text.len() < self.emitted || !text.is_char_boundary(self.emitted) {
            self.held += 1;
            return String::new();
        }
        self.held = 0;
        let piece = text[self.emitted..].to_string();
        self.emitted = text.len();
        piece
    }
}

/// Generates from `prompt` once per intervention set (one batch row each).
/// `on_token(row, id, text_piece)` sees every token as it comes; returning
/// `Break` cancels the whole generation.
pub fn generate(
    model: &Model,
    tokenizer: &tokenizers::Tokenizer,
    prompt: &[u32],
    rows: &[Interventions],
    params: &GenerateParams,
    mut on_token: impl FnMut(usize, u32, &str) -> ControlFlow<()>,
) -> Result<Vec<Generated>> {
    params.check()?;
    if prompt.len() >= model.max_positions() {
        return Err(crate::model::ModelError::Invalid(format!(
            "the prompt has {} tokens; the model's context holds {}, with room for none to generate",
            prompt.len(),
            model.max_positions()
        )));
    }
    let b = rows.len().max(1);
    let eos = &model.config().eos_token_ids;
    let mut samplers: Vec<LogitsProcessor> = (0..b)
        .map(|_| LogitsProcessor::from_sampling(params.seed, params.sampling()))
        .collect();
    let mut streams: Vec<TextStream> = (0..b)
        .map(|_| TextStream {
            tokens: Vec::new(),
            emitted: 0,
            held: 0,
        })
        .collect();
    let mut out: Vec<Generated> = (0..b)
        .map(|_| Generated {
            tokens: Vec::new(),
            logprobs: Vec::new(),
            text: String::new(),
            stop: StopReason::MaxTokens,
            states: Vec::new(),
        })
        .collect();
    let mut done = vec![false; b];
    let mut cache = model.new_cache();
    let opts = RunOptions {
        capture: if params.states {
            state_captures()
        } else {
            Vec::new()
        },
        interventions: rows.to_vec(),
        logits: LogitsMode::Last,
        cancel: params.cancel.clone(),
        defer_captures: true,
        ..Default::default()
    };
    let layers = model.config().n_layers;
    // A step's states, read while the next step computes: its captures and
    // the rows that took a token at it.
    let mut pending: Option<(StepCaptures, Vec<usize>)> = None;
    let attach =
        |out: &mut Vec<Generated>, step: Option<(StepCaptures, Vec<usize>)>| -> Result<()> {
            if let Some((captures, rows)) = step {
                let captures = captures.wait()?;
                if params.states {
                    for r in rows {
                        out[r].states.push(TokenStates::of(&captures, r, layers));
                    }
                }
            }
            Ok(())
        };
    let mut input: Vec<Vec<u32>> = vec![prompt.to_vec(); b];
    for _ in 0..params.max_tokens {
        if cache.len() + input[0].len() > model.max_positions() {
            for (r, g) in out.iter_mut().enumerate() {
                if !done[r] {
                    g.stop = StopReason::Context;
                }
            }
            break;
        }
        let mut output = match model.forward(&input, Some(&mut cache), &opts) {
            Err(crate::model::ModelError::Cancelled) => {
                attach(&mut out, pending.take())?;
                for (g, d) in out.iter_mut().zip(done.iter()) {
                    if !d {
                        g.stop = StopReason::Cancelled;
                    }
                }
                return Ok(finish(out, tokenizer));
            }
            other => other,
        }?;
        attach(&mut out, pending.take())?;
        let step_captures = output.take_captures();
        let mut took = Vec::with_capacity(b);
        let logits = output.logits.expect("last logits were asked for");
        let mut next = Vec::with_capacity(b);
        for r in 0..b {
            // One copy of the row to the host serves the sampler and the
            // log-probability.
            let row = logits.i((r, 0))?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
            // A NaN would be sampled as some token and reported as a
            // log-probability of NaN: refuse it (an overflow in f16, a
            // weight or an edit that is not finite).
            if row.iter().any(|v| v.is_nan()) {
                return Err(crate::model::ModelError::Invalid(format!(
                    "generation stopped at token {}: the model's logits are not numbers (NaN); a weight, an edit or the dtype's range is at fault",
                    out[r].tokens.len() + 1
                )));
            }
            let id = samplers[r].sample(&Tensor::new(row.as_slice(), &Device::Cpu)?)?;
            next.push(vec![id]);
            if done[r] {
                continue;
            }
            if params.stop_at_eos && eos.contains(&id) {
                done[r] = true;
                out[r].stop = StopReason::Eos;
                continue;
            }
            out[r].tokens.push(id);
            out[r].logprobs.push(log_softmax_at(&row, id as usize));
            took.push(r);
            let piece = streams[r].push(tokenizer, id);
            out[r].text.push_str(&piece);
            if on_token(r, id, &piece).is_break() {
                attach(&mut out, Some((step_captures, took)))?;
                for (g, d) in out.iter_mut().zip(done.iter()) {
                    if !d {
                        g.stop = StopReason::Cancelled;
                    }
                }
                return Ok(finish(out, tokenizer));
            }
        }
        pending = Some((step_captures, took));
        if done.iter().all(|&d| d) {
            break;
        }
        input = next;
    }
    attach(&mut out, pending.take())?;
    Ok(finish(out, tokenizer))
}

/// log softmax(logits)[id], summed in f64.
fn log_softmax_at(logits: &[f32], id: usize) -> f32 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let sum: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
    (logits[id] as f64 - max - sum.ln()) as f32
}

/// The final text is the decode of all tokens (the stream may hold back a partial character).
fn finish(mut out: Vec<Generated>, tokenizer: &tokenizers::Tokenizer) -> Vec<Generated> {
    for g in &mut out {
        g.text = tokenizer.decode(&g.tokens, true).unwrap_or_default();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{largest, log_softmax_at};

    #[test]
    fn largest_magnitudes_first() {
        let v = [0.5, -9.0, 3.0, 9.0, -0.1, 2.0];
        assert_eq!(largest(&v), vec![(1, -9.0), (3, 9.0), (2, 3.0), (5, 2.0)]);
        assert_eq!(largest(&[1.0]), vec![(0, 1.0)]);
    }

    #[test]
    fn log_probability_of_a_token() {
        // softmax([0, ln 3]) = [1/4, 3/4]; shifting every logit changes nothing.
        let l3 = 3f32.ln();
        assert!((log_softmax_at(&[0.0, l3], 1) - 0.75f32.ln()).abs() < 1e-7);
        // (100 + ln 3 rounds to f32 at ~8e-6.)
        assert!((log_softmax_at(&[100.0, 100.0 + l3], 0) - 0.25f32.ln()).abs() < 2e-5);
        // A logit far below the rest has a log-probability of about itself.
        assert!((log_softmax_at(&[0.0, -50.0], 1) + 50.0).abs() < 1e-5);
    }
}
