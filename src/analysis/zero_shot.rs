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
//! Fast without approximation: the tokens a question's choices share are
//! run once (left-padded, many questions to a batch), then each choice
//! continues from that prefix's cache as one row of a second batch; only
//! those rows reach the output head.

use candle_core::{DType, Tensor, D};
use serde::Serialize;
use tokenizers::Tokenizer;

use crate::model::intervention::Interventions;
use crate::model::{CancelToken, LogitsMode, Model, ModelError, Result, RunOptions};
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
    questions
        .iter()
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

/// Tokens per forward: the prefix batch's rows times its length, and the
/// choice batch's likewise (their logits are the larger memory).
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub tokens: usize,
    /// Bytes of f32 logits one choice batch may hold.
    pub logit_bytes: usize,
}

impl Budget {
    /// Larger batches on a GPU, where one forward's launches dominate.
    pub fn for_model(model: &Model) -> Self {
        if model.device().is_cpu() {
            Self {
                tokens: 2048,
                logit_bytes: 256 << 20,
            }
        } else {
            Self {
                tokens: 16384,
                logit_bytes: 2 << 30,
            }
        }
    }
}

/// How one question is run: the prefix all its choices share (never past
/// the last context token, whose logits score the first continuation token).
struct Plan {
    prefix: usize,
    suffix_max: usize,
}

