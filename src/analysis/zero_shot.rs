//! Zero-shot multiple-choice accuracy, scored as lm-evaluation-harness
//! scores it: each choice's log-likelihood is the sum of log P over the
//! tokens of its continuation given its context; `acc` takes the argmax of
//! those sums, `acc_norm` the argmax of each sum over the length in
//! characters of the choice text (the continuation without its leading
//! space). Tokenized as the harness does: whole = tok(context +
//! continuation), ctx = tok(context), the continuation is whole[len(ctx)..];
//! trailing spaces of a context move to its continuation; BOS first when the
//! model's tokenizer adds one. A request longer than the model's context
//! (which the harness would left-truncate) or with an empty choice text
//! (which acc_norm would divide by zero) is refused, and so is a
//! log-likelihood that is not finite.
//!
//! Fast without approximation: one row per question holds the tokens its
//! choices share once, then each choice's own tokens as a branch that
//! attends to that prefix and to itself only, at the positions it would
//! have alone (many questions to a batch, one forward); only the positions
//! whose next token is scored reach the output head.

use candle_core::{DType, Tensor, D};
use rayon::prelude::*;
use serde::Serialize;
use tokenizers::Tokenizer;

use crate::model::intervention::Interventions;
use crate::model::{Branches, CancelToken, LogitsMode, Model, ModelError, Result, RunOptions};
use crate::tasks::Question;

/// One question tokenized: per choice, the whole sequence (BOS first where
/// the tokenizer adds one) and where its continuation starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub doc_id: u64,
    pub seqs: Vec<Vec<u32>>,
    pub cont_start: Vec<usize>,
    /// Characters of each choice text (acc_norm's divisor).
    pub chars: Vec<usize>,
    pub label: usize,
}

/// The BOS id when `tok` adds one to an encoded text, as Llama's and
/// Gemma's tokenizers do (and GPT-2-style ones do not).
pub fn bos_added(tok: &Tokenizer, bos: Option<u32>) -> Option<u32> {
    let bos = bos?;
    let ids = tok.encode("a", true).ok()?;
    (ids.get_ids().first() == Some(&bos)).then_some(bos)
}

/// Every question of a task tokenized for `model` (its BOS where the
/// tokenizer adds one, its context as the limit).
pub fn encode_questions(
    model: &Model,
    tok: &Tokenizer,
    questions: &[Question],
) -> Result<Vec<Encoded>> {
    let bos = bos_added(tok, model.config().bos_token_id);
    let context = model
        .max_positions()
        .min(model.config().max_position_embeddings);
    // Tokenizing tens of thousands of requests takes longer than scoring
    // them on a GPU when done on one thread.
    questions
        .par_iter()
        .map(|q| encode(tok, bos, q, context))
        .collect()
}

/// Tokenizes a question's choices (see the module doc); a sequence whose
/// inputs (all tokens but the last) exceed `max_positions` is refused.
pub fn encode(
    tok: &Tokenizer,
    bos: Option<u32>,
    q: &Question,
    max_positions: usize,
) -> Result<Encoded> {
    let ids = |s: &str| -> Result<Vec<u32>> {
        Ok(tok
            .encode(s, false)
            .map_err(|e| ModelError::Invalid(format!("tokenizer: {e}")))?
            .get_ids()
            .to_vec())
    };
    let mut out = Encoded {
        doc_id: q.doc_id,
        seqs: Vec::new(),
        cont_start: Vec::new(),
        chars: Vec::new(),
        label: q.label,
    };
    for c in &q.choices {
        let trimmed = c.context.trim_end_matches(' ');
        let moved = &c.context[trimmed.len()..];
        let continuation = format!("{moved}{}", c.continuation);
        let mut whole: Vec<u32> = bos.into_iter().collect();
        let lead = whole.len();
        let ctx_len = lead + ids(trimmed)?.len();
        whole.extend(ids(&format!("{trimmed}{continuation}"))?);
        if whole.len() <= ctx_len || ctx_len == 0 {
            return Err(ModelError::Invalid(format!(
                "doc {}: a choice with no continuation tokens, or an empty context",
                q.doc_id
            )));
        }
        if whole.len() > max_positions + 1 {
            return Err(ModelError::Invalid(format!(
                "doc {}: {} tokens exceed the model's context of {max_positions} \
                 (lm-evaluation-harness would cut its start off)",
                q.doc_id,
                whole.len() - 1
            )));
        }
        let text = c.continuation.strip_prefix(' ').unwrap_or(&c.continuation);
        let chars = text.chars().count();
        if chars == 0 {
            return Err(ModelError::Invalid(format!(
                "doc {}: a choice with an empty text (acc_norm divides by its length)",
                q.doc_id
            )));
        }
        out.chars.push(chars);
        out.seqs.push(whole);
        out.cont_start.push(ctx_len);
    }
    Ok(out)
}

