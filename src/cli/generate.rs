//! `mwtop generate`: stream a continuation of a prompt, or run the original
//! and an attacked model side by side (one batch of two).

use std::io::{IsTerminal, Write};
use std::ops::ControlFlow;

use serde::Serialize;

use crate::analysis::generate::{generate, GenerateParams, Generated, StopReason};
use crate::model::intervention::Interventions;
use crate::model::{Model, ModelError};

#[derive(Serialize)]
pub struct GenerateReport {
    pub prompt_tokens: usize,
    pub text: String,
    pub tokens: Vec<u32>,
    pub stop: StopReason,
    pub seconds: f64,
}

/// Generates one row per intervention set. With one row and `stream`, text
/// goes to stdout as it comes; otherwise a token counter goes to stderr.
pub fn run(
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
    let tty = std::io::stderr().is_terminal();
    let mut count = 0usize;
    let out: Vec<Generated> = generate(model, tok, prompt, rows, params, |row, _, piece| {
        if stream {
            let _ = write!(stdout, "{piece}");
            let _ = stdout.flush();
        } else if row == 0 && tty {
            count += 1;
            eprint!("\rmwtop: {count} tokens");
        }
        ControlFlow::Continue(())
    })?;
    if stream {
        println!();
    } else if tty && count > 0 {
        eprintln!();
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(out
        .into_iter()
        .map(|g| GenerateReport {
            prompt_tokens: prompt.len(),
            text: g.text,
            tokens: g.tokens,
            stop: g.stop,
            seconds,
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
pub fn side_by_side(
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