fn plan_of(e: &Encoded) -> Plan {
    let first = &e.seqs[0];
    let common = e.seqs[1..].iter().fold(first.len(), |n, s| {
        n.min(first.iter().zip(s).take_while(|(a, b)| a == b).count())
    });
    let prefix = common.min(*e.cont_start.iter().min().unwrap_or(&1)) - 1;
    let suffix_max = e
        .seqs
        .iter()
        .map(|s| s.len() - 1 - prefix)
        .max()
        .unwrap_or(1);
    Plan { prefix, suffix_max }
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
    let plans: Vec<Plan> = questions.iter().map(plan_of).collect();
    let mut order: Vec<usize> = (0..questions.len()).collect();
    order.sort_by_key(|&q| (plans[q].prefix, plans[q].suffix_max));
    let vocab = model.config().vocab_size;
    let max_rows_tokens = (budget.logit_bytes / (vocab * 4 * 3)).max(1);
    let mut out: Vec<Vec<f64>> = vec![Vec::new(); questions.len()];
    let mut done = 0;
    let mut i = 0;
    while i < order.len() {
        // Grow the batch while both forwards stay within the budget.
        let (mut lp, mut ls, mut rows, mut j) = (0, 0, 0, i);
        while j < order.len() {
            let (p, e) = (&plans[order[j]], &questions[order[j]]);
            let (nlp, nls, nrows) = (lp.max(p.prefix), ls.max(p.suffix_max), rows + e.seqs.len());
            let fits = (j - i + 1) * nlp <= budget.tokens
                && nrows * nls <= budget.tokens.min(max_rows_tokens);
            if j > i && !fits {
                break;
            }
            (lp, ls, rows, j) = (nlp, nls, nrows, j + 1);
        }
        let batch = &order[i..j];
        let cap = budget.tokens.min(max_rows_tokens).max(ls);
        let scores = score_batch(
            model,
            questions,
            &plans,
            batch,
            lp,
            cap,
            interventions,
            cancel,
        )?;
        for (&q, s) in batch.iter().zip(scores) {
            out[q] = s;
        }
        done += batch.len();
        progress(done, questions.len());
        i = j;
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn score_batch(
    model: &Model,
    questions: &[Encoded],
    plans: &[Plan],
    batch: &[usize],
    lp: usize,
    group_tokens: usize,
    interventions: &Interventions,
    cancel: Option<&CancelToken>,
) -> Result<Vec<Vec<f64>>> {
    const PAD: u32 = 0;
    let opts = |pads: Vec<usize>, logits| RunOptions {
        interventions: vec![interventions.clone()],
        logits,
        cancel: cancel.cloned(),
        key_padding: Some(pads),
        ..Default::default()
    };
    // The shared prefixes, left-padded to one length.
    let mut cache = None;
    if lp > 0 {
        let rows: Vec<Vec<u32>> = batch
            .iter()
            .map(|&q| {
                let p = plans[q].prefix;
                let mut r = vec![PAD; lp - p];
                r.extend_from_slice(&questions[q].seqs[0][..p]);
                r
            })
            .collect();
        let pads = batch.iter().map(|&q| lp - plans[q].prefix).collect();
        let mut c = model.new_cache_exact(lp);
        model.forward(&rows, Some(&mut c), &opts(pads, LogitsMode::None))?;
        cache = Some(c);
    }
    // One row per choice: its tokens after the prefix. Rows run shortest
    // first in groups of similar length, each right-padded to its longest.
    let mut jobs: Vec<(usize, usize, usize)> = Vec::new(); // (slot, choice, length)
    for (slot, &q) in batch.iter().enumerate() {
        let p = plans[q].prefix;
        for (c, s) in questions[q].seqs.iter().enumerate() {
            jobs.push((slot, c, s.len() - 1 - p));
        }
    }
    jobs.sort_by_key(|&(.., len)| len);
    let mut out: Vec<Vec<f64>> = batch
        .iter()
        .map(|&q| vec![0.0; questions[q].seqs.len()])
        .collect();
    let mut start = 0;
    while start < jobs.len() {
        let shortest = jobs[start].2;
        let mut end = start + 1;
        while end < jobs.len()
            && jobs[end].2 <= shortest + shortest / 4 + 1
            && (end + 1 - start) * jobs[end].2 <= group_tokens
        {
            end += 1;
        }
        let group = &jobs[start..end];
        let ls = group[group.len() - 1].2;
        let (mut rows, mut targets, mut owners, mut pads) = (vec![], vec![], vec![], vec![]);
        for &(slot, c, _) in group {
            let q = batch[slot];
            let (p, s) = (plans[q].prefix, &questions[q].seqs[c]);
            let mut r = s[p..s.len() - 1].to_vec();
            let mut t = s[p + 1..].to_vec();
            r.resize(ls, PAD);
            t.resize(ls, PAD);
            rows.push(r);
            targets.extend(t);
            owners.push(slot as u32);
            pads.push(lp - p);
        }
        let mut rows_cache = match &cache {
            Some(c) => Some(c.select_rows(&owners, ls)?),
            None => None,
        };
        let logits = model
            .forward(&rows, rows_cache.as_mut(), &opts(pads, LogitsMode::All))?
            .logits
            .ok_or_else(|| ModelError::Invalid("no logits".into()))?;
        let logp = target_logprobs(&logits, targets)?;
        for (&(slot, c, _), lp_row) in group.iter().zip(&logp) {
            let q = batch[slot];
            let (p, s) = (plans[q].prefix, &questions[q].seqs[c]);
            let (from, to) = (questions[q].cont_start[c] - 1 - p, s.len() - 1 - p);
            let sum: f64 = lp_row[from..to].iter().map(|&x| x as f64).sum();
            if !sum.is_finite() {
                return Err(ModelError::Invalid(format!(
                    "doc {}: the log-likelihood of choice {c} is {sum} (the model's \
                     outputs are not finite)",
                    questions[q].doc_id
                )));
            }
            out[slot][c] = sum;
        }
        start = end;
    }
    Ok(out)
}

/// log P(target) at every position of (rows, t, vocab) logits, on the device.
fn target_logprobs(logits: &Tensor, targets: Vec<u32>) -> Result<Vec<Vec<f32>>> {
    let (n, t, _) = logits.dims3()?;
    let target = Tensor::from_vec(targets, (n, t, 1), logits.device())?;
    let picked = logits.gather(&target, 2)?.squeeze(2)?;
    let max = logits.max_keepdim(D::Minus1)?;
    let lse = logits
        .broadcast_sub(&max)?
        .exp()?
        .sum_keepdim(D::Minus1)?
        .log()?
        .add(&max)?
        .squeeze(2)?;
    Ok((picked - lse)?.to_dtype(DType::F32)?.to_vec2::<f32>()?)
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