/// Tokens per forward (rows times the longest row) and the bytes of f32
/// logits at scored positions one forward may hold.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub tokens: usize,
    pub logit_bytes: usize,
}

impl Budget {
    /// 2048 tokens on the CPU; 4096 on a GPU, where it scored the ten
    /// tasks' subset fastest on the H200 (1.38 s; 1.48 s at 2048, 1.51 s at
    /// 8192, 1.63 s at 16384: longer rows of a batch cost attention's
    /// square, shorter ones launches).
    pub fn for_model(model: &Model) -> Self {
        if model.device().is_cpu() {
            Self {
                tokens: 2048,
                logit_bytes: 256 << 20,
            }
        } else {
            Self {
                tokens: 4096,
                logit_bytes: 2 << 30,
            }
        }
    }
}

/// How one question is laid out as one row: the prefix all its choices
/// share (never past the last context token, whose logits score the first
/// continuation token), then each choice's remaining inputs as a branch.
struct Layout {
    prefix: usize,
    /// Tokens of the row.
    len: usize,
    /// Positions whose next token is scored.
    scored: usize,
}

fn layout_of(e: &Encoded) -> Layout {
    let first = &e.seqs[0];
    let common = e.seqs[1..].iter().fold(first.len(), |n, s| {
        n.min(first.iter().zip(s).take_while(|(a, b)| a == b).count())
    });
    let prefix = common
        .min(*e.cont_start.iter().min().unwrap_or(&1))
        .saturating_sub(1);
    let len = prefix + e.seqs.iter().map(|s| s.len() - 1 - prefix).sum::<usize>();
    let scored = e
        .seqs
        .iter()
        .zip(&e.cont_start)
        .map(|(s, &c)| s.len() - c)
        .sum();
    Layout {
        prefix,
        len,
        scored,
    }
}

/// The summed log-likelihood of every choice of every question (f64, in
/// the questions' order), under `interventions`; `progress(done, total)`
/// after each batch, in questions.
pub fn score(
    model: &Model,
    questions: &[Encoded],
    interventions: &Interventions,
    budget: Budget,
    cancel: Option<&CancelToken>,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<Vec<f64>>> {
    let layouts: Vec<Layout> = questions.iter().map(layout_of).collect();
    let mut order: Vec<usize> = (0..questions.len()).collect();
    order.sort_by_key(|&q| layouts[q].len);
    let vocab = model.config().vocab_size;
    // Selected logits, their log-softmax and its temporaries.
    let max_scored = (budget.logit_bytes / (vocab * 4 * 3)).max(1);
    let mut out: Vec<Vec<f64>> = vec![Vec::new(); questions.len()];
    let mut done = 0;
    let mut i = 0;
    while i < order.len() {
        // Grow the batch (rows sorted by length) while it stays within the
        // budget; a question alone always runs.
        let (mut scored, mut j) = (0, i);
        while j < order.len() {
            let l = &layouts[order[j]];
            let fits = (j - i + 1) * l.len <= budget.tokens && scored + l.scored <= max_scored;
            if j > i && !fits {
                break;
            }
            (scored, j) = (scored + l.scored, j + 1);
        }
        let batch = &order[i..j];
        let scores = score_batch(model, questions, &layouts, batch, interventions, cancel)?;
        for (&q, s) in batch.iter().zip(scores) {
            out[q] = s;
        }
        done += batch.len();
        progress(done, questions.len());
        i = j;
    }
    Ok(out)
}

/// One forward over `batch`'s questions, one branched row each (see
/// [`crate::model::branches`]), the output head only at scored positions.
fn score_batch(
    model: &Model,
    questions: &[Encoded],
    layouts: &[Layout],
    batch: &[usize],
    interventions: &Interventions,
    cancel: Option<&CancelToken>,
) -> Result<Vec<Vec<f64>>> {
    const PAD: u32 = 0;
    const PAD_SEGMENT: u32 = u32::MAX;
    let width = batch.iter().map(|&q| layouts[q].len).max().unwrap_or(1);
    let mut rows = Vec::with_capacity(batch.len());
    let (mut positions, mut segments) = (Vec::new(), Vec::new());
    let (mut selected, mut targets, mut owners) = (Vec::new(), Vec::new(), Vec::new());
    for (slot, &q) in batch.iter().enumerate() {
        let (e, p) = (&questions[q], layouts[q].prefix);
        let mut row: Vec<u32> = e.seqs[0][..p].to_vec();
        positions.extend(0..p as u32);
        segments.extend(std::iter::repeat_n(0, p));
        for (c, s) in e.seqs.iter().enumerate() {
            let offset = row.len();
            row.extend_from_slice(&s[p..s.len() - 1]);
            positions.extend(p as u32..(s.len() - 1) as u32);
            segments.extend(std::iter::repeat_n(c as u32 + 1, s.len() - 1 - p));
            for i in e.cont_start[c] - 1..s.len() - 1 {
                selected.push((slot * width + offset + i - p) as u32);
                targets.push(s[i + 1]);
                owners.push((slot, c));
            }
        }
        let pad = width - row.len();
        row.resize(width, PAD);
        positions.extend(std::iter::repeat_n(0, pad));
        segments.extend(std::iter::repeat_n(PAD_SEGMENT, pad));
        rows.push(row);
    }
    let opts = RunOptions {
        interventions: vec![interventions.clone()],
        logits: LogitsMode::Selected,
        selected,
        branches: Some(Branches {
            positions,
            segments,
        }),
        cancel: cancel.cloned(),
        ..Default::default()
    };
    let logits = model
        .forward(&rows, None, &opts)?
        .logits
        .ok_or_else(|| ModelError::Invalid("no logits".into()))?;
    let logp = target_logprobs(&logits, targets)?;
    let mut out: Vec<Vec<f64>> = batch
        .iter()
        .map(|&q| vec![0.0; questions[q].seqs.len()])
        .collect();
    for (&(slot, c), &lp) in owners.iter().zip(&logp) {
        out[slot][c] += lp as f64;
    }
    for (slot, &q) in batch.iter().enumerate() {
        if let Some((c, sum)) = out[slot].iter().enumerate().find(|(_, x)| !x.is_finite()) {
            return Err(ModelError::Invalid(format!(
                "doc {}: the log-likelihood of choice {c} is {sum} (the model's \
                 outputs are not finite)",
                questions[q].doc_id
            )));
        }
    }
    Ok(out)
}

/// log P(target) of each row of (n, vocab) logits, on the device.
fn target_logprobs(logits: &Tensor, targets: Vec<u32>) -> Result<Vec<f32>> {
    let n = logits.dim(0)?;
    let target = Tensor::from_vec(targets, (n, 1), logits.device())?;
    let picked = logits.gather(&target, 1)?.squeeze(1)?;
    let max = logits.max_keepdim(D::Minus1)?;
    let lse = logits
        .broadcast_sub(&max)?
        .exp()?
        .sum_keepdim(D::Minus1)?
        .log()?
        .add(&max)?
        .squeeze(1)?;
    Ok((picked - lse)?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
}

/// One task's accuracy, with lm-evaluation-harness's standard errors (the
/// sample standard deviation over sqrt(n); None below two questions).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskScore {
    pub task: String,
    pub n: usize,
    pub acc: f64,
    pub acc_stderr: Option<f64>,
    pub acc_norm: f64,
    pub acc_norm_stderr: Option<f64>,
}

/// The first index of the largest value (numpy's argmax).
fn argmax(v: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, x) in v.enumerate() {
        if x > best.1 {
            best = (i, x);
        }
    }
    best.0
}

