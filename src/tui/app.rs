//! Application state and how keys and engine events change it. Drawing reads
//! this state only (see `ui`).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ratatui::layout::Rect;

mod events;
mod figure;
mod guided;
mod input;

use crate::analysis::attack::{Attack, AttackMode};
use crate::engine::{Job, LayerDetail, ModelInfo, ProbeResult, ProbeStates};

/// The three views Tab cycles through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// layers x hidden dims: max |resid_post| over the probe's tokens.
    Layers,
    /// tokens x hidden dims of the selected layer.
    Tokens,
    /// tokens x d_ff dims (the MLP's intermediate state) of the selected layer.
    Ffn,
}

impl View {
    pub fn title(self) -> &'static str {
        match self {
            View::Layers => "layers x hidden dims (max |x| over tokens)",
            View::Tokens => "tokens x hidden dims",
            View::Ffn => "tokens x d_ff (mlp.hook_post)",
        }
    }
}

/// What the heatmap shows of the pair: the left panel's model (the
/// original), the right panel's (the attacked one), or the change between
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    Original,
    Attacked,
    Change,
}

impl Shown {
    fn next(self) -> Self {
        match self {
            Shown::Original => Shown::Attacked,
            Shown::Attacked => Shown::Change,
            Shown::Change => Shown::Original,
        }
    }
}

/// The pair's states over the probe, for the toggle they belong to.
#[derive(Debug, Clone)]
pub struct PairStates {
    pub sides: Box<[ProbeStates; 2]>,
}

impl PairStates {
    /// The layer whose tokens x dims states these hold.
    pub fn layer(&self) -> usize {
        self.sides[0].detail.layer
    }
}

/// Sends a job to the engine and returns the epoch it belongs to.
pub type Submit = Box<dyn FnMut(Job) -> u64>;

pub struct App {
    submit: Submit,
    pub info: Option<ModelInfo>,
    pub loading: Option<(usize, usize)>,
    pub status: String,
    pub error: Option<String>,
    pub probe: Option<ProbeResult>,
    pub detail: Option<LayerDetail>,
    /// Both panels' states (left, right) for the latest toggle.
    pub states: Option<PairStates>,
    /// Which of them the heatmap shows (`c` cycles).
    pub shown: Shown,
    pub view: View,
    pub layer: usize,
    pub dim: usize,
    pub token: usize,
    pub ffn_dim: usize,
    pub mode: AttackMode,
    pub k: usize,
    /// Custom d_ff dims (picked with space in the d_ff view) and their layer.
    pub custom: BTreeSet<usize>,
    pub custom_layer: Option<usize>,
    /// The layer attacks target when the user picked one (`t`); None: the
    /// massive layer, the default.
    pub target_layer: Option<usize>,
    pub prompt: String,
    pub probe_prompt: String,
    pub chat: bool,
    pub editing: bool,
    /// The prompt before the edit began: Esc puts it back.
    prompt_before_edit: String,
    pub max_tokens: usize,
    pub generated: [String; 2],
    pub generating: bool,
    /// The model of each panel: None the base model, else an adapter of
    /// [`ModelInfo::adapters`]. Two different models run the same attack.
    pub models: crate::engine::PanelModels,
    epoch: u64,
    /// Perplexity of the evaluation text: original, attacked (None while computing).
    pub perplexity: (Option<f64>, Option<f64>),
    /// The zero-shot task the accuracy key runs (an index into `tasks::TASKS`).
    pub task: usize,
    /// Set by the accuracy key: every toggle then re-runs the task too.
    pub accuracy_on: bool,
    /// acc on `task`: original, attacked (None while computing).
    pub accuracy: (Option<f64>, Option<f64>),
    /// Only the first questions of the task (tests, quick looks); None: all.
    pub accuracy_limit: Option<usize>,
    /// Questions scored of the running accuracy job, of all.
    pub accuracy_progress: Option<(usize, usize)>,
    pub show_log: bool,
    pub show_help: bool,
    pub quit: bool,
    /// Set whenever something visible changed; the loop draws only then.
    pub dirty: bool,
    /// Where the heatmap was drawn last (for mouse clicks).
    pub heatmap_area: Option<Rect>,
    /// The guided tour, while it runs.
    pub tour: Option<super::tour::Tour>,
    /// Start the tour as soon as the model is scanned (`mwtop --tour`).
    pub tour_on_start: bool,
    /// How the model's matrices are held (`--weights`); None: the
    /// device's default.
    pub weights: Option<crate::model::WeightPrecision>,
    toggled_at: Option<Instant>,
    /// Keypress (toggle) to first new token, of the latest toggle.
    pub first_token_latency: Option<Duration>,
}

