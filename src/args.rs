//! Command-line options shared by several subcommands: where the model runs,
//! which massive-activation thresholds apply, which attack to run.

use clap::ValueEnum;
use color_eyre::eyre::{eyre, Result};

use mwtop::analysis::attack::{Attack, AttackMode};
use mwtop::analysis::massive::{MedianScope, Thresholds};
use mwtop::cli::{self, load};

/// Sun et al.'s definition of a massive activation.
#[derive(clap::Args, Clone)]
pub struct ThresholdArgs {
    /// |x| must exceed this.
    #[arg(long, default_value_t = 100.0)]
    min_abs: f32,
    /// |x| must be at least this many times the median |x|.
    #[arg(long, default_value_t = 1000.0)]
    min_ratio: f32,
    /// The median of the whole layer output (as the published code) or of the token's vector.
    #[arg(long, value_enum, default_value_t = Scope::Layer)]
    median: Scope,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Scope {
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

/// Which attack to run (House of Cards), on the massive layer by default.
#[derive(clap::Args, Clone)]
pub struct AttackArgs {
    /// original, zero (top-k rows zeroed), keep (only the top-k kept),
    /// random-zero, random-keep (k random dims, the controls).
    #[arg(long, default_value = "original")]
    mode: String,
    /// How many massive weights the attack touches.
    #[arg(long, default_value_t = 2)]
    k: usize,
    /// The layer to attack (default: the massive layer found by a scan of --probe).
    #[arg(long)]
    layer: Option<usize>,
    /// Explicit d_ff dims (comma-separated), most massive first; sets k to their count.
    #[arg(long, value_delimiter = ',')]
    dims: Option<Vec<usize>>,
    /// The probe used to find the massive layer and rank its dims.
    #[arg(long, default_value = cli::attack::DEFAULT_PROBE)]
    probe: String,
    #[command(flatten)]
    thresholds: ThresholdArgs,
}

impl AttackArgs {
    pub fn mode(&self) -> Result<AttackMode> {
        self.mode.parse().map_err(|e: String| eyre!(e))
    }

    /// The target and the attack, or None for the original model with nothing resolved.
    pub fn resolve(
        &self,
        model: &mwtop::model::Model,
        tok: &tokenizers::Tokenizer,
        seed: u64,
        needed: bool,
    ) -> Result<Option<(cli::attack::Target, Attack)>> {
        let mode = self.mode()?;
        if mode == AttackMode::Original && !needed {
            return Ok(None);
        }
        let target = cli::attack::resolve_target(
            model,
            tok,
            &self.probe,
            self.thresholds.get(),
            self.layer,
            self.dims.clone(),
        )
        .map_err(|e| eyre!(e))?;
        let k = self.dims.as_ref().map_or(self.k, Vec::len);
        let attack = Attack::new(
            mode,
            target.layer,
            &target.ranked,
            k,
            model.config().d_ff,
            seed,
        );
        Ok(Some((target, attack)))
    }
}

/// Where and in which precision the model runs.
#[derive(clap::Args)]
pub struct RunArgs {
    /// cpu, cuda or cuda:N (default: cuda when built in and present, else cpu).
    #[arg(long)]
    pub device: Option<String>,
    /// Compute dtype: f32 (default; bf16 spacing at 20,000 is 128), f16, bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

impl RunArgs {
    pub fn load(&self, ckpt: &mwtop::checkpoint::Checkpoint) -> Result<mwtop::model::Model> {
        let device = load::parse_device(self.device.as_deref()).map_err(|e| eyre!(e))?;
        let dtype = load::parse_dtype(&self.dtype).map_err(|e| eyre!(e))?;
        Ok(load::load_model(ckpt, &device, dtype)?)
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum OutDType {
    F32,
    F16,
    Bf16,
}

impl From<OutDType> for candle_core::DType {
    fn from(d: OutDType) -> Self {
        match d {
            OutDType::F32 => Self::F32,
            OutDType::F16 => Self::F16,
            OutDType::Bf16 => Self::BF16,
        }
    }
}

/// "zero top-2 of layer 11 (dims 1229,1487)".
pub fn describe(a: &Attack) -> String {
    let dims: Vec<String> = a.dims.iter().take(6).map(usize::to_string).collect();
    let more = if a.dims.len() > 6 { ",..." } else { "" };
    match a.mode {
        AttackMode::Original => "original".into(),
        m => format!(
            "{m} k={} on layer {} (dims {}{more})",
            a.k,
            a.layer,
            dims.join(",")
        ),
    }
}
