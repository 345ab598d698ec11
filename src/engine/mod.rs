//! The engine: one dedicated OS thread owns the device and the model (CUDA
//! contexts are bound to threads). The UI sends [`Job`]s and receives
//! [`Event`]s; it never waits on the model.
//!
//! - A newer job of a kind replaces a pending one of the same kind (only the
//!   latest request matters to a user who is toggling).
//! - Every job that starts a new "what-if" (generation, perplexity) bumps a
//!   shared epoch, which cancels the running generation or perplexity between
//!   two layers.
//! - Jobs run in priority order: load, probe, layer detail, the pair's
//!   states, generation, perplexity, then zero-shot accuracy, so a toggle's first token is not
//!   stuck behind a long perplexity run. Accuracy runs a few questions per
//!   step and yields to any other job between steps.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::DType;
use serde::Serialize;

use crate::analysis::attack::Attack;
use crate::analysis::generate::{generate, GenerateParams, StopReason};
use crate::analysis::massive::{self, ScanReport, Thresholds};
use crate::analysis::perplexity::{perplexity_cancellable, Window};
pub use crate::analysis::states::{LayerDetail, ProbeStates};
use crate::analysis::target::{self, RowStats};
use crate::analysis::zero_shot::Encoded;
use crate::checkpoint::chat::PromptFormat;
use crate::checkpoint::ModelConfig;
use crate::model::hooks::{CaptureRequest, HookPoint, Reduction};
use crate::model::intervention::Interventions;
use crate::model::{CancelToken, LogitsMode, Model, ModelError, RunOptions};
use crate::runtime;

mod accuracy;
mod messages;
use accuracy::AccuracyRun;
pub(crate) use messages::{sides, Side};
pub use messages::{Event, Job, ModelInfo, PanelModels, ProbeResult};

/// The UI's handle: submit jobs, cancel what-ifs.
pub struct EngineHandle {
    jobs: Sender<Job>,
    epoch: Arc<AtomicU64>,
}

impl EngineHandle {
    /// Starts the engine thread; events go to `events`.
    pub fn spawn(events: impl Fn(Event) + Send + 'static, eval_text: String) -> Self {
        let (tx, rx) = mpsc::channel();
        let epoch = Arc::new(AtomicU64::new(0));
        let e = epoch.clone();
        std::thread::Builder::new()
            .name("mwtop-engine".into())
            .spawn(move || Engine::new(rx, e, events, eval_text).run())
            .expect("the engine thread starts");
        Self { jobs: tx, epoch }
    }

    /// Sends a job. Generation and perplexity jobs start a new epoch, which
    /// cancels the running ones; returns the epoch the job belongs to.
    pub fn submit(&self, job: Job) -> u64 {
        let epoch = if matches!(job, Job::Generate { .. }) {
            self.epoch.fetch_add(1, Ordering::SeqCst) + 1
        } else {
            self.epoch.load(Ordering::SeqCst)
        };
        let _ = self.jobs.send(job);
        epoch
    }
}

struct Loaded {
    model: Model,
    tokenizer: tokenizers::Tokenizer,
    prompt_format: PromptFormat,
    eval_tokens: Vec<u32>,
    probe: Vec<u32>,
    /// Adapters applied on the fly, per row of the pair.
    adapters: Vec<Arc<crate::model::lora::Lora>>,
    /// Unattacked perplexity per model (None: the base model).
    original_ppl: std::collections::HashMap<Option<usize>, f64>,
    /// Tokenized questions per task, and each model's unattacked acc per task.
    task_questions: std::collections::HashMap<String, Vec<Encoded>>,
    original_acc: std::collections::HashMap<(String, Option<usize>), f64>,
    accuracy_run: Option<AccuracyRun>,
}

impl Loaded {
    /// The interventions of one side of the pair.
    fn side(&self, side: Side, attack: Option<&Attack>) -> Interventions {
        let iv = match (side.attacked, attack) {
            (true, Some(a)) => a.interventions(),
            _ => Interventions::none(),
        };
        iv.with_adapter(side.model.and_then(|i| self.adapters.get(i).cloned()))
    }
}

struct Engine<F: Fn(Event)> {
    rx: Receiver<Job>,
    epoch: Arc<AtomicU64>,
    emit: F,
    eval_text: String,
    pending: VecDeque<Job>,
    loaded: Option<Loaded>,
}

