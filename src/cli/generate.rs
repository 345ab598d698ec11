//! `mwtop generate`: stream a continuation of a prompt.

use std::io::Write;
use std::ops::ControlFlow;

use serde::Serialize;

use crate::analysis::generate::{generate, GenerateParams, Generated};
use crate::model::intervention::Interventions;
use crate::model::Model;

#[derive(Serialize)]
pub struct GenerateReport {
    pub prompt_tokens: usize,
    pub text: String,
    pub tokens: Vec<u32>,
    pub stop: crate::analysis::generate::StopReason,
    pub seconds: f64,
}

/// Runs one generation; streams text to stdout unless `json`.
pub fn run(
    model: &Model,
    tok: &tokenizers::Tokenizer,
    prompt: &[u32],
    params: &GenerateParams,
    json: bool,
) -> Result<GenerateReport, crate::model::ModelError> {
    let start = std::time::Instant::now();
    let mut stdout = std::io::stdout();
    let out: Vec<Generated> = generate(
        model,
        tok,
        prompt,
        &[Interventions::none()],
        params,
        |_, _, piece| {
            if !json {
                let _ = write!(stdout, "{piece}");
                let _ = stdout.flush();
            }
            ControlFlow::Continue(())
        },
    )?;
    if !json {
        println!();
    }
    let g = out.into_iter().next().expect("one row");
    Ok(GenerateReport {
        prompt_tokens: prompt.len(),
        text: g.text,
        tokens: g.tokens,
        stop: g.stop,
        seconds: start.elapsed().as_secs_f64(),
    })
}
