//! Command-line options shared by several subcommands: where the model runs,
//! which massive-activation thresholds apply, which attack to run.

use clap::ValueEnum;
use color_eyre::eyre::{bail, Result};

use mwtop::analysis::attack::{Attack, AttackMode};
use mwtop::analysis::massive::{self, MedianScope, Thresholds};
use mwtop::analysis::target::{self, Target, DEFAULT_PROBE};
use mwtop::checkpoint::{Checkpoint, ModelConfig};
use mwtop::checkpoint::{Proj, WeightId};
use mwtop::model::intervention::WeightEdit;
use mwtop::model::Model;

use super::progress;

/// Sun et al.'s definition of a massive activation.
#[derive(clap::Args, Clone)]
pub struct ThresholdArgs {
    /// |x| must exceed this.
    #[arg(long, default_value_t = 100.0, value_parser = finite_non_negative_f32, allow_negative_numbers = true)]
    min_abs: f32,
    /// |x| must be at least this many times the median |x|.
    #[arg(long, default_value_t = 1000.0, value_parser = finite_non_negative_f32, allow_negative_numbers = true)]
    min_ratio: f32,
    /// The median of the whole layer output (as the published code) or of the token's vector.
    #[arg(long, value_enum, default_value_t = Scope::Layer)]
    median: Scope,
}

#[derive(Clone, Copy, ValueEnum)]
enum Scope {
    Layer,
    Token,
}

impl ThresholdArgs {
    pub fn get(&self) -> Thresholds {
        Thresholds {
            min_abs: self.min_abs,
            min_ratio: self.min_ratio,
            scope: match self.median {
                Scope::Layer => MedianScope::Layer,
                Scope::Token => MedianScope::Token,
            },
        }
    }
}

/// The attack modes as the command line spells them.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// The model as it is.
    Original,
    /// The top-k massive rows of W_up and W_gate zeroed.
    Zero,
    /// Only the top-k rows kept, the rest of both matrices zeroed.
    Keep,
    /// k random rows zeroed (a control).
    RandomZero,
    /// Only k random rows kept (a control).
    RandomKeep,
    /// The super weight (one down_proj scalar of the massive layer) zeroed.
    Super,
}

impl From<ModeArg> for AttackMode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Original => Self::Original,
            ModeArg::Zero => Self::Zero,
            ModeArg::Keep => Self::Keep,
            ModeArg::RandomZero => Self::RandomZero,
            ModeArg::RandomKeep => Self::RandomKeep,
            ModeArg::Super => Self::Super,
        }
    }
}

/// Which attack to run (House of Cards), on the massive layer by default.
#[derive(clap::Args, Clone)]
pub struct AttackArgs {
    #[arg(long, value_enum, default_value_t = ModeArg::Original)]
    mode: ModeArg,
    /// How many massive weights the attack touches.
    #[arg(long, default_value_t = 2, value_parser = at_least_one, allow_negative_numbers = true)]
    k: usize,
    /// The layer to attack (default: the massive layer found by a scan of --probe).
    #[arg(long, allow_negative_numbers = true)]
    layer: Option<usize>,
    /// Explicit d_ff dims (comma-separated), most massive first; sets k to their count.
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    dims: Option<Vec<usize>>,
    /// The probe used to find the massive layer and rank its dims.
    #[arg(long, default_value = DEFAULT_PROBE)]
    probe: String,
    /// Set one weight besides the attack, `L:row,col=value` for
    /// model.layers.L.mlp.down_proj.weight[row, col] (repeatable).
    #[arg(long = "edit", value_parser = parse_edit, allow_hyphen_values = true)]
    edits: Vec<WeightEdit>,
    #[command(flatten)]
    thresholds: ThresholdArgs,
}

impl AttackArgs {
    pub fn mode(&self) -> AttackMode {
        self.mode.into()
    }

    /// The probe text that finds the massive layer.
    pub fn probe(&self) -> &str {
        &self.probe
    }

    pub fn thresholds(&self) -> Thresholds {
        self.thresholds.get()
    }

    /// `--k`, `--layer` and `--dims` within the model: k of its d_ff rows,
    /// one of its layers, distinct dims of its d_ff.
    pub fn check(&self, config: &ModelConfig) -> Result<()> {
        let (layers, d_ff) = (config.n_layers, config.d_ff);
        if self.k > d_ff {
            bail!(
                "--k {}: the model's MLPs have {d_ff} rows (d_ff), so k must lie in 1..={d_ff}",
                self.k
            );
        }
        if let Some(l) = self.layer.filter(|&l| l >= layers) {
            bail!(
                "--layer {l}: the model has layers 0..{} ({layers} layers)",
                layers - 1
            );
        }
        if let Some(dims) = &self.dims {
            if dims.is_empty() {
                bail!("--dims names no dims");
            }
            if let Some(d) = dims.iter().find(|&&d| d >= d_ff) {
                bail!(
                    "--dims {d}: the model's d_ff dims are 0..{} (d_ff {d_ff})",
                    d_ff - 1
                );
            }
            let mut seen = std::collections::HashSet::new();
            if let Some(d) = dims.iter().find(|&&d| !seen.insert(d)) {
                bail!("--dims names {d} twice");
            }
        }
        Ok(())
    }

