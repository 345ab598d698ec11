//! Application state and how keys and engine events change it. Drawing reads
//! this state only (see `ui`).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crossterm::event::{
    Event as TermEvent, KeyCode, KeyEvent, KeyEventKind, MouseButton, MouseEventKind,
};
use ratatui::layout::Rect;

mod figure;
mod guided;

use super::heatmap::Geometry;
use super::keys::{self, Action};
use crate::analysis::attack::{Attack, AttackMode};
use crate::engine::{Event, Job, LayerDetail, ModelInfo, ProbeResult, ProbeStates};

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

    pub fn on_engine_event(&mut self, event: Event) {
        self.dirty = true;
        match event {
            Event::Status(s) => self.status = s,
            Event::Loading { done, total } => self.loading = Some((done, total)),
            Event::Loaded(info) => {
                self.loading = None;
                // With adapters, the base model beside the first one.
                self.models = [None, (!info.adapters.is_empty()).then_some(0)];
                self.status = format!("loaded in {:.1}s; probing", info.load_seconds);
                self.info = Some(*info);
                (self.submit)(Job::Probe {
                    prompt: self.probe_prompt.clone(),
                });
            }
            Event::Failed(msg) => {
                if self.info.is_none() {
                    self.error = Some(msg);
                } else {
                    self.status = format!("error: {msg}");
                }
            }
            Event::Probed(p) => {
                let first = self.probe.is_none();
                self.layer = p.attack_layer;
                if let Some(a) = p
                    .report
                    .layers
                    .get(p.attack_layer)
                    .and_then(|l| l.top.first())
                {
                    self.dim = a.dim;
                }
                self.ffn_dim = p.ranked.first().copied().unwrap_or(0);
                self.status = match p.report.massive_layer {
                    Some(l) => format!("massive layer {l}"),
                    None => format!(
                        "no massive activation at 100 / 1000x; attacks use layer {}",
                        p.attack_layer
                    ),
                };
                self.probe = Some(*p);
                if first && self.tour_on_start {
                    self.start_tour();
                } else if first {
                    (self.submit)(Job::Detail { layer: self.layer });
                    self.rerun();
                } else {
                    self.request_layer();
                }
            }
            Event::Detail(d) => {
                self.token = self.token.min(d.resid.len().saturating_sub(1));
                self.detail = Some(*d);
            }
            Event::States { epoch, sides } => {
                if epoch == self.epoch {
                    self.states = Some(PairStates { sides });
                }
            }
            Event::Token { epoch, row, text } => {
                if epoch == self.epoch && row < 2 {
                    if self.first_token_latency.is_none() {
                        self.first_token_latency = self.toggled_at.map(|t| t.elapsed());
                    }
                    self.generated[row].push_str(&text);
                }
            }
            Event::GenerationDone { epoch, .. } => {
                if epoch == self.epoch {
                    self.generating = false;
                }
            }
            Event::Perplexity {
                epoch,
                original,
                attacked,
            } => {
                if epoch == self.epoch {
                    self.perplexity = (Some(original), Some(attacked));
                }
            }
            Event::AccuracyProgress {
                epoch,
                task,
                done,
                total,
            } => {
                if epoch == self.epoch && task == self.task_name() {
                    self.accuracy_progress = Some((done, total));
                }
            }
            Event::Accuracy {
                epoch,
                task,
                original,
                attacked,
            } => {
                if epoch == self.epoch && task == self.task_name() {
                    self.accuracy = (Some(original), Some(attacked));
                    self.accuracy_progress = None;
                }
            }
        }
    }

    pub fn on_terminal_event(&mut self, event: TermEvent) {
        match event {
            TermEvent::Key(key) if key.kind != KeyEventKind::Release => self.on_key(key),
            TermEvent::Mouse(m) if matches!(m.kind, MouseEventKind::Down(MouseButton::Left)) => {
                self.click(m.column, m.row)
            }
            TermEvent::Resize(..) => self.dirty = true,
            _ => {}
        }
    }

    fn on_key(&mut self, key: KeyEvent) {
        self.dirty = true;
        if self.editing {
            match key.code {
                KeyCode::Enter => {
                    self.editing = false;
                    self.rerun();
                }
                KeyCode::Esc => {
                    self.editing = false;
                    self.prompt = std::mem::take(&mut self.prompt_before_edit);
                }
                KeyCode::Backspace => {
                    self.prompt.pop();
                }
                KeyCode::Char(c) => self.prompt.push(c),
                _ => {}
            }
            return;
        }
        if self.tour.is_some() && !self.show_help && self.tour_key(key.code) {
            return;
        }
        if self.show_help {
            self.show_help = false;
            if key.code == KeyCode::Char('?') || key.code == KeyCode::Esc {
                return;
            }
        }
        if self.error.is_some() {
            if matches!(key.code, KeyCode::Char('q') | KeyCode::Esc) {
                self.quit = true;
            }
            return;
        }
        if let Some(action) = keys::action_for(key) {
            self.act(action);
        }
    }

    pub fn act(&mut self, action: Action) {
        self.dirty = true;
        let d_ff = self.info.as_ref().map_or(1, |i| i.config.d_ff);
        match action {
            Action::Quit => self.quit = true,
            Action::Help => self.show_help = !self.show_help,
            Action::ToggleLog => self.show_log = !self.show_log,
            Action::EditPrompt => {
                self.editing = true;
                self.prompt_before_edit = self.prompt.clone();
            }
            Action::Regenerate => self.rerun(),
            Action::Accuracy => {
                if self.probe.is_some() {
                    self.accuracy_on = true;
                    self.accuracy = (None, None);
                    self.run_accuracy(self.attack());
                }
            }
            Action::NextModel => self.next_model(1),
            Action::PrevModelLeft => self.next_model(0),
            Action::NextTask => {
                self.task = (self.task + 1) % crate::tasks::TASKS.len();
                self.accuracy = (None, None);
                self.status = format!("accuracy task: {} (a runs it)", self.task_name());
                if self.accuracy_on && self.probe.is_some() {
                    self.run_accuracy(self.attack());
                }
            }
            Action::Original => self.set_mode(AttackMode::Original),
            Action::TargetLayer => {
                let massive = self.probe.as_ref().map(|p| p.attack_layer);
                self.target_layer = match self.target_layer {
                    Some(l) if l == self.layer => None,
                    _ if Some(self.layer) == massive => None,
                    _ => Some(self.layer),
                };
                self.status = match self.target_layer {
                    Some(l) => format!("attacks target layer {l} (t again: the massive layer)"),
                    None => "attacks target the massive layer".into(),
                };
                self.rerun_if_attacking();
            }
            Action::SuperWeight => {
                let has = self
                    .probe
                    .as_ref()
                    .is_some_and(|p| p.report.massive_layer.is_some());
                if has {
                    self.set_mode(AttackMode::Super);
                } else {
                    self.status = "no massive activation, so no super weight".into();
                }
            }
            Action::Zero => self.set_mode(AttackMode::Zero),
            Action::Keep => self.set_mode(AttackMode::Keep),
            Action::Random => self.set_mode(match self.mode {
                AttackMode::Keep | AttackMode::RandomKeep => AttackMode::RandomKeep,
                _ => AttackMode::RandomZero,
            }),
            Action::MoreK => {
                self.k = (self.k.max(1) * 2).min(d_ff);
                self.custom.clear();
                self.rerun_if_attacking();
            }
            Action::LessK => {
                self.k = if self.k <= 1 { 0 } else { self.k / 2 };
                self.custom.clear();
                self.rerun_if_attacking();
            }
            Action::ToggleDim => {
                if self.view == View::Ffn {
                    if self.custom_layer != Some(self.layer) {
                        self.custom.clear();
                        self.custom_layer = Some(self.layer);
                    }
                    if !self.custom.remove(&self.ffn_dim) {
                        self.custom.insert(self.ffn_dim);
                    }
                    self.rerun_if_attacking();
                } else {
                    self.status = "space picks d_ff dims: switch to the d_ff view with Tab".into();
                }
            }
            Action::Tour => self.start_tour(),
            Action::Save => {
                self.status = match self.save_figure(std::path::Path::new(".")) {
                    Ok(path) => format!("saved {}", path.display()),
                    Err(e) => format!("not saved: {e}"),
                };
            }
            Action::CycleShown => {
                self.shown = self.shown.next();
                self.status = match self.shown {
                    Shown::Original => "heatmap: the original model (left panel)".into(),
                    Shown::Attacked => "heatmap: the attacked model (right panel)".into(),
                    Shown::Change => "heatmap: change, attacked vs original (log ratio)".into(),
                };
            }
            Action::NextView | Action::PrevView => {
                let order = [View::Layers, View::Tokens, View::Ffn];
                let i = order.iter().position(|v| *v == self.view).unwrap_or(0);
                let step = if action == Action::NextView { 1 } else { 2 };
                self.view = order[(i + step) % 3];
            }
            Action::Left | Action::Right | Action::Up | Action::Down => self.move_cursor(action),
        }
    }

    fn set_mode(&mut self, mode: AttackMode) {
        self.mode = mode;
        // After a toggle the heatmap shows the attacked model, the
        // original one key (c) away.
        self.shown = if mode == AttackMode::Original {
            Shown::Original
        } else {
            Shown::Attacked
        };
        self.rerun();
    }

    fn rerun_if_attacking(&mut self) {
        if self.mode != AttackMode::Original {
            self.rerun();
        }
    }

    fn move_cursor(&mut self, action: Action) {
        let Some(info) = &self.info else { return };
        let (n_layers, d, d_ff) = (info.config.n_layers, info.config.d_model, info.config.d_ff);
        let tokens = self.detail.as_ref().map_or(1, |t| t.resid.len().max(1));
        // Horizontal steps move one heatmap column, so a wide model is crossable.
        let step = |n: usize| {
            self.heatmap_area
                .and_then(|a| Geometry::new(a, 1, n))
                .map_or(1, |g| g.cols_per_cell())
        };
        let (col, n_cols) = match self.view {
            View::Ffn => (&mut self.ffn_dim, d_ff),
            _ => (&mut self.dim, d),
        };
        let s = step(n_cols);
        match action {
            Action::Left => *col = col.saturating_sub(s),
            Action::Right => *col = (*col + s).min(n_cols - 1),
            Action::Up | Action::Down => {
                let up = action == Action::Up;
                if self.view == View::Layers {
                    self.layer = if up {
                        self.layer.saturating_sub(1)
                    } else {
                        (self.layer + 1).min(n_layers - 1)
                    };
                    self.request_layer();
                } else {
                    self.token = if up {
                        self.token.saturating_sub(1)
                    } else {
                        (self.token + 1).min(tokens - 1)
                    };
                }
            }
            _ => {}
        }
    }

    fn click(&mut self, x: u16, y: u16) {
        let Some(area) = self.heatmap_area else {
            return;
        };
        let (n_rows, n_cols) = self.view_shape();
        let Some(g) = Geometry::new(area, n_rows, n_cols) else {
            return;
        };
        // A cell holds two pixels; a click picks the upper one.
        if let Some((row, col)) = g.locate(area, x, y, true) {
            self.dirty = true;
            match self.view {
                View::Layers => {
                    self.layer = row;
                    self.dim = col;
                    self.request_layer();
                }
                View::Tokens => {
                    self.token = row;
                    self.dim = col;
                }
                View::Ffn => {
                    self.token = row;
                    self.ffn_dim = col;
                }
            }
        }
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
