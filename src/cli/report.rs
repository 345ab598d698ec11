//! `mwtop report`: one self-contained HTML page about a model: what it
//! is, its massive activations (figures inline), the massive weights and
//! the super weight, the sweep (with zero-shot accuracy when asked), and
//! generations side by side under the attacks.

use std::ops::ControlFlow;
use std::path::PathBuf;

use color_eyre::eyre::Result;

use mwtop::analysis::attack::{Attack, AttackMode};
use mwtop::analysis::generate::{generate, GenerateParams};
use mwtop::analysis::massive;
use mwtop::analysis::sweep::{SWEEP_KS, SWEEP_MODES};
use mwtop::analysis::target;
use mwtop::analysis::zero_shot::{self, Budget};
use mwtop::checkpoint::chat::PromptFormat;
use mwtop::display::{describe_attack, format_ppl, human_count};
use mwtop::export::figure::Format;
use mwtop::export::report::{Block, Report, Section, Table};
use mwtop::export::views::{self, View};
use mwtop::export::write_atomically;

use super::args::{AttackArgs, RunArgs};
use super::plot::{eval_tokens, model_name, run_sweep, scan_probe, states};

#[derive(clap::Args)]
pub struct ReportArgs {
    /// Model path or hub id; omitted: the demo model.
    model: Option<String>,
    /// The HTML file to write.
    #[arg(long, default_value = "report.html")]
    out: PathBuf,
    /// The prompt generated from, under each attack.
    #[arg(long, default_value = "The capital of France is")]
    prompt: String,
    /// Apply the model's chat template to the prompt.
    #[arg(long)]
    chat: bool,
    #[arg(long, default_value_t = 40, value_parser = super::args::at_least_one, allow_negative_numbers = true)]
    max_tokens: usize,
    /// Zero-shot tasks to score under each attack (comma-separated).
    #[arg(long, value_delimiter = ',')]
    tasks: Option<Vec<String>>,
    /// The first N questions of each task.
    #[arg(long, requires = "tasks", value_parser = super::args::at_least_one, allow_negative_numbers = true)]
    limit: Option<usize>,
    /// The text whose perplexity the sweep reports (default: mwtop's evaluation text).
    #[arg(long)]
    text: Option<PathBuf>,
    /// The attack of the figures and of the generations (default: zero,
    /// k=2, on the massive layer).
    #[command(flatten)]
    attack: AttackArgs,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    run: RunArgs,
}

