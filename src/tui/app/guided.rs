//! The guided tour: each step sets the view, the cursor and the attack.

use crossterm::event::KeyCode;

use super::App;
use crate::engine::Job;

impl App {
    /// Starts the guided tour at its first step.
    pub fn start_tour(&mut self) {
        let (Some(probe), Some(info)) = (&self.probe, &self.info) else {
            self.status = "the tour starts once the model is scanned".into();
            return;
        };
        let steps = crate::tui::tour::steps(probe, info);
        self.tour = Some(crate::tui::tour::Tour { steps, at: 0 });
        self.apply_tour_step();
    }

    /// A key while the tour runs: true when the tour took it.
    pub(super) fn tour_key(&mut self, code: KeyCode) -> bool {
        let Some(tour) = &mut self.tour else {
            return false;
        };
        match code {
            KeyCode::Char(' ') | KeyCode::Enter | KeyCode::Right | KeyCode::Char('n') => {
                if tour.at + 1 < tour.steps.len() {
                    tour.at += 1;
                    self.apply_tour_step();
                } else {
                    self.end_tour();
                }
                true
            }
            KeyCode::Left | KeyCode::Backspace | KeyCode::Char('p') => {
                if tour.at > 0 {
                    tour.at -= 1;
                    self.apply_tour_step();
                }
                true
            }
            KeyCode::Esc => {
                self.end_tour();
                true
            }
            _ => false,
        }
    }

    fn end_tour(&mut self) {
        self.tour = None;
        self.status = "tour over: the keys are yours (? lists them)".into();
    }

    /// Sets the view, the cursor and the attack of the tour's current step.
    fn apply_tour_step(&mut self) {
        let Some(step) = self.tour.as_ref().map(|t| t.step().clone()) else {
            return;
        };
        let s = step.setting;
        self.view = s.view;
        self.k = s.k;
        self.custom.clear();
        self.custom_layer = None;
        self.target_layer = None;
        self.layer = s.layer;
        self.token = 0;
        if let Some(d) = s.dim {
            self.dim = d;
        }
        if let Some(d) = s.ffn_dim {
            self.ffn_dim = d;
        }
        (self.submit)(Job::Detail { layer: self.layer });
        self.set_mode(s.mode);
        self.shown = s.shown;
        self.status = format!("tour: {}", step.title);
    }
}
