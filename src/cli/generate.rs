//! `mwtop generate`: stream a continuation of a prompt, or run the original
//! and an attacked model side by side (one batch of two).

use std::io::Write;
use std::ops::ControlFlow;

use color_eyre::eyre::{eyre, Result};
use serde::Serialize;

use mwtop::analysis::attack::Attack;
use mwtop::analysis::generate::{generate, GenerateParams, Generated, StopReason, TokenStates};
use mwtop::checkpoint::chat::PromptFormat;
use mwtop::display::describe_attack;
use mwtop::model::intervention::Interventions;
use mwtop::model::{Model, ModelError};

use super::args::{AttackArgs, RunArgs};
use super::progress::Counter;
use super::Report;

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// Model path or hub id; omitted: the demo model.
    model: Option<String>,
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt in the model's chat template (ChatML if it has none).
    #[arg(long)]
    chat: bool,
    /// Tokens to generate: at least 1, and the prompt and they must fit the context.
    #[arg(long, default_value_t = 64, value_parser = super::args::at_least_one, allow_negative_numbers = true)]
    max_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    temperature: f64,
    /// Nucleus sampling: the smallest set of tokens whose probability reaches p, in (0, 1].
    #[arg(long, allow_negative_numbers = true)]
    top_p: Option<f64>,
    #[arg(long, default_value_t = 299_792_458)]
    seed: u64,
    /// Keep going past the end-of-sequence token.
    #[arg(long)]
    no_stop: bool,
    /// A prompt that leaves no room for --max-tokens in the context keeps
    /// its last tokens (and its BOS), with a warning, instead of being refused.
    #[arg(long)]
    truncate_prompt: bool,
    #[command(flatten)]
    attack: AttackArgs,
    /// Print the original and the attacked generation side by side (one batch of two).
    #[arg(long)]
    compare: bool,
    /// With --json: for every generated token, each layer's 4 largest
    /// states (dim, value) at the last input position, after attention
    /// (`resid_mid`), of the MLP (`mlp_post`) and after the block (`resid_post`).
    #[arg(long, requires = "json")]
    states: bool,
    #[command(flatten)]
    run: RunArgs,
    #[arg(long)]
    json: bool,
}

/// One generated row.
#[derive(Serialize)]
pub struct GenerateReport {
    pub prompt_tokens: usize,
    pub text: String,
    pub tokens: Vec<u32>,
    /// Each token's log-probability under the model (natural log).
    pub logprobs: Vec<f32>,
    pub stop: StopReason,
    pub seconds: f64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub states: Vec<TokenStates>,
}

/// What `generate` prints: one row, or the original and the attacked pair.
#[derive(Serialize)]
#[serde(untagged)]
enum GenerateOutput {
    One {
        #[serde(flatten)]
        run: GenerateReport,
        attack: Option<Attack>,
        /// The text already went to stdout token by token.
        #[serde(skip)]
        streamed: bool,
    },
    Pair {
        original: GenerateReport,
        attacked: GenerateReport,
        attack: Option<Attack>,
    },
}

impl Report for GenerateOutput {
    fn text(&self) -> String {
        match self {
            Self::One { streamed: true, .. } => String::new(),
            Self::One { run, .. } => format!("{}\n", run.text),
            Self::Pair {
                original,
                attacked,
                attack,
            } => side_by_side(
                "original",
                &original.text,
                &attack.as_ref().map_or("original".into(), describe_attack),
                &attacked.text,
                terminal_width(),
            ),
        }
    }
}

/// The width a side-by-side table may take: $COLUMNS, the terminal's, else 100.
fn terminal_width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .or_else(|| crossterm::terminal::size().ok().map(|(w, _)| w as usize))
        .unwrap_or(100)
}