    /// The target (scanned when not given; a model without a massive layer
    /// is refused unless `--layer` names one).
    pub fn target(&self, model: &Model, tok: &tokenizers::Tokenizer) -> Result<Target> {
        self.check(model.config())?;
        let th = self.thresholds.get();
        let t = target::resolve_target(model, tok, &self.probe, th, self.layer, self.dims.clone())?;
        Ok(t.require_massive(&self.probe, th)?)
    }

    /// The target as `--layer`/`--dims` and the scan give it, the fallback
    /// layer included (for reports, which say so, rather than refuse).
    pub fn any_target(&self, model: &Model, tok: &tokenizers::Tokenizer) -> Result<Target> {
        self.check(model.config())?;
        let th = self.thresholds.get();
        Ok(target::resolve_target(
            model,
            tok,
            &self.probe,
            th,
            self.layer,
            self.dims.clone(),
        )?)
    }

    /// The target and the attack, or None for the original model when no
    /// target is `needed`.
    pub fn resolve(
        &self,
        model: &Model,
        tok: &tokenizers::Tokenizer,
        seed: u64,
        needed: bool,
    ) -> Result<Option<(Target, Attack)>> {
        self.check(model.config())?;
        let mode = self.mode();
        if mode == AttackMode::Original && !needed && self.edits.is_empty() {
            return Ok(None);
        }
        self.check_edits(model)?;
        let target = self.target(model, tok)?;
        let k = self.dims.as_ref().map_or(self.k, Vec::len);
        let d_ff = model.config().d_ff;
        let attack = match mode {
            AttackMode::Super => self.super_weight(model, tok)?,
            _ => Attack::new(mode, target.layer, &target.ranked, k, d_ff, seed),
        };
        Ok(Some((target, attack.with_edits(&self.edits))))
    }

    /// The `--edit`s (applied besides every attack, sweeps included).
    pub fn edits(&self) -> &[WeightEdit] {
        &self.edits
    }

    fn check_edits(&self, model: &Model) -> Result<()> {
        let c = model.config();
        for e in &self.edits {
            let WeightId::Layer { layer, .. } = e.tensor else {
                continue;
            };
            if layer >= c.n_layers {
                color_eyre::eyre::bail!(
                    "--edit {layer}:{},{}: the model has layers 0..{}",
                    e.row,
                    e.col,
                    c.n_layers - 1
                );
            }
            if e.row >= c.d_model || e.col >= c.d_ff {
                color_eyre::eyre::bail!(
                    "--edit {layer}:{},{}: down_proj is [{}, {}]",
                    e.row,
                    e.col,
                    c.d_model,
                    c.d_ff
                );
            }
        }
        Ok(())
    }

    /// The super weight of the massive layer, as the scan finds it.
    fn super_weight(&self, model: &Model, tok: &tokenizers::Tokenizer) -> Result<Attack> {
        let th = self.thresholds.get();
        let ids = tok
            .encode(self.probe.as_str(), false)
            .map_err(|e| color_eyre::eyre::eyre!("tokenizer: {e}"))?
            .get_ids()
            .to_vec();
        let (probe, position0) = massive::probe_tokens(model, &ids);
        let report = massive::scan(model, tok, &probe, position0, 8, th)?;
        let (Some(layer), Some(sw)) = (report.massive_layer, report.super_weights.first()) else {
            color_eyre::eyre::bail!(
                "--mode super: no massive activation for the probe, so no super weight (name one with --edit L:row,col=0)"
            );
        };
        if sw.layer != layer {
            color_eyre::eyre::bail!(
                "--mode super: the scan found no super weight on the massive layer {layer}"
            );
        }
        Ok(Attack::super_weight(sw.layer, sw.row, sw.col))
    }
}

/// Where and in which precision the model runs.
#[derive(clap::Args, Clone)]
pub struct RunArgs {
    /// cpu, cuda or cuda:N (default: cuda when built in and present, else
    /// cpu); a comma-separated list (cuda:0,cuda:1) splits the layers over
    /// those devices in contiguous groups balanced by bytes.
    #[arg(long)]
    pub device: Option<String>,
    /// Compute dtype (f32 by default: bf16's spacing at 20,000 is 128).
    #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
    pub dtype: DTypeArg,
    /// How the matrices are held: `stored` keeps a bf16/f16 checkpoint's
    /// matrices in that dtype, and a GGUF file's quantized blocks (Q4_0,
    /// Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K) as they are, and reads them
    /// converted, exactly, in each product (half the memory of f32 for
    /// bf16, a quarter to a sixth for blocks); `f32` makes a dense copy in
    /// the compute dtype. Default: stored on a GPU, f32 on the CPU (where
    /// each prompt product would convert its matrix).
    #[arg(long, value_enum)]
    pub weights: Option<WeightsArg>,
    /// A LoRA adapter (PEFT's format: adapter_config.json and
    /// adapter_model.safetensors), merged into the weights at load. The UI
    /// takes several and shows them beside the base model.
    #[arg(long)]
    pub adapter: Vec<std::path::PathBuf>,
}