impl App {
    pub fn new(submit: Submit, prompt: &str) -> Self {
        Self {
            submit,
            info: None,
            loading: None,
            status: "starting".into(),
            error: None,
            probe: None,
            detail: None,
            states: None,
            shown: Shown::Original,
            view: View::Layers,
            layer: 0,
            dim: 0,
            token: 0,
            ffn_dim: 0,
            mode: AttackMode::Original,
            k: 2,
            custom: BTreeSet::new(),
            custom_layer: None,
            target_layer: None,
            prompt: prompt.to_string(),
            probe_prompt: crate::analysis::target::DEFAULT_PROBE.to_string(),
            chat: true,
            editing: false,
            prompt_before_edit: String::new(),
            max_tokens: 48,
            generated: [String::new(), String::new()],
            generating: false,
            models: [None, None],
            epoch: 0,
            perplexity: (None, None),
            task: 0,
            accuracy_on: false,
            accuracy: (None, None),
            accuracy_progress: None,
            accuracy_limit: None,
            show_log: false,
            show_help: false,
            quit: false,
            dirty: true,
            heatmap_area: None,
            tour: None,
            tour_on_start: false,
            weights: None,
            toggled_at: None,
            first_token_latency: None,
        }
    }

    /// The attack the current mode, k and custom dims describe.
    pub fn attack(&self) -> Option<Attack> {
        let probe = self.probe.as_ref()?;
        let d_ff = self.info.as_ref()?.config.d_ff;
        if self.mode == AttackMode::Original {
            return None;
        }
        if self.mode == AttackMode::Super {
            let r = &probe.report;
            let sw = r
                .super_weights
                .first()
                .filter(|_| r.massive_layer.is_some())?;
            return Some(Attack::super_weight(sw.layer, sw.row, sw.col));
        }
        if let (false, Some(layer)) = (self.custom.is_empty(), self.custom_layer) {
            let dims: Vec<usize> = self.custom.iter().copied().collect();
            return Some(Attack::new(self.mode, layer, &dims, dims.len(), d_ff, 0));
        }
        if let Some(layer) = self.target_layer.filter(|&l| l < probe.mlp_pos0.len()) {
            // That layer's d_ff dims, by |state| at position 0 as the scan ranks them.
            let state = &probe.mlp_pos0[layer];
            let ranked = crate::analysis::massive::rank_by_abs(state, state.len());
            return Some(Attack::new(self.mode, layer, &ranked, self.k, d_ff, 0));
        }
        Some(Attack::new(
            self.mode,
            probe.attack_layer,
            &probe.ranked,
            self.k,
            d_ff,
            0,
        ))
    }

    /// Starts generation and perplexity for the current attack; the engine
    /// cancels what the previous toggle started.
    fn rerun(&mut self) {
        if self.probe.is_none() {
            return;
        }
        let attack = self.attack();
        self.epoch = (self.submit)(Job::Generate {
            prompt: self.prompt.clone(),
            chat: self.chat,
            attack: attack.clone(),
            max_tokens: self.max_tokens,
            models: self.models,
        });
        self.states = None;
        self.request_states();
        (self.submit)(Job::Evaluate {
            attack: attack.clone(),
            models: self.models,
        });
        if self.accuracy_on {
            self.run_accuracy(attack);
        }
        self.generated = [String::new(), String::new()];
        self.generating = true;
        self.toggled_at = Some(Instant::now());
        self.first_token_latency = None;
        let same = self.models[0] == self.models[1];
        self.perplexity = match (same, self.mode == AttackMode::Original) {
            (true, true) => (self.perplexity.0, self.perplexity.0),
            (true, false) => (self.perplexity.0, None),
            (false, _) => (None, None),
        };
    }