impl GenerateArgs {
    pub fn run(self, global: Option<String>) -> Result<()> {
        // Bad sampling settings fail before the model loads.
        GenerateParams {
            temperature: self.temperature,
            top_p: self.top_p,
            ..GenerateParams::default()
        }
        .check()?;
        let ckpt = super::open(self.model.as_deref(), global.as_deref())?;
        let tok = ckpt.tokenizer()?;
        let mut ids = PromptFormat::new(&ckpt, &tok)
            .ids(&tok, &self.prompt, self.chat)
            .map_err(|e| eyre!(e))?;
        if ids.is_empty() {
            return Err(eyre!("the prompt is empty"));
        }
        let model = self.run.load(&ckpt)?;
        let context = model.max_positions();
        if self.truncate_prompt && ids.len() + self.max_tokens > context {
            if self.max_tokens >= context {
                return Err(eyre!(
                    "--max-tokens {} leaves no room for a prompt in the model's context of {context} positions",
                    self.max_tokens
                ));
            }
            let bos = ckpt
                .config()
                .bos_token_id
                .filter(|&b| ids.first() == Some(&b));
            let keep = context - self.max_tokens - usize::from(bos.is_some());
            let dropped = ids.len() - usize::from(bos.is_some()) - keep;
            eprintln!(
                "mwtop: warning: the prompt's {} tokens and --max-tokens {} pass the context of {context} positions: its first {dropped} tokens were dropped (--truncate-prompt)",
                ids.len(),
                self.max_tokens
            );
            let tail = ids.split_off(ids.len() - keep);
            ids = bos.into_iter().chain(tail).collect();
        }
        let room = context.saturating_sub(ids.len());
        if room > 0 && self.max_tokens > room {
            return Err(eyre!(
                "--max-tokens {}: the prompt's {} tokens and the continuation must fit the model's context of {} positions, so at most {room}",
                self.max_tokens,
                ids.len(),
                model.max_positions()
            ));
        }
        let params = GenerateParams {
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
            stop_at_eos: !self.no_stop,
            states: self.states,
            cancel: None,
        };
        let resolved = self.attack.resolve(&model, &tok, self.seed, self.compare)?;
        let attack = resolved.map(|(_, a)| a);
        let attacked = attack
            .as_ref()
            .map(Attack::interventions)
            .unwrap_or_default();
        let rows = if self.compare {
            vec![Interventions::none(), attacked]
        } else {
            vec![attacked]
        };
        let stream = !self.json && !self.compare;
        let mut reports = run_rows(&model, &tok, &ids, &rows, &params, stream)?.into_iter();
        let first = reports.next().ok_or_else(|| eyre!("no generation"))?;
        let output = if self.compare {
            GenerateOutput::Pair {
                original: first,
                attacked: reports
                    .next()
                    .ok_or_else(|| eyre!("no attacked generation"))?,
                attack,
            }
        } else {
            if !self.json {
                eprintln!(
                    "mwtop: {} tokens in {:.2}s ({:.1} tokens/s), stop: {:?}; {}",
                    first.tokens.len(),
                    first.seconds,
                    first.tokens.len() as f64 / first.seconds.max(1e-9),
                    first.stop,
                    attack.as_ref().map_or("original".into(), describe_attack)
                );
            }
            GenerateOutput::One {
                run: first,
                attack,
                streamed: stream,
            }
        };
        output.print(self.json)
    }
}

/// Generates one row per intervention set. With one row and `stream`, text
/// goes to stdout as it comes; otherwise a token counter goes to stderr.
fn run_rows(
    model: &Model,
    tok: &tokenizers::Tokenizer,
    prompt: &[u32],
    rows: &[Interventions],
    params: &GenerateParams,
    stream: bool,
) -> Result<Vec<GenerateReport>, ModelError> {
    let start = std::time::Instant::now();
    let mut stdout = std::io::stdout();
    let stream = stream && rows.len() <= 1;
    let mut counter = Counter::new(false);
    let mut count = 0usize;
    let out: Vec<Generated> = generate(model, tok, prompt, rows, params, |row, _, piece| {
        if stream {
            // Stops generating when the reader went away.
            if write!(stdout, "{piece}")
                .and_then(|()| stdout.flush())
                .is_err()
            {
                return ControlFlow::Break(());
            }
        } else if row == 0 {
            count += 1;
            counter.show(&format!("{count} tokens"));
        }
        ControlFlow::Continue(())
    })?;
    if stream {
        let _ = writeln!(stdout);
    }
    counter.finish(None);
    let seconds = start.elapsed().as_secs_f64();
    Ok(out
        .into_iter()
        .map(|g| GenerateReport {
            prompt_tokens: prompt.len(),
            text: g.text,
            tokens: g.tokens,
            logprobs: g.logprobs,
            stop: g.stop,
            seconds,
            states: g.states,
        })
        .collect())
}

/// Wraps `text` at word boundaries into lines of at most `width` characters
/// (newlines kept; a word longer than a line is split).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut lines = Vec::new();
    for para in text.split('\n') {
        let mut line = String::new();
        for word in para.split(' ') {
            let mut word: Vec<char> = word.chars().collect();
            let len = line.chars().count();
            if len > 0 && len + 1 + word.len() > width {
                lines.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            while word.len() > width {
                let rest = word.split_off(width - line.chars().count().min(width - 1));
                line.extend(word);
                lines.push(std::mem::take(&mut line));
                word = rest;
            }
            line.extend(word);
        }
        lines.push(line);
    }
    lines
}

/// Two texts in columns under their titles, within `width` characters.
fn side_by_side(
    left_title: &str,
    left: &str,
    right_title: &str,
    right: &str,
    width: usize,
) -> String {
    let col = (width.saturating_sub(3) / 2).max(10);
    let l = wrap(left, col);
    let r = wrap(right, col);
    let mut s = String::new();
    let cell = |t: &str| format!("{t:<col$}", col = col);
    s.push_str(&format!(
        "{} | {}\n",
        cell(&truncate(left_title, col)),
        truncate(right_title, col)
    ));
    s.push_str(&format!("{}-+-{}\n", "-".repeat(col), "-".repeat(col)));
    for i in 0..l.len().max(r.len()) {
        let a = l.get(i).map_or("", String::as_str);
        let b = r.get(i).map_or("", String::as_str);
        s.push_str(format!("{} | {}", cell(a), b).trim_end());
        s.push('\n');
    }
    s
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}
