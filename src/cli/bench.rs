//! `mwtop bench`: prompt and decode tokens/s of this build on a device, with
//! capture off and on, the original+attacked pair as one batch, and the time
//! from a generation request to its first token. Runs where cargo does not
//! (the GPU machine), so the numbers come from the shipped binary.

use std::ops::ControlFlow;
use std::time::Instant;

use candle_core::IndexOp;
use color_eyre::eyre::{eyre, Result};
use serde::Serialize;

use mwtop::analysis::attack::{Attack, AttackMode};
use mwtop::analysis::generate::{generate, GenerateParams, DEFAULT_PROMPT};
use mwtop::analysis::massive::{self, Thresholds};
use mwtop::analysis::perplexity::EVAL_TEXT;
use mwtop::analysis::target::{self, DEFAULT_PROBE};
use mwtop::checkpoint::chat::PromptFormat;
use mwtop::model::hooks::{CaptureRequest, HookPoint, Reduction};
use mwtop::model::intervention::Interventions;
use mwtop::model::{ForwardOutput, LogitsMode, Model, ModelError, RunOptions, StepCaptures};

use super::args::RunArgs;
use super::Report;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Model path or hub id; omitted: the demo model.
    model: Option<String>,
    /// Decode steps to time.
    #[arg(long, default_value_t = 64, value_parser = super::args::at_least_one, allow_negative_numbers = true)]
    decode: usize,
    #[command(flatten)]
    run: RunArgs,
    #[arg(long)]
    json: bool,
}

impl BenchArgs {
    pub fn run(self, global: Option<String>) -> Result<()> {
        let ckpt = super::open(self.model.as_deref(), global.as_deref())?;
        let tok = ckpt.tokenizer()?;
        let loading = Instant::now();
        let mut model = self.run.load(&ckpt)?;
        let load_seconds = loading.elapsed().as_secs_f64();
        let eval = tok
            .encode(EVAL_TEXT, false)
            .map_err(|e| eyre!("tokenizer: {e}"))?;
        let (eval_ids, _) = massive::probe_tokens(&model, eval.get_ids());
        let chat = PromptFormat::new(&ckpt, &tok)
            .ids(&tok, DEFAULT_PROMPT, true)
            .map_err(|e| eyre!(e))?;
        // The pair zeroes the top-2 of the attack layer (a fallback layer
        // still times the same work).
        let d_ff = model.config().d_ff;
        let attack = target::resolve_target(
            &model,
            &tok,
            DEFAULT_PROBE,
            Thresholds::default(),
            None,
            None,
        )
        .ok()
        .map(|t| Attack::new(AttackMode::Zero, t.layer, &t.ranked, 2, d_ff, 0));
        let parameters = ckpt.parameter_count();
        let report = run(
            &mut model,
            &tok,
            &eval_ids,
            &chat,
            attack.as_ref(),
            self.decode,
        )?;
        BenchReport {
            parameters,
            load_seconds,
            ..report
        }
        .print(self.json)
    }
}

#[derive(Debug, Serialize)]
struct BenchReport {
    pub device: String,
    pub dtype: String,
    /// How the matrices are held (`stored` or `compute`), and the bytes
    /// all the weights take on the device.
    pub weights: String,
    pub weight_bytes: usize,
    /// The same on each device when the layers are split (one entry else).
    pub weight_bytes_per_device: Vec<usize>,
    /// From the opened checkpoint to the model on the device.
    pub load_seconds: f64,
    /// The checkpoint's parameter count (for time per parameter).
    pub parameters: u64,
    pub prompt_tokens: usize,
    pub prompt_tok_s: f64,
    pub prompt_tok_s_capture: f64,
    pub decode_tokens: usize,
    pub decode_tok_s: f64,
    pub decode_tok_s_capture: f64,
    /// Of one eagerly decoded token (capture off, no graph), the milliseconds
    /// the host spends in the forward call itself. On a GPU this is the time
    /// to enqueue the kernels: when it is close to 1000 / decode_tok_s_eager,
    /// decoding waits on the host, not the GPU.
    pub decode_host_ms: f64,
    /// Decode with capture off, every kernel launched on its own (no CUDA
    /// graph): what the graph saves.
    pub decode_tok_s_eager: f64,
    /// Original and attacked in one batch of two: tokens per second per row.
    pub decode_tok_s_pair: f64,
    /// From a generation request (chat prompt, pair, attack) to its first token.
    pub first_token_ms: f64,
}