impl RunArgs {
    /// Creates the device and loads the model (and merges --adapter), with
    /// a counter on stderr.
    pub fn load(&self, ckpt: &Checkpoint) -> Result<Model> {
        let devices = mwtop::runtime::parse_devices(self.device.as_deref())?;
        if self.adapter.len() > 1 {
            color_eyre::eyre::bail!(
                "one --adapter per command (the UI shows several side by side)"
            );
        }
        let precision = mwtop::runtime::weight_precision(self.weights(), &devices);
        let mut model = progress::load_model(ckpt, &devices, self.dtype.into(), precision)?;
        if let Some(dir) = self.adapter.first() {
            let info = mwtop::runtime::merge_adapter(&mut model, dir)
                .map_err(|e| color_eyre::eyre::eyre!("--adapter {}: {e}", dir.display()))?;
            tracing::info!("merged {info}");
        }
        Ok(model)
    }
}

impl RunArgs {
    /// `--weights` as the library's setting; None when not given.
    pub fn weights(&self) -> Option<mwtop::model::WeightPrecision> {
        self.weights.map(|w| match w {
            WeightsArg::Stored => mwtop::model::WeightPrecision::Stored,
            WeightsArg::F32 => mwtop::model::WeightPrecision::Compute,
        })
    }
}

/// `--weights` as the command line spells it.
#[derive(Clone, Copy, ValueEnum)]
pub enum WeightsArg {
    Stored,
    F32,
}

/// A dtype as the command line spells it.
#[derive(Clone, Copy, ValueEnum)]
pub enum DTypeArg {
    F32,
    F16,
    Bf16,
}

impl From<DTypeArg> for candle_core::DType {
    fn from(d: DTypeArg) -> Self {
        match d {
            DTypeArg::F32 => Self::F32,
            DTypeArg::F16 => Self::F16,
            DTypeArg::Bf16 => Self::BF16,
        }
    }
}

/// `L:row,col=value`: model.layers.L.mlp.down_proj.weight[row, col] = value.
fn parse_edit(s: &str) -> std::result::Result<WeightEdit, String> {
    let bad =
        || format!("{s:?}: expected L:row,col=value (down_proj of layer L), e.g. 11:507,1229=0");
    let (layer, rest) = s.split_once(':').ok_or_else(bad)?;
    let (at, value) = rest.split_once('=').ok_or_else(bad)?;
    let (row, col) = at.split_once(',').ok_or_else(bad)?;
    let num = |t: &str| t.trim().parse::<usize>().map_err(|_| bad());
    let value: f32 = value.trim().parse().map_err(|_| bad())?;
    if !value.is_finite() {
        return Err(format!("{s:?}: the value must be finite"));
    }
    Ok(WeightEdit {
        tensor: WeightId::layer(num(layer)?, Proj::Down),
        row: num(row)?,
        col: num(col)?,
        value,
    })
}

/// A count of at least 1 (clap's value parser, so the message names the option).
pub fn at_least_one(s: &str) -> std::result::Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err("expected a whole number of at least 1".into()),
    }
}

fn float(s: &str) -> std::result::Result<f64, String> {
    s.trim()
        .parse::<f64>()
        .map_err(|_| format!("{s:?} is not a number"))
}

/// A finite number >= 0.
pub fn finite_non_negative(s: &str) -> std::result::Result<f64, String> {
    match float(s)? {
        v if v.is_finite() && v >= 0.0 => Ok(v),
        v => Err(format!("must be a finite number >= 0, got {v}")),
    }
}

/// A finite number >= 0, as f32.
pub fn finite_non_negative_f32(s: &str) -> std::result::Result<f32, String> {
    finite_non_negative(s).and_then(|v| {
        let x = v as f32;
        x.is_finite()
            .then_some(x)
            .ok_or_else(|| format!("{v} is beyond f32's range"))
    })
}

/// A finite number > 0.
pub fn finite_positive(s: &str) -> std::result::Result<f64, String> {
    match float(s)? {
        v if v.is_finite() && v > 0.0 => Ok(v),
        v => Err(format!("must be a finite number > 0, got {v}")),
    }
}

/// A probability or share, in [0, 1].
pub fn unit_interval(s: &str) -> std::result::Result<f64, String> {
    match float(s)? {
        v if (0.0..=1.0).contains(&v) => Ok(v),
        v => Err(format!("must lie in [0, 1], got {v}")),
    }
}
