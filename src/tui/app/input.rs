//! How keys and mouse clicks change the application state.

use crossterm::event::{
    Event as TermEvent, KeyCode, KeyEvent, KeyEventKind, MouseButton, MouseEventKind,
};

use super::{App, Shown, View};
use crate::analysis::attack::AttackMode;
use crate::tui::heatmap::Geometry;
use crate::tui::keys::{self, Action};

impl App {
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

    pub(super) fn set_mode(&mut self, mode: AttackMode) {
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
}
