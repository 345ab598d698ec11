//! Zero-shot accuracy in the engine: a run scores a few questions per
//! [`super::Job::AccuracyStep`], so every other job waits at most one step; the
//! original model's accuracy is kept per task.

use std::sync::atomic::Ordering;

use super::{sides, Engine, Event, PanelModels, Side};
use crate::analysis::attack::Attack;
use crate::analysis::zero_shot::{self, Budget};
use crate::model::intervention::Interventions;
use crate::model::{Model, ModelError};

/// An accuracy run in progress: the interventions still to score (the
/// original first when its acc is not known yet) and the scores so far.
pub(super) struct AccuracyRun {
    epoch: u64,
    /// The task's name, for the events.
    name: String,
    /// The caches' key: the name, and the limit if any.
    task: String,
    rows: Vec<Interventions>,
    /// The side each row of `rows` scores.
    row_sides: Vec<Side>,
    /// The pair's two sides.
    pair: [Side; 2],
    /// Per row of `rows`: the log-likelihoods of the questions scored so
    /// far, growing step by step.
    scores: Vec<Vec<Vec<f64>>>,
}

/// Questions per accuracy step: a few seconds of work on a CPU.
fn step_questions(model: &Model) -> usize {
    if model.device().is_cpu() {
        16
    } else {
        512
    }
}

impl<F: Fn(Event)> Engine<F> {
    /// Sets up an accuracy run (fetching the task data once, tokenizing the
    /// task once); its steps follow as [`super::Job::AccuracyStep`]s.
    pub(super) fn start_accuracy(
        &mut self,
        task: String,
        attack: Option<Attack>,
        limit: Option<usize>,
        models: PanelModels,
    ) -> Result<(), ModelError> {
        let epoch = self.epoch.load(Ordering::SeqCst);
        let emit = &self.emit;
        let l = self
            .loaded
            .as_mut()
            .ok_or_else(|| ModelError::Invalid("no model loaded".into()))?;
        l.accuracy_run = None;
        let name = task;
        // Cached per task and limit.
        let task = match limit {
            Some(n) => format!("{name}/{n}"),
            None => name.clone(),
        };
        if !l.task_questions.contains_key(&task) {
            emit(Event::Status(format!("reading the {name} questions")));
            let data =
                crate::tasks::ensure_data().map_err(|e| ModelError::Invalid(e.to_string()))?;
            let questions = crate::tasks::load_task(&data, &name)
                .map_err(|e| ModelError::Invalid(e.to_string()))?;
            let questions = &questions[..limit.unwrap_or(usize::MAX).min(questions.len())];
            if questions.is_empty() {
                return Err(ModelError::Invalid(format!(
                    "{name}: no questions to score"
                )));
            }
            let encoded = zero_shot::encode_questions(&l.model, &l.tokenizer, questions)?;
            l.task_questions.insert(task.clone(), encoded);
        }
        let pair = sides(models, attack.is_some());
        // Each distinct side once; an unattacked model's acc is kept.
        let mut row_sides: Vec<Side> = Vec::new();
        for s in pair {
            let known = !s.attacked && l.original_acc.contains_key(&(task.clone(), s.model));
            if !known && !row_sides.contains(&s) {
                row_sides.push(s);
            }
        }
        if row_sides.is_empty() {
            let acc = |s: Side| l.original_acc[&(task.clone(), s.model)];
            emit(Event::Accuracy {
                epoch,
                task: name,
                original: acc(pair[0]),
                attacked: acc(pair[1]),
            });
            return Ok(());
        }
        let rows: Vec<Interventions> = row_sides
            .iter()
            .map(|&s| l.side(s, attack.as_ref()))
            .collect();
        l.accuracy_run = Some(AccuracyRun {
            epoch,
            name,
            task,
            scores: vec![Vec::new(); rows.len()],
            rows,
            row_sides,
            pair,
        });
        Ok(())
    }

    /// Scores the next few questions of the run; at its end reports acc.
    pub(super) fn accuracy_step(&mut self) -> Result<(), ModelError> {
        let now = self.epoch.load(Ordering::SeqCst);
        let cancel = self.token();
        let emit = &self.emit;
        let Some(l) = self.loaded.as_mut() else {
            return Ok(());
        };
        let Some(run) = l.accuracy_run.as_mut() else {
            return Ok(());
        };
        // A toggle since the run began made it obsolete.
        if run.epoch != now {
            l.accuracy_run = None;
            return Ok(());
        }
        let questions = &l.task_questions[&run.task];
        let n = questions.len();
        let Some(phase) = run.scores.iter().position(|s| s.len() < n) else {
            // Nothing left to score: never step again.
            l.accuracy_run = None;
            return Ok(());
        };
        let from = run.scores[phase].len();
        let to = (from + step_questions(&l.model)).min(n);
        let budget = Budget::for_model(&l.model);
        let scores = zero_shot::score(
            &l.model,
            &questions[from..to],
            &run.rows[phase],
            budget,
            Some(&cancel),
            |_, _| {},
        )?;
        run.scores[phase].extend(scores);
        let done: usize = run.scores.iter().map(Vec::len).sum();
        emit(Event::AccuracyProgress {
            epoch: run.epoch,
            task: run.name.clone(),
            done,
            total: n * run.rows.len(),
        });
        if done < n * run.rows.len() {
            return Ok(());
        }
        let run = l.accuracy_run.take().expect("checked above");
        let accs: Vec<f64> = run
            .scores
            .iter()
            .map(|s| zero_shot::task_score(&run.task, questions, s).acc)
            .collect();
        for (s, &a) in run.row_sides.iter().zip(&accs) {
            if !s.attacked {
                l.original_acc.insert((run.task.clone(), s.model), a);
            }
        }
        let acc = |side: Side| match run.row_sides.iter().position(|&s| s == side) {
            Some(i) => accs[i],
            None => l.original_acc[&(run.task.clone(), side.model)],
        };
        emit(Event::Accuracy {
            epoch: run.epoch,
            task: run.name.clone(),
            original: acc(run.pair[0]),
            attacked: acc(run.pair[1]),
        });
        Ok(())
    }
}