/// The captures a probe asks for, used as "capture on".
fn captures() -> Vec<CaptureRequest> {
    vec![
        CaptureRequest::every_layer(HookPoint::ResidPost, Reduction::MaxAbsPerDim),
        CaptureRequest::every_layer(HookPoint::ResidPost, Reduction::MedianAbs),
        CaptureRequest::every_layer(HookPoint::ResidPost, Reduction::TopK(16)),
        CaptureRequest::every_layer(HookPoint::MlpPost, Reduction::Position(0)),
    ]
}

fn best_of<T>(n: usize, mut f: impl FnMut() -> Result<T, ModelError>) -> Result<f64, ModelError> {
    let mut best = f64::MAX;
    for _ in 0..n {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// Greedy decode of `n` tokens after `start`, one row per intervention set:
/// tokens per second per row, and seconds per step spent in `forward`.
fn decode(
    model: &Model,
    start: &[u32],
    rows: &[Interventions],
    n: usize,
    capture: Vec<CaptureRequest>,
) -> Result<(f64, f64), ModelError> {
    let b = rows.len().max(1);
    let opts = RunOptions {
        capture,
        interventions: rows.to_vec(),
        logits: LogitsMode::Last,
        defer_captures: true,
        ..Default::default()
    };
    let mut cache = model.new_cache();
    let logits = model
        .forward(&vec![start.to_vec(); b], Some(&mut cache), &opts)?
        .logits
        .expect("logits");
    let mut next: Vec<Vec<u32>> = (0..b)
        .map(|r| Ok(vec![logits.i((r, 0))?.argmax(0)?.to_scalar::<u32>()?]))
        .collect::<candle_core::Result<_>>()?;
    let t = Instant::now();
    let mut in_forward = 0.0;
    // Each step's captures are read and reduced (as a UI would) while the
    // next step computes; every step's are read before the clock stops.
    let mut previous: Option<StepCaptures> = None;
    let mut captured = 0;
    // Where the caller's time goes, for the debug log: in `forward`, waiting
    // for the previous step's reductions, and sampling.
    let (mut waiting, mut sampling) = (0.0, 0.0);
    for _ in 0..n {
        let step = Instant::now();
        let mut out = model.forward(&next, Some(&mut cache), &opts)?;
        let forwarded = step.elapsed().as_secs_f64();
        in_forward += forwarded;
        if let Some(p) = previous.take() {
            captured += p.wait()?.len();
        }
        let waited = step.elapsed().as_secs_f64();
        waiting += waited - forwarded;
        previous = Some(out.take_captures());
        let logits = out.logits.expect("logits");
        let ids = logits.squeeze(1)?.argmax(1)?.to_vec1::<u32>()?;
        sampling += step.elapsed().as_secs_f64() - waited;
        next = ids.into_iter().map(|id| vec![id]).collect();
    }
    if let Some(p) = previous {
        captured += p.wait()?.len();
    }
    let seconds = t.elapsed().as_secs_f64();
    let per_step_us = |s: f64| (s * 1e6 / n.max(1) as f64) as u64;
    tracing::debug!(
        captured,
        rows = b,
        step_us = per_step_us(seconds),
        forward_us = per_step_us(in_forward),
        wait_us = per_step_us(waiting),
        sample_us = per_step_us(sampling),
        "decode timed"
    );
    Ok((n as f64 / seconds, in_forward / n as f64))
}

fn run(
    model: &mut Model,
    tok: &tokenizers::Tokenizer,
    eval_ids: &[u32],
    chat_prompt: &[u32],
    attack: Option<&Attack>,
    decode_n: usize,
) -> Result<BenchReport, ModelError> {
    let ids = vec![eval_ids.to_vec()];
    let plain = RunOptions {
        logits: LogitsMode::Last,
        ..Default::default()
    };
    let captured = RunOptions {
        capture: captures(),
        logits: LogitsMode::Last,
        ..Default::default()
    };
    // Warm-up (kernel loading on a GPU).
    model
        .forward(&ids, None, &plain)?
        .logits
        .expect("logits")
        .to_vec3::<f32>()?;
    let sync = |o: ForwardOutput| {
        o.logits
            .expect("logits")
            .to_vec3::<f32>()
            .map_err(ModelError::from)
    };
    let p_off = best_of(3, || sync(model.forward(&ids, None, &plain)?))?;
    let p_on = best_of(3, || sync(model.forward(&ids, None, &captured)?))?;
    let start = &eval_ids[..eval_ids.len().min(20)];
    model.set_decode_graphs(false);
    let eager = decode(model, start, &[Interventions::none()], decode_n, Vec::new());
    model.set_decode_graphs(true);
    let (d_eager, host) = eager?;
    let (d_off, _) = decode(model, start, &[Interventions::none()], decode_n, Vec::new())?;
    let (d_on, _) = decode(model, start, &[Interventions::none()], decode_n, captures())?;
    let attacked = attack.map(Attack::interventions).unwrap_or_default();
    let (d_pair, _) = decode(
        model,
        start,
        &[Interventions::none(), attacked.clone()],
        decode_n,
        Vec::new(),
    )?;
    let mut first = f64::MAX;
    for _ in 0..3 {
        let params = GenerateParams {
            max_tokens: 1,
            ..Default::default()
        };
        let t = Instant::now();
        let mut at = None;
        generate(
            model,
            tok,
            chat_prompt,
            &[Interventions::none(), attacked.clone()],
            &params,
            |_, _, _| {
                at.get_or_insert_with(|| t.elapsed().as_secs_f64());
                ControlFlow::Continue(())
            },
        )?;
        first = first.min(at.unwrap_or_else(|| t.elapsed().as_secs_f64()));
    }
    Ok(BenchReport {
        device: mwtop::runtime::placement_name(model.placement()),
        dtype: format!("{:?}", model.dtype()).to_lowercase(),
        weights: format!("{:?}", model.weight_precision()).to_lowercase(),
        weight_bytes: model.weight_bytes(),
        weight_bytes_per_device: model.weight_bytes_per_device(),
        load_seconds: 0.0,
        parameters: 0,
        prompt_tokens: eval_ids.len(),
        prompt_tok_s: eval_ids.len() as f64 / p_off,
        prompt_tok_s_capture: eval_ids.len() as f64 / p_on,
        decode_tokens: decode_n,
        decode_tok_s: d_off,
        decode_tok_s_capture: d_on,
        decode_host_ms: host * 1e3,
        decode_tok_s_eager: d_eager,
        decode_tok_s_pair: d_pair,
        first_token_ms: first * 1e3,
    })
}

impl Report for BenchReport {
    fn text(&self) -> String {
        format!(
            "{} {}: prompt {:.0} tok/s ({:.0} with capture, {} tokens); decode {:.1} tok/s ({:.1} with capture, {:.1} per row as an original+attacked pair; {:.1} launching kernels one by one, host {:.2} ms of each of those tokens); first token {:.0} ms\n",
            self.device,
            self.dtype,
            self.prompt_tok_s,
            self.prompt_tok_s_capture,
            self.prompt_tokens,
            self.decode_tok_s,
            self.decode_tok_s_capture,
            self.decode_tok_s_pair,
            self.decode_tok_s_eager,
            self.decode_host_ms,
            self.first_token_ms
        )
    }

    /// One line: scripts read the last line of stdout.
    fn json(&self) -> serde_json::Result<String> {
        serde_json::to_string(self)
    }
}