    /// Asks for both panels' states at the current layer (the heatmap's
    /// attacked and change pictures); they come with the current epoch.
    fn request_states(&mut self) {
        let job = Job::States {
            attack: self.attack(),
            models: self.models,
            layer: self.layer,
        };
        (self.submit)(job);
    }

    /// Asks for the selected layer's tokens x dims states, of the original
    /// (the scan's model) and of the pair.
    fn request_layer(&mut self) {
        (self.submit)(Job::Detail { layer: self.layer });
        self.request_states();
    }

    /// Runs the chosen task on the original (once) and the attacked model.
    fn run_accuracy(&mut self, attack: Option<Attack>) {
        let original = attack.is_none();
        (self.submit)(Job::Accuracy {
            task: crate::tasks::TASKS[self.task].to_string(),
            attack,
            limit: self.accuracy_limit,
            models: self.models,
        });
        self.accuracy_progress = None;
        self.accuracy = match (self.models[0] == self.models[1], original) {
            (true, true) => (self.accuracy.0, self.accuracy.0),
            (true, false) => (self.accuracy.0, None),
            (false, _) => (None, None),
        };
    }

    /// The name of a panel's model.
    pub fn model_name(&self, side: usize) -> String {
        match self.models[side] {
            None => "base".into(),
            Some(i) => self
                .info
                .as_ref()
                .and_then(|info| info.adapters.get(i).cloned())
                .unwrap_or_else(|| format!("adapter {i}")),
        }
    }

    /// Steps a panel's model through the base model and each adapter.
    fn next_model(&mut self, side: usize) {
        let n = self.info.as_ref().map_or(0, |i| i.adapters.len());
        if n == 0 {
            self.status = "no adapters: start mwtop with --adapter DIR (repeatable)".into();
            return;
        }
        self.models[side] = match self.models[side] {
            None => Some(0),
            Some(i) if i + 1 < n => Some(i + 1),
            Some(_) => None,
        };
        self.perplexity = (None, None);
        self.accuracy = (None, None);
        self.status = format!(
            "left: {}, right: {}{}",
            self.model_name(0),
            self.model_name(1),
            if self.models[0] == self.models[1] {
                " (original beside attacked)"
            } else {
                " (both under the same attack)"
            }
        );
        self.rerun();
    }

    /// The epoch of the latest toggle: events of older ones are ignored.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The chosen task's name.
    pub fn task_name(&self) -> &'static str {
        crate::tasks::TASKS[self.task]
    }

    /// Asks the engine to load the model; `device` is `cpu`, `cuda[:N]` or None (the default).
    pub fn start(
        &mut self,
        spec: Option<String>,
        device: Option<String>,
        dtype: candle_core::DType,
    ) {
        self.start_with_adapters(spec, device, dtype, Vec::new());
    }

    /// As [`Self::start`], with LoRA adapters to show beside the base model.
    pub fn start_with_adapters(
        &mut self,
        spec: Option<String>,
        device: Option<String>,
        dtype: candle_core::DType,
        adapters: Vec<std::path::PathBuf>,
    ) {
        self.status = match &spec {
            Some(s) => format!("opening {s}"),
            None => "opening the demo model".into(),
        };
        (self.submit)(Job::Load {
            spec,
            device,
            dtype,
            weights: self.weights,
            adapters,
        });
    }

    /// (rows, cols) of the data the current view shows.
    pub fn view_shape(&self) -> (usize, usize) {
        let Some(info) = &self.info else {
            return (0, 0);
        };
        let tokens = self.detail.as_ref().map_or(0, |d| d.resid.len());
        match self.view {
            View::Layers => (info.config.n_layers, info.config.d_model),
            View::Tokens => (tokens, info.config.d_model),
            View::Ffn => (tokens, info.config.d_ff),
        }
    }
}
