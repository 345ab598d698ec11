//! The messages between the UI and the engine: the jobs it asks for and
//! the events it gets back.

use super::*;

/// What the UI asks for.
#[derive(Debug, Clone)]
pub enum Job {
    /// Open (fetching the demo model when `spec` is None) and load the model.
    /// The device is created here, on the engine thread, where it will be used.
    Load {
        spec: Option<String>,
        device: Option<String>,
        dtype: DType,
        /// How the matrices are held; None: the device's default
        /// ([`runtime::weight_precision`]).
        weights: Option<crate::model::WeightPrecision>,
        /// LoRA adapters (PEFT's format), kept apart from the weights so
        /// the pair's two panels can show the base model and an adapter.
        adapters: Vec<std::path::PathBuf>,
    },
    /// Scan a probe: heatmaps, massive layer, massive weights.
    Probe { prompt: String },
    /// Full tokens x dims states of one layer, for the probe.
    Detail { layer: usize },
    /// Both panels' states over the probe (what the heatmaps show of the
    /// pair): one batch of two rows with the interventions generation uses.
    States {
        attack: Option<Attack>,
        models: PanelModels,
        /// The layer whose full tokens x dims states come with them.
        layer: usize,
    },
    /// Original and attacked generation side by side, one batch of two.
    Generate {
        prompt: String,
        chat: bool,
        attack: Option<Attack>,
        max_tokens: usize,
        models: PanelModels,
    },
    /// Perplexity of the evaluation text, original and attacked.
    Evaluate {
        attack: Option<Attack>,
        models: PanelModels,
    },
    /// Zero-shot accuracy on one task (`crate::tasks::TASKS`), original and
    /// attacked; the original's is kept per task.
    /// `limit`: its first questions only.
    Accuracy {
        task: String,
        attack: Option<Attack>,
        limit: Option<usize>,
        models: PanelModels,
    },
    /// The next questions of the accuracy run in progress (the engine's own).
    AccuracyStep,
}

/// The model each panel of the pair shows: None for the base model, else
/// the index of an adapter ([`ModelInfo::adapters`]).
pub type PanelModels = [Option<usize>; 2];

/// What one panel of the pair runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Side {
    pub(crate) model: Option<usize>,
    pub(crate) attacked: bool,
}

/// The pair's two sides: one model original beside attacked, or two
/// models side by side under the same attack.
pub(crate) fn sides(models: PanelModels, attack: bool) -> [Side; 2] {
    if models[0] == models[1] {
        [
            Side {
                model: models[0],
                attacked: false,
            },
            Side {
                model: models[1],
                attacked: attack,
            },
        ]
    } else {
        models.map(|model| Side {
            model,
            attacked: attack,
        })
    }
}

impl Job {
    pub(super) fn kind(&self) -> usize {
        match self {
            Job::Load { .. } => 0,
            Job::Probe { .. } => 1,
            Job::Detail { .. } => 2,
            Job::States { .. } => 3,
            Job::Generate { .. } => 4,
            Job::Evaluate { .. } => 5,
            Job::Accuracy { .. } => 6,
            Job::AccuracyStep => 7,
        }
    }
}

/// Static facts about the loaded model, for the title bar and panels.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub name: String,
    pub config: ModelConfig,
    pub parameters: u64,
    pub device: String,
    pub dtype: String,
    pub load_seconds: f64,
    /// The adapters loaded beside the base model, by directory name.
    pub adapters: Vec<String>,
}

/// What a probe gives the views.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    pub report: ScanReport,
    /// layers x d_model: max over tokens of |resid_post|.
    pub resid_max: Vec<Vec<f32>>,
    /// layers x d_ff: the d_ff state at position 0.
    pub mlp_pos0: Vec<Vec<f32>>,
    /// The layer the attacks use ([`target::attack_layer`]'s rule).
    pub attack_layer: usize,
    /// All d_ff dims of `attack_layer`, most massive first.
    pub ranked: Vec<usize>,
    pub row_stats: Vec<RowStats>,
}

/// What the engine reports.
#[derive(Debug, Clone)]
pub enum Event {
    Status(String),
    Loading {
        done: usize,
        total: usize,
    },
    Loaded(Box<ModelInfo>),
    Failed(String),
    Probed(Box<ProbeResult>),
    Detail(Box<LayerDetail>),
    /// The pair's states (left panel, right panel) for the toggle `epoch`.
    States {
        epoch: u64,
        sides: Box<[ProbeStates; 2]>,
    },
    /// A token for row 0 (original) or 1 (attacked) of generation `epoch`.
    Token {
        epoch: u64,
        row: usize,
        text: String,
    },
    GenerationDone {
        epoch: u64,
        stop: [StopReason; 2],
    },
    Perplexity {
        epoch: u64,
        original: f64,
        attacked: f64,
    },
    /// Questions scored so far of an accuracy run (both models together).
    AccuracyProgress {
        epoch: u64,
        task: String,
        done: usize,
        total: usize,
    },
    /// acc of `task`, original and attacked.
    Accuracy {
        epoch: u64,
        task: String,
        original: f64,
        attacked: f64,
    },
}
