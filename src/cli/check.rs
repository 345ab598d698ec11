//! `mwtop check`: a gate for fine-tuning and quantization pipelines. It
//! scans the model, zeroes its top-k massive weights and fails (exit
//! status 2, one line on stderr) when perplexity grows by more than
//! `--max-ratio` times, or a task's accuracy falls by more than
//! `--max-drop` points. A model without massive activations passes.

use std::path::PathBuf;

use color_eyre::eyre::{bail, eyre, Result};
use serde::Serialize;

use mwtop::analysis::attack::{Attack, AttackMode};
use mwtop::analysis::perplexity::{perplexity, Window, EVAL_TEXT};
use mwtop::analysis::target::{self, TargetSource, DEFAULT_PROBE};
use mwtop::analysis::zero_shot::{self, Budget};
use mwtop::display::format_ppl;
use mwtop::model::intervention::Interventions;
use mwtop::tasks;

use super::args::{RunArgs, ThresholdArgs};
use super::Report;

/// The exit status of a check that ran and failed (errors exit with 1).
pub const FAILED: i32 = 2;

#[derive(clap::Args)]
pub struct CheckArgs {
    /// Model path or hub id; omitted: the demo model.
    model: Option<String>,
    /// How many massive weights (rows of up/gate_proj) to zero.
    #[arg(long, default_value_t = 2, value_parser = super::args::at_least_one, allow_negative_numbers = true)]
    k: usize,
    /// Fail when zeroing raises perplexity by more than this factor.
    #[arg(long, default_value_t = 2.0, allow_negative_numbers = true)]
    max_ratio: f64,
    /// The text whose perplexity is compared (default: mwtop's evaluation text), BOS first.
    #[arg(long)]
    text: Option<PathBuf>,
    /// Also compare zero-shot accuracy on these tasks (comma-separated).
    #[arg(long, value_delimiter = ',')]
    tasks: Option<Vec<String>>,
    /// The first N questions of each task.
    #[arg(long, requires = "tasks", value_parser = super::args::at_least_one, allow_negative_numbers = true)]
    limit: Option<usize>,
    /// Fail when a task's accuracy falls by more than this many points.
    #[arg(
        long,
        default_value_t = 5.0,
        requires = "tasks",
        allow_negative_numbers = true
    )]
    max_drop: f64,
    #[arg(long, default_value = DEFAULT_PROBE)]
    probe: String,
    #[command(flatten)]
    thresholds: ThresholdArgs,
    #[command(flatten)]
    run: RunArgs,
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct PerplexityCheck {
    original: f64,
    zeroed: f64,
    ratio: f64,
    max_ratio: f64,
}

#[derive(Serialize)]
struct AccuracyCheck {
    task: String,
    n: usize,
    original: f64,
    zeroed: f64,
    /// Points lost (original - zeroed, in percent).
    drop: f64,
    max_drop: f64,
}

#[derive(Serialize)]
struct CheckReport {
    passed: bool,
    /// Why it failed, or what it found when it passed.
    reason: String,
    massive: bool,
    layer: Option<usize>,
    dims: Vec<usize>,
    perplexity: Option<PerplexityCheck>,
    accuracy: Vec<AccuracyCheck>,
}

impl Report for CheckReport {
    fn text(&self) -> String {
        let mut s = format!(
            "{}  {}\n",
            if self.passed { "pass" } else { "FAIL" },
            self.reason
        );
        if let Some(p) = &self.perplexity {
            s.push_str(&format!(
                "perplexity  {} -> {} zeroed ({:.2}x, limit {}x)\n",
                format_ppl(p.original),
                format_ppl(p.zeroed),
                p.ratio,
                p.max_ratio
            ));
        }
        for a in &self.accuracy {
            s.push_str(&format!(
                "{:<14} acc {:.2} -> {:.2} zeroed ({:+.2} points, limit -{}; n={})\n",
                a.task,
                100.0 * a.original,
                100.0 * a.zeroed,
                -a.drop,
                a.max_drop,
                a.n
            ));
        }
        s
    }
}

/// The questions of each named task (fetching the task data once), or
/// none when no task is named.
pub fn named_tasks(names: Option<&[String]>) -> Result<Vec<(String, Vec<tasks::Question>)>> {
    let Some(names) = names else {
        return Ok(Vec::new());
    };
    let wheel = tasks::ensure_data()?;
    names
        .iter()
        .map(|n| Ok((n.clone(), tasks::load_task(&wheel, n)?)))
        .collect()
}