fn mean_stderr(hits: &[bool]) -> (f64, Option<f64>) {
    let n = hits.len() as f64;
    let mean = hits.iter().filter(|&&h| h).count() as f64 / n.max(1.0);
    let stderr = (hits.len() > 1).then(|| (mean * (1.0 - mean) / (n - 1.0)).sqrt());
    (mean, stderr)
}

/// acc and acc_norm of one task from its questions and their scores.
pub fn task_score(task: &str, questions: &[Encoded], scores: &[Vec<f64>]) -> TaskScore {
    let (mut acc, mut norm) = (Vec::new(), Vec::new());
    for (e, s) in questions.iter().zip(scores) {
        acc.push(argmax(s.iter().copied()) == e.label);
        let per_char = s.iter().zip(&e.chars).map(|(&x, &c)| x / c as f64);
        norm.push(argmax(per_char) == e.label);
    }
    let (a, a_se) = mean_stderr(&acc);
    let (b, b_se) = mean_stderr(&norm);
    TaskScore {
        task: task.to_string(),
        n: questions.len(),
        acc: a,
        acc_stderr: a_se,
        acc_norm: b,
        acc_norm_stderr: b_se,
    }
}

/// The unweighted mean over tasks (each task counts once, as the paper
/// averages), its standard error from the tasks' own.
pub fn average(scores: &[TaskScore]) -> TaskScore {
    let t = scores.len().max(1) as f64;
    let mean = |f: fn(&TaskScore) -> f64| scores.iter().map(f).sum::<f64>() / t;
    let se = |f: fn(&TaskScore) -> Option<f64>| {
        scores.iter().map(f).sum::<Option<f64>>().map(|_| {
            scores
                .iter()
                .map(|s| f(s).unwrap_or(0.0).powi(2))
                .sum::<f64>()
                .sqrt()
                / t
        })
    };
    TaskScore {
        task: "average".into(),
        n: scores.iter().map(|s| s.n).sum(),
        acc: mean(|s| s.acc),
        acc_stderr: se(|s| s.acc_stderr),
        acc_norm: mean(|s| s.acc_norm),
        acc_norm_stderr: se(|s| s.acc_norm_stderr),
    }
}
