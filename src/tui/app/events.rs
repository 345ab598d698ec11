//! How the engine's events (loading, probe, states, tokens, scores)
//! change the application state.

use super::{App, PairStates};
use crate::engine::{Event, Job};

impl App {
    /// Applies one engine event; work it implies (the probe after a load,
    /// the detail after a probe) is submitted from here.
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
}