impl<F: Fn(Event)> Engine<F> {
    fn new(rx: Receiver<Job>, epoch: Arc<AtomicU64>, emit: F, eval_text: String) -> Self {
        Self {
            rx,
            epoch,
            emit,
            eval_text,
            pending: VecDeque::new(),
            loaded: None,
        }
    }

    /// Keeps the newest job of each kind.
    fn enqueue(&mut self, job: Job) {
        self.pending.retain(|p| p.kind() != job.kind());
        self.pending.push_back(job);
    }

    fn run(mut self) {
        loop {
            // Block for the first job, then take whatever else is waiting.
            if self.pending.is_empty() {
                match self.rx.recv() {
                    Ok(job) => self.enqueue(job),
                    Err(_) => return,
                }
            }
            loop {
                match self.rx.recv_timeout(Duration::from_millis(0)) {
                    Ok(job) => self.enqueue(job),
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            let next = (0..self.pending.len()).min_by_key(|&i| self.pending[i].kind());
            if let Some(i) = next {
                let job = self.pending.remove(i).expect("index in range");
                let accuracy = matches!(job, Job::Accuracy { .. } | Job::AccuracyStep);
                if let Err(e) = self.handle(job) {
                    if !matches!(e, ModelError::Cancelled) {
                        tracing::error!("{e}");
                        (self.emit)(Event::Failed(crate::runtime::explain(e.to_string())));
                    }
                    if let (true, Some(l)) = (accuracy, self.loaded.as_mut()) {
                        l.accuracy_run = None;
                    }
                }
                let more = self
                    .loaded
                    .as_ref()
                    .is_some_and(|l| l.accuracy_run.is_some());
                if more && !self.pending.iter().any(|j| matches!(j, Job::AccuracyStep)) {
                    self.pending.push_back(Job::AccuracyStep);
                }
            }
        }
    }

    fn token(&self) -> CancelToken {
        CancelToken::new(self.epoch.clone(), self.epoch.load(Ordering::SeqCst))
    }

    fn handle(&mut self, job: Job) -> Result<(), ModelError> {
        match job {
            Job::Load {
                spec,
                device,
                dtype,
                weights,
                adapters,
            } => self.load(spec, device, dtype, weights, adapters),
            Job::Probe { prompt } => self.probe(&prompt),
            Job::Detail { layer } => self.detail(layer),
            Job::States {
                attack,
                models,
                layer,
            } => self.states(attack, models, layer),
            Job::Generate {
                prompt,
                chat,
                attack,
                max_tokens,
                models,
            } => self.generate(&prompt, chat, attack, max_tokens, models),
            Job::Evaluate { attack, models } => self.evaluate(attack, models),
            Job::Accuracy {
                task,
                attack,
                limit,
                models,
            } => self.start_accuracy(task, attack, limit, models),
            Job::AccuracyStep => self.accuracy_step(),
        }
    }

    fn load(
        &mut self,
        spec: Option<String>,
        device: Option<String>,
        dtype: DType,
        weights: Option<crate::model::WeightPrecision>,
        adapter_dirs: Vec<std::path::PathBuf>,
    ) -> Result<(), ModelError> {
        let start = Instant::now();
        let devices = runtime::parse_devices(device.as_deref())
            .map_err(|e| ModelError::Invalid(e.to_string()))?;
        if spec.is_none() {
            (self.emit)(Event::Status("fetching the demo model (once)".into()));
        }
        let ckpt =
            runtime::open_model(spec.as_deref()).map_err(|e| ModelError::Invalid(e.to_string()))?;
        (self.emit)(Event::Status(format!(
            "loading {}",
            ckpt.source().display()
        )));
        let precision = runtime::weight_precision(weights, &devices);
        let model = Model::load_on(&ckpt, &devices, dtype, precision, |done, total| {
            (self.emit)(Event::Loading { done, total })
        })?;
        let mut adapters = Vec::new();
        let mut adapter_names = Vec::new();
        for dir in &adapter_dirs {
            adapters.push(Arc::new(runtime::read_adapter(&model, dir)?));
            adapter_names.push(
                dir.file_name()
                    .map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into()),
            );
            tracing::info!("adapter {} beside the base model", dir.display());
        }
        let tokenizer = ckpt.tokenizer()?;
        let eval_tokens = tokenizer
            .encode(self.eval_text.as_str(), false)
            .map_err(|e| ModelError::Invalid(format!("tokenizer: {e}")))?
            .get_ids()
            .to_vec();
        let (eval_tokens, _) = massive::probe_tokens(&model, &eval_tokens);
        let name = ckpt
            .source()
            .file_name()
            .map(|n| n.to_string_lossy().trim_end_matches(".gguf").to_string())
            .unwrap_or_default();
        let info = ModelInfo {
            name,
            config: model.config().clone(),
            parameters: ckpt.parameter_count(),
            device: runtime::placement_name(model.placement()),
            dtype: format!("{dtype:?}").to_lowercase(),
            load_seconds: start.elapsed().as_secs_f64(),
            adapters: adapter_names,
        };
        tracing::info!("loaded {} in {:.2}s", info.name, info.load_seconds);
        self.loaded = Some(Loaded {
            model,
            prompt_format: PromptFormat::new(&ckpt, &tokenizer),
            tokenizer,
            eval_tokens,
            probe: Vec::new(),
            adapters,
            original_ppl: Default::default(),
            task_questions: Default::default(),
            original_acc: Default::default(),
            accuracy_run: None,
        });
        (self.emit)(Event::Loaded(Box::new(info)));
        Ok(())
    }

    fn loaded(&mut self) -> Result<&mut Loaded, ModelError> {
        self.loaded
            .as_mut()
            .ok_or_else(|| ModelError::Invalid("no model loaded".into()))
    }

    fn probe(&mut self, prompt: &str) -> Result<(), ModelError> {
        let l = self.loaded()?;
        let ids = l
            .tokenizer
            .encode(prompt, false)
            .map_err(|e| ModelError::Invalid(format!("tokenizer: {e}")))?
            .get_ids()
            .to_vec();
        let (probe, pos0) = massive::probe_tokens(&l.model, &ids);
        if probe.is_empty() {
            return Err(ModelError::Invalid("the probe is empty".into()));
        }
        let report = massive::scan(
            &l.model,
            &l.tokenizer,
            &probe,
            pos0,
            8,
            Thresholds::default(),
        )?;
        let opts = RunOptions {
            capture: vec![
                CaptureRequest::every_layer(HookPoint::ResidPost, Reduction::MaxAbsPerDim),
                CaptureRequest::every_layer(HookPoint::MlpPost, Reduction::Position(0)),
            ],
            logits: LogitsMode::None,
            ..Default::default()
        };
        let out = l.model.forward(std::slice::from_ref(&probe), None, &opts)?;
        let mut resid_max = Vec::new();
        let mut mlp_pos0 = Vec::new();
        for c in out.captures {
            match c.hook.point {
                HookPoint::ResidPost => resid_max.push(c.values),
                _ => mlp_pos0.push(c.values),
            }
        }
        let (attack_layer, _) = target::attack_layer(&report);
        let ranked = massive::rank_by_abs(&mlp_pos0[attack_layer], mlp_pos0[attack_layer].len());
        let row_stats = target::row_stats(
            &l.model,
            attack_layer,
            &ranked[..ranked.len().min(16)],
            &mlp_pos0[attack_layer],
        )?;
        l.probe = probe;
        (self.emit)(Event::Probed(Box::new(ProbeResult {
            report,
            resid_max,
            mlp_pos0,
            attack_layer,
            ranked,
            row_stats,
        })));
        Ok(())
    }

    fn detail(&mut self, layer: usize) -> Result<(), ModelError> {
        let l = self.loaded()?;
        if l.probe.is_empty() || layer >= l.model.config().n_layers {
            return Ok(());
        }
        let opts = RunOptions {
            capture: vec![
                CaptureRequest::at(layer, HookPoint::ResidPost, Reduction::Full),
                CaptureRequest::at(layer, HookPoint::MlpPost, Reduction::Full),
                CaptureRequest::at(layer, HookPoint::ResidPost, Reduction::MedianAbs),
            ],
            logits: LogitsMode::None,
            ..Default::default()
        };
        let out = l
            .model
            .forward(std::slice::from_ref(&l.probe), None, &opts)?;
        let find = |point: HookPoint, r: Reduction| {
            out.captures
                .iter()
                .find(|c| c.hook.point == point && c.reduction == r)
                .expect("requested capture present")
        };
        let rows = |c: &crate::model::hooks::Captured| -> Vec<Vec<f32>> {
            c.values.chunks(c.shape[2]).map(<[f32]>::to_vec).collect()
        };
        (self.emit)(Event::Detail(Box::new(LayerDetail {
            layer,
            resid: rows(find(HookPoint::ResidPost, Reduction::Full)),
            mlp: rows(find(HookPoint::MlpPost, Reduction::Full)),
            median: find(HookPoint::ResidPost, Reduction::MedianAbs).values[0],
        })));
        Ok(())
    }

    fn states(
        &mut self,
        attack: Option<Attack>,
        models: PanelModels,
        layer: usize,
    ) -> Result<(), ModelError> {
        let epoch = self.epoch.load(Ordering::SeqCst);
        let l = self.loaded()?;
        if l.probe.is_empty() || layer >= l.model.config().n_layers {
            return Ok(());
        }
        let rows: Vec<Interventions> = sides(models, attack.is_some())
            .iter()
            .map(|&s| l.side(s, attack.as_ref()))
            .collect();
        let mut states = crate::analysis::states::probe_states(&l.model, &l.probe, &rows, layer)?;
        let right = states.pop().expect("two rows");
        let left = states.pop().expect("two rows");
        (self.emit)(Event::States {
            epoch,
            sides: Box::new([left, right]),
        });
        Ok(())
    }

    fn generate(
        &mut self,
        prompt: &str,
        chat_mode: bool,
        attack: Option<Attack>,
        max_tokens: usize,
        models: PanelModels,
    ) -> Result<(), ModelError> {
        let epoch = self.epoch.load(Ordering::SeqCst);
        let cancel = self.token();
        let l = self
            .loaded
            .as_ref()
            .ok_or_else(|| ModelError::Invalid("no model loaded".into()))?;
        let ids = l
            .prompt_format
            .ids(&l.tokenizer, prompt, chat_mode)
            .map_err(ModelError::Invalid)?;
        if ids.is_empty() {
            return Err(ModelError::Invalid("the prompt is empty".into()));
        }
        let rows: Vec<Interventions> = sides(models, attack.is_some())
            .iter()
            .map(|&s| l.side(s, attack.as_ref()))
            .collect();
        let params = GenerateParams {
            max_tokens,
            cancel: Some(cancel),
            ..Default::default()
        };
        let emit = &self.emit;
        let out = generate(
            &l.model,
            &l.tokenizer,
            &ids,
            &rows,
            &params,
            |row, _, piece| {
                emit(Event::Token {
                    epoch,
                    row,
                    text: piece.to_string(),
                });
                ControlFlow::Continue(())
            },
        )?;
        (self.emit)(Event::GenerationDone {
            epoch,
            stop: [out[0].stop, out[1].stop],
        });
        Ok(())
    }

    fn evaluate(&mut self, attack: Option<Attack>, models: PanelModels) -> Result<(), ModelError> {
        let epoch = self.epoch.load(Ordering::SeqCst);
        let cancel = self.token();
        let l = self
            .loaded
            .as_mut()
            .ok_or_else(|| ModelError::Invalid("no model loaded".into()))?;
        if l.eval_tokens.len() < 2 {
            return Ok(());
        }
        let window = Window::default_for(&l.model);
        let pair = sides(models, attack.is_some());
        // Each distinct side once; an unattacked model's value is kept.
        let mut todo: Vec<Side> = Vec::new();
        for s in pair {
            let known = !s.attacked && l.original_ppl.contains_key(&s.model);
            if !known && !todo.contains(&s) {
                todo.push(s);
            }
        }
        let rows: Vec<Interventions> = todo.iter().map(|&s| l.side(s, attack.as_ref())).collect();
        let results = if rows.is_empty() {
            Vec::new()
        } else {
            perplexity_cancellable(&l.model, &l.eval_tokens, &rows, window, Some(cancel))?
        };
        let mut got: Vec<(Side, f64)> = todo
            .into_iter()
            .zip(results.iter().map(|p| p.perplexity))
            .collect();
        for &(s, p) in &got {
            if !s.attacked {
                l.original_ppl.insert(s.model, p);
            }
        }
        for s in pair {
            if !s.attacked {
                got.push((s, l.original_ppl[&s.model]));
            }
        }
        let value = |side: Side| {
            got.iter()
                .find(|(s, _)| *s == side)
                .map_or(f64::NAN, |&(_, p)| p)
        };
        (self.emit)(Event::Perplexity {
            epoch,
            original: value(pair[0]),
            attacked: value(pair[1]),
        });
        Ok(())
    }
}