impl CheckArgs {
    pub fn run(self, global: Option<String>) -> Result<()> {
        if !(self.max_ratio.is_finite() && self.max_ratio >= 1.0) {
            bail!(
                "--max-ratio must be a finite number of at least 1, got {}",
                self.max_ratio
            );
        }
        if !(self.max_drop.is_finite() && self.max_drop >= 0.0) {
            bail!(
                "--max-drop must be a finite, non-negative number of points, got {}",
                self.max_drop
            );
        }
        if self.k == 0 {
            bail!("--k must be at least 1");
        }
        let ckpt = super::open(self.model.as_deref(), global.as_deref())?;
        let tok = ckpt.tokenizer()?;
        let body = match &self.text {
            Some(p) => super::read_text(p)?,
            None => EVAL_TEXT.to_string(),
        };
        let named = named_tasks(self.tasks.as_deref())?;
        let model = self.run.load(&ckpt)?;
        let th = self.thresholds.get();
        let t = target::resolve_target(&model, &tok, &self.probe, th, None, None)?;
        if t.source == TargetSource::Fallback {
            let report = CheckReport {
                passed: true,
                reason: "no massive activation: nothing depends on massive weights".into(),
                massive: false,
                layer: None,
                dims: Vec::new(),
                perplexity: None,
                accuracy: Vec::new(),
            };
            return report.print(self.json);
        }
        let d_ff = model.config().d_ff;
        let attack = Attack::new(AttackMode::Zero, t.layer, &t.ranked, self.k, d_ff, 0);
        let mut ids: Vec<u32> = model.config().bos_token_id.into_iter().collect();
        ids.extend(
            tok.encode(body.as_str(), false)
                .map_err(|e| eyre!("tokenizer: {e}"))?
                .get_ids(),
        );
        let rows = [Interventions::none(), attack.interventions()];
        let ppl = perplexity(&model, &ids, &rows, Window::default_for(&model))?;
        let (original, zeroed) = (ppl[0].perplexity, ppl[1].perplexity);
        if !(original.is_finite() && zeroed.is_finite()) {
            bail!(
                "perplexity is {original} (original) and {zeroed} (zeroed): not a number to check"
            );
        }
        let ratio = zeroed / original;
        let mut reasons = Vec::new();
        let what = format!(
            "zeroing the top-{} massive weights (layer {}, rows {:?})",
            self.k, t.layer, attack.dims
        );
        if ratio > self.max_ratio {
            reasons.push(format!(
                "{what} raises perplexity {} -> {} ({ratio:.2}x > {}x)",
                format_ppl(original),
                format_ppl(zeroed),
                self.max_ratio
            ));
        }
        let mut accuracy = Vec::new();
        for (name, qs) in named {
            let qs = &qs[..self.limit.unwrap_or(qs.len()).min(qs.len())];
            let enc = zero_shot::encode_questions(&model, &tok, qs)?;
            let budget = Budget::for_model(&model);
            let mut accs = Vec::new();
            for iv in &rows {
                let s = zero_shot::score(&model, &enc, iv, budget, None, |_, _| {})?;
                accs.push(zero_shot::task_score(&name, &enc, &s));
            }
            let drop = 100.0 * (accs[0].acc - accs[1].acc);
            if drop > self.max_drop {
                reasons.push(format!(
                    "{what} costs {name} {drop:.2} points of accuracy (> {})",
                    self.max_drop
                ));
            }
            accuracy.push(AccuracyCheck {
                task: name,
                n: accs[0].n,
                original: accs[0].acc,
                zeroed: accs[1].acc,
                drop,
                max_drop: self.max_drop,
            });
        }
        let passed = reasons.is_empty();
        let report = CheckReport {
            passed,
            reason: if passed {
                format!("{what} stays within the limits")
            } else {
                reasons.join("; ")
            },
            massive: true,
            layer: Some(t.layer),
            dims: attack.dims.clone(),
            perplexity: Some(PerplexityCheck {
                original,
                zeroed,
                ratio,
                max_ratio: self.max_ratio,
            }),
            accuracy,
        };
        report.print(self.json)?;
        if !passed {
            eprintln!("mwtop: check failed: {}", report.reason);
            use std::io::Write;
            let _ = std::io::stdout().flush();
            std::process::exit(FAILED);
        }
        Ok(())
    }
}
