//! `mwtop inspect`: format, architecture, hyper-parameters, parameter count
//! and the tensor table. Reads headers only.

use std::fmt::Write as _;

use color_eyre::eyre::Result;
use serde::Serialize;

use mwtop::checkpoint::{Checkpoint, Format, ModelConfig, TensorInfo};
use mwtop::display::human_count;

use super::Report;

#[derive(clap::Args)]
pub struct InspectArgs {
    /// Model path or hub id; omitted: the demo model.
    model: Option<String>,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
}

impl InspectArgs {
    pub fn run(self, global: Option<String>) -> Result<()> {
        let ckpt = super::open(self.model.as_deref(), global.as_deref())?;
        InspectReport::new(&ckpt).print(self.json)
    }
}

#[derive(Serialize)]
pub struct InspectReport<'a> {
    pub source: String,
    pub format: Format,
    pub config: &'a ModelConfig,
    pub parameters: u64,
    pub bytes: u64,
    pub tensors: &'a [TensorInfo],
    #[serde(skip)]
    ckpt: &'a Checkpoint,
}

impl<'a> InspectReport<'a> {
    fn new(ckpt: &'a Checkpoint) -> Self {
        Self {
            source: ckpt.source().display().to_string(),
            format: ckpt.format(),
            config: ckpt.config(),
            parameters: ckpt.parameter_count(),
            bytes: ckpt.tensors().iter().map(|t| t.bytes).sum(),
            tensors: ckpt.tensors(),
            ckpt,
        }
    }
}

impl Report for InspectReport<'_> {
    fn text(&self) -> String {
        render_text(self.ckpt)
    }
}

/// The header lines: what the model is.
fn summary(ckpt: &Checkpoint) -> String {
    let c = ckpt.config();
    let mut s = String::new();
    let bytes: u64 = ckpt.tensors().iter().map(|t| t.bytes).sum();
    let _ = writeln!(s, "source        {}", ckpt.source().display());
    let _ = writeln!(s, "format        {}", ckpt.format());
    let _ = writeln!(s, "architecture  {}", c.architecture.name());
    let _ = writeln!(
        s,
        "parameters    {} ({}), {} tensors, {:.1} MB stored",
        human_count(ckpt.parameter_count()),
        ckpt.parameter_count(),
        ckpt.tensors().len(),
        bytes as f64 / 1e6
    );
    let _ = writeln!(
        s,
        "layers {}  d_model {}  d_ff {}  heads {}  kv heads {}  head dim {}",
        c.n_layers, c.d_model, c.d_ff, c.n_heads, c.n_kv_heads, c.head_dim
    );
    let scaling = match &c.rope_scaling {
        None => "none".to_string(),
        Some(r) => serde_json::to_string(r).unwrap_or_default(),
    };
    let _ = writeln!(
        s,
        "vocab {}  tied embeddings {}  rope theta {}  rope scaling {}  norm eps {:e}",
        c.vocab_size, c.tied_embeddings, c.rope_theta, scaling, c.norm_eps
    );
    let sliding: Vec<String> = (0..c.n_layers)
        .filter(|&i| c.attention.window(i).is_some())
        .map(|i| i.to_string())
        .collect();
    if let (Some(w), false) = (c.attention.sliding_window, sliding.is_empty()) {
        let _ = writeln!(
            s,
            "sliding window {w} on layers {} (the others attend to every earlier token)",
            sliding.join(",")
        );
    }
    let eos: Vec<String> = c.eos_token_ids.iter().map(u32::to_string).collect();
    let _ = writeln!(
        s,
        "bos {}  eos {}  context {}  activation {}",
        c.bos_token_id.map_or("-".into(), |b| b.to_string()),
        if eos.is_empty() {
            "-".into()
        } else {
            eos.join(",")
        },
        c.max_position_embeddings,
        c.hidden_act
    );
    s
}

/// The full human-readable report: summary, then one line per tensor.
fn render_text(ckpt: &Checkpoint) -> String {
    let mut s = summary(ckpt);
    let name_w = ckpt
        .tensors()
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let stored_w = ckpt
        .tensors()
        .iter()
        .map(|t| t.stored_name.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<name_w$}  {:<stored_w$}  {:<5}  {:<14}  {:>12}  {:>12}",
        "name", "stored", "dtype", "shape", "bytes", "offset"
    );
    for t in ckpt.tensors() {
        let shape = format!("{:?}", t.shape);
        let _ = writeln!(
            s,
            "{:<name_w$}  {:<stored_w$}  {:<5}  {:<14}  {:>12}  {:>12}",
            t.name,
            t.stored_name,
            t.dtype.to_string(),
            shape,
            t.bytes,
            t.offset
        );
    }
    s
}