fn row(cells: &[&dyn std::fmt::Display]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

impl ReportArgs {
    pub fn run(self, global: Option<String>) -> Result<()> {
        let ckpt = super::open(self.model.as_deref(), global.as_deref())?;
        let tok = ckpt.tokenizer()?;
        let named = super::check::named_tasks(self.tasks.as_deref())?;
        let model = self.run.load(&ckpt)?;
        let name = model_name(&ckpt);
        let c = model.config().clone();
        let mut sections = Vec::new();

        sections.push(Section {
            heading: "The model".into(),
            blocks: vec![Block::Table(Table {
                caption: String::new(),
                header: vec!["".into(), "".into()],
                rows: vec![
                    row(&[&"checkpoint", &ckpt.source().display()]),
                    row(&[&"architecture", &c.architecture.name()]),
                    row(&[&"parameters", &human_count(ckpt.parameter_count())]),
                    row(&[&"layers", &c.n_layers]),
                    row(&[&"hidden size (d_model)", &c.d_model]),
                    row(&[&"MLP size (d_ff)", &c.d_ff]),
                    row(&[
                        &"attention heads / KV heads",
                        &format!("{} / {}", c.n_heads, c.n_kv_heads),
                    ]),
                    row(&[&"vocabulary", &c.vocab_size]),
                ],
            })],
        });

        let (probe, scan) = scan_probe(&model, &tok, &self.attack)?;
        let (_, source) = target::attack_layer(&scan);
        // The attack asked for; by default zero k=2 on the target, which a
        // model without massive activations gets from the fallback layer.
        let target = self.attack.any_target(&model, &tok)?;
        let attack = if self.attack.mode() == AttackMode::Original {
            Attack::new(AttackMode::Zero, target.layer, &target.ranked, 2, c.d_ff, 0)
        } else {
            match self.attack.resolve(&model, &tok, self.seed, true)? {
                Some((_, a)) => a,
                None => unreachable!("resolve with needed = true returns the attack"),
            }
        };
        let label = describe_attack(&attack);
        let st = states(&model, &probe, Some(&attack), attack.layer)?;
        let mut blocks = vec![Block::Text(match scan.massive_layer {
            Some(l) => format!(
                "The probe {:?} ({} tokens, {} at position 0) has massive activations from layer {l} on: \
                 a few hidden dims more than {}x the layer's median |x| and above {}.",
                self.attack.probe(),
                probe.len(),
                scan.position0,
                scan.thresholds.min_ratio,
                scan.thresholds.min_abs
            ),
            None => format!(
                "No massive activation for the probe {:?} at {}x the median and {} ({source:?}): the attacks use layer {}.",
                self.attack.probe(),
                scan.thresholds.min_ratio,
                scan.thresholds.min_abs,
                attack.layer
            ),
        })];
        let mut acts = Table {
            caption: "The largest activations".into(),
            header: [
                "layer",
                "token",
                "position",
                "hidden dim",
                "value",
                "x median",
            ]
            .map(String::from)
            .to_vec(),
            rows: Vec::new(),
        };
        for a in scan.massive_activations.iter().take(12) {
            acts.rows.push(row(&[
                &a.layer,
                &format!("{:?}", a.token),
                &a.position,
                &a.dim,
                &format!("{:.1}", a.value),
                &format!("{:.0}", a.ratio),
            ]));
        }
        if !acts.rows.is_empty() {
            blocks.push(Block::Table(acts));
        }
        for (view, caption) in [
            (View::Layers, "Every layer: the largest |x| of each hidden dim over the probe's tokens, original, attacked and their change."),
            (View::Ffn, "The attacked layer's d_ff state per token: the massive weights' rows light up at the first token."),
        ] {
            let marks: Vec<usize> = attack.dims.iter().take(4).copied().collect();
            let fig = views::heatmaps(view, &name, &scan, &st, Some(&label), &marks);
            let svg = String::from_utf8(fig.render(Format::Svg)?)?;
            blocks.push(Block::Figure {
                caption: caption.into(),
                svg,
            });
        }
        sections.push(Section {
            heading: "Massive activations".into(),
            blocks,
        });

        let ranked = massive::rank_by_abs(&st[0].mlp_pos0[attack.layer], 8);
        let stats =
            target::row_stats(&model, attack.layer, &ranked, &st[0].mlp_pos0[attack.layer])?;
        let mut weights = Table {
            caption: format!(
                "Layer {}: the d_ff dims with the largest state at position 0, and their rows of up_proj and gate_proj",
                attack.layer
            ),
            header: ["d_ff dim", "state", "|up row|", "max |up|", "|gate row|", "max |gate|"]
                .map(String::from)
                .to_vec(),
            rows: Vec::new(),
        };
        for s in &stats {
            weights.rows.push(row(&[
                &s.dim,
                &format!("{:.2}", s.value),
                &format!("{:.3}", s.up_norm),
                &format!("{:.4}", s.up_max),
                &format!("{:.3}", s.gate_norm),
                &format!("{:.4}", s.gate_max),
            ]));
        }
        let mut blocks = vec![Block::Table(weights)];
        if let Some(sw) = scan.super_weights.first() {
            blocks.push(Block::Text(format!(
                "Super weight (Yu et al.): model.layers.{}.mlp.down_proj.weight[{}, {}] = {:.4}.",
                sw.layer, sw.row, sw.col, sw.value
            )));
        }
        sections.push(Section {
            heading: "Massive weights".into(),
            blocks,
        });

        let ids = eval_tokens(&ckpt, &tok, self.text.as_deref())?;
        let window = mwtop::analysis::perplexity::Window::default_for(&model);
        let (sweep_layer, runs) =
            run_sweep(&model, &target, &self.attack, &ids, window, self.seed)?;
        let ppl = |mode: AttackMode, k: usize| {
            runs.iter()
                .find(|r| r.mode == mode && (r.k == k || mode == AttackMode::Original))
                .map_or("".into(), |r| format_ppl(r.perplexity))
        };
        let mut table = Table {
            caption: format!(
                "Perplexity of the evaluation text ({} tokens), layer {sweep_layer}; original {}",
                ids.len(),
                ppl(AttackMode::Original, 0)
            ),
            header: std::iter::once("k".to_string())
                .chain(SWEEP_MODES.iter().map(|m| m.to_string()))
                .collect(),
            rows: Vec::new(),
        };
        for k in SWEEP_KS {
            let mut r = vec![k.to_string()];
            r.extend(SWEEP_MODES.iter().map(|&m| {
                if k == 0 && m != AttackMode::Keep {
                    String::new()
                } else {
                    ppl(m, k)
                }
            }));
            table.rows.push(r);
        }
        let chart = views::sweep_chart(&name, &runs, sweep_layer);
        let mut blocks = vec![
            Block::Table(table),
            Block::Figure {
                caption: "Perplexity against k: zeroing the massive rows collapses the model, keeping only them does not; random rows are the control.".into(),
                svg: String::from_utf8(chart.render(Format::Svg)?)?,
            },
        ];
        if !named.is_empty() {
            let attacks = [
                ("original".to_string(), None),
                (label.clone(), Some(attack.clone())),
            ];
            let mut acc = Table {
                caption: "Zero-shot accuracy (acc, lm-evaluation-harness's definition)".into(),
                header: std::iter::once("task".to_string())
                    .chain(attacks.iter().map(|(l, _)| l.clone()))
                    .collect(),
                rows: Vec::new(),
            };
            for (task, qs) in &named {
                let qs = &qs[..self.limit.unwrap_or(qs.len()).min(qs.len())];
                let enc = zero_shot::encode_questions(&model, &tok, qs)?;
                let mut r = vec![format!("{task} (n={})", enc.len())];
                for (_, a) in &attacks {
                    let iv = a.as_ref().map_or_else(
                        mwtop::model::intervention::Interventions::none,
                        Attack::interventions,
                    );
                    let s = zero_shot::score(
                        &model,
                        &enc,
                        &iv,
                        Budget::for_model(&model),
                        None,
                        |_, _| {},
                    )?;
                    r.push(format!(
                        "{:.1}%",
                        100.0 * zero_shot::task_score(task, &enc, &s).acc
                    ));
                }
                acc.rows.push(r);
            }
            blocks.push(Block::Table(acc));
        }
        sections.push(Section {
            heading: "Under attack".into(),
            blocks,
        });

        let keep = Attack::new(
            AttackMode::Keep,
            attack.layer,
            &ranked_all(&st[0], attack.layer),
            attack.k,
            c.d_ff,
            0,
        );
        let rows = [
            (
                "original".to_string(),
                mwtop::model::intervention::Interventions::none(),
            ),
            (label.clone(), attack.interventions()),
            (describe_attack(&keep), keep.interventions()),
        ];
        let prompt_ids = PromptFormat::new(&ckpt, &tok)
            .ids(&tok, &self.prompt, self.chat)
            .map_err(|e| color_eyre::eyre::eyre!(e))?;
        let ivs: Vec<_> = rows.iter().map(|(_, iv)| iv.clone()).collect();
        let params = GenerateParams {
            max_tokens: self.max_tokens,
            ..Default::default()
        };
        let out = generate(&model, &tok, &prompt_ids, &ivs, &params, |_, _, _| {
            ControlFlow::Continue(())
        })?;
        sections.push(Section {
            heading: format!("Generations from {:?} (greedy)", self.prompt),
            blocks: vec![Block::Columns(
                rows.iter()
                    .zip(&out)
                    .map(|((l, _), g)| (l.clone(), g.text.clone()))
                    .collect(),
            )],
        });

        let report = Report {
            title: format!("mwtop report: {name}"),
            subtitle: format!(
                "mwtop {} · {} {} · probe {:?}",
                env!("CARGO_PKG_VERSION"),
                mwtop::runtime::placement_name(model.placement()),
                format!("{:?}", model.dtype()).to_lowercase(),
                self.attack.probe()
            ),
            sections,
        };
        write_atomically(&self.out, report.to_html().as_bytes())?;
        eprintln!("mwtop: wrote {}", self.out.display());
        Ok(())
    }
}

/// Every d_ff dim of `layer`, by |state| at position 0.
fn ranked_all(s: &mwtop::analysis::states::ProbeStates, layer: usize) -> Vec<usize> {
    let state = &s.mlp_pos0[layer];
    massive::rank_by_abs(state, state.len())
}
