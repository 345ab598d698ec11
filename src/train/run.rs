//! The training loop: epochs of shuffled examples, micro-batches summed
//! into one update (the loss divided by the update's counted tokens, as
//! transformers' Trainer does), MacDrop's mask drawn per update, and a
//! checkpoint (adapter + optimizer + position) every N updates, at the
//! end, and when the run is interrupted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::data::Example;
use super::loss::{summed_loss, Batch};
use super::macdrop::MacDrop;
use super::optim::{linear_lr, warmup_steps, AdamW, AdamWParams};
use super::{Result, TrainError};
use crate::checkpoint::adapter::AdapterFile;
use crate::model::intervention::Interventions;
use crate::model::lora::Lora;
use crate::model::Model;
use crate::rng::SplitMix64;

/// Where a run is, saved beside the adapter so it can resume.
pub const STATE_FILE: &str = "trainer_state.json";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";

#[derive(Debug, Clone, Serialize)]
pub struct TrainConfig {
    pub epochs: usize,
    /// Stop after this many updates (instead of the epochs' count).
    pub max_steps: Option<usize>,
    /// Examples per forward.
    pub batch: usize,
    /// Forwards per update (effective batch = batch * grad_accum).
    pub grad_accum: usize,
    pub lr: f64,
    /// Share of the updates that warm the learning rate up.
    pub warmup: f64,
    pub seed: u64,
    pub macdrop: Option<MacDrop>,
    /// Save a checkpoint every this many updates.
    pub save_every: Option<usize>,
    #[serde(skip)]
    pub out: PathBuf,
    /// Recorded in the adapter (PEFT's base_model_name_or_path).
    pub base_model: Option<String>,
    /// What the examples came from (a resumed run must use the same).
    pub data: String,
}

impl TrainConfig {
    fn check(&self, examples: usize) -> Result<()> {
        let bad = |m: String| Err(TrainError::Config(m));
        if self.batch == 0 || self.grad_accum == 0 {
            return bad("--batch and --grad-accum must be at least 1".into());
        }
        if self.epochs == 0 && self.max_steps.is_none() {
            return bad("--epochs must be at least 1 (or give --steps)".into());
        }
        if self.max_steps == Some(0) {
            return bad("--steps must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("--lr must be positive and finite, got {}", self.lr));
        }
        if !(0.0..1.0).contains(&self.warmup) {
            return bad(format!("--warmup must lie in [0, 1), got {}", self.warmup));
        }
        if let Some(m) = &self.macdrop {
            if !(0.0..=1.0).contains(&m.p0) {
                return bad(format!("--p0 must lie in [0, 1], got {}", m.p0));
            }
        }
        if examples == 0 {
            return bad("no training examples".into());
        }
        Ok(())
    }

    /// Updates per epoch (the last one takes what is left).
    pub fn updates_per_epoch(&self, examples: usize) -> usize {
        examples.div_ceil(self.batch * self.grad_accum)
    }

    /// Updates in all.
    pub fn total_updates(&self, examples: usize) -> usize {
        self.max_steps
            .unwrap_or(self.epochs * self.updates_per_epoch(examples))
    }
}

/// Where a run stands, as saved with each checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    /// Updates done.
    pub step: usize,
    pub total: usize,
    pub finished: bool,
    pub examples: usize,
    /// The settings that must match to resume (as JSON).
    pub fingerprint: serde_json::Value,
    /// Mean loss per counted token of each update.
    pub losses: Vec<f64>,
    pub tokens: usize,
}

/// What one update reports.
#[derive(Debug, Clone)]
pub struct StepReport {
    pub step: usize,
    pub total: usize,
    pub epoch: usize,
    pub loss: f64,
    pub lr: f64,
    /// MacDrop's drop probability this update.
    pub p: Option<f64>,
    /// Tokens the loss counted, this update and in all.
    pub counted: usize,
    pub tokens: usize,
    pub seconds: f64,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub state: TrainState,
    pub seconds: f64,
    /// The run stopped early (interrupted) and left a checkpoint to resume.
    pub interrupted: bool,
    pub lora: Arc<Lora>,
}

fn fingerprint(cfg: &TrainConfig, examples: usize, lora: &Lora) -> serde_json::Value {
    serde_json::json!({
        "config": cfg,
        "examples": examples,
        "rank": lora.rank,
        "alpha": lora.alpha,
        "targets": lora.targets().iter().map(|p| format!("{p:?}")).collect::<Vec<_>>(),
    })
}

/// Reads a run's saved state from its output directory.
pub fn read_state(dir: &Path) -> Result<(TrainState, std::collections::HashMap<String, Tensor>)> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|source| TrainError::Io {
        path: path.clone(),
        source,
    })?;
    let state: TrainState = serde_json::from_str(&text)
        .map_err(|e| TrainError::Data(format!("{}: {e}", path.display())))?;
    let opt_path = dir.join(OPTIMIZER_FILE);
    let moments = candle_core::safetensors::load(&opt_path, &candle_core::Device::Cpu)
        .map_err(|e| TrainError::Data(format!("{}: {e}", opt_path.display())))?;
    Ok((state, moments))
}

/// Trains `lora` on `examples`. With `resume`, continues a saved run
/// (its adapter already in `lora`); `stop` ends the run at the next
/// update with a checkpoint.
pub fn train(
    model: &Model,
    lora: Lora,
    examples: &[Example],
    cfg: &TrainConfig,
    resume: Option<(TrainState, std::collections::HashMap<String, Tensor>)>,
    stop: &AtomicBool,
    mut report: impl FnMut(&StepReport),
) -> Result<Outcome> {
    cfg.check(examples.len())?;
    let n = examples.len();
    let per_epoch = cfg.updates_per_epoch(n);
    let total = cfg.total_updates(n);
    let warmup = warmup_steps(cfg.warmup, total);
    let print = fingerprint(cfg, n, &lora);
    let lora = Arc::new(lora);
    let params = AdamWParams {
        lr: cfg.lr,
        ..AdamWParams::default()
    };
    let mut opt = AdamW::new(lora.vars(), params)?;
    let mut state = TrainState {
        step: 0,
        total,
        finished: false,
        examples: n,
        fingerprint: print.clone(),
        losses: Vec::new(),
        tokens: 0,
    };
    if let Some((saved, moments)) = resume {
        if saved.fingerprint != print {
            return Err(TrainError::Config(
                "--resume: the saved run used other settings or data; start a new --out".into(),
            ));
        }
        if saved.finished {
            return Err(TrainError::Config("--resume: that run has finished".into()));
        }
        opt.restore(&moments, saved.step)?;
        state = saved;
    }
    let pad = model.config().eos_token_ids.first().copied().unwrap_or(0);
    let d_model = model.config().d_model;
    let started = Instant::now();
    let mut interrupted = false;
    let mut order: Vec<usize> = Vec::new();
    let mut order_epoch = usize::MAX;
    while state.step < total {
        if stop.load(Ordering::Relaxed) {
            interrupted = true;
            break;
        }
        let step = state.step;
        let epoch = step / per_epoch;
        if epoch != order_epoch {
            order = (0..n).collect();
            SplitMix64::new(cfg.seed.wrapping_add(epoch as u64)).shuffle_prefix(&mut order, n);
            order_epoch = epoch;
        }
        let within = step % per_epoch;
        let eff = cfg.batch * cfg.grad_accum;
        let chosen = &order[within * eff..((within + 1) * eff).min(n)];
        let batches = Batch::by_length(examples, chosen, cfg.batch, pad);
        let counted: usize = batches.iter().map(Batch::counted).sum();
        let p = cfg
            .macdrop
            .as_ref()
            .map(|m| m.probability(step, total, epoch, cfg.epochs.max(1)));
        let drop = match (&cfg.macdrop, p) {
            (Some(m), Some(p)) => Some(m.mask(p, step, d_model, model.dtype(), model.device())?),
            _ => None,
        };
        let vars = lora.vars();
        let mut grads: Vec<Option<Tensor>> = vec![None; vars.len()];
        let mut loss_sum = 0f64;
        for batch in &batches {
            if batch.counted() == 0 {
                continue;
            }
            let loss = (summed_loss(model, &lora, drop.clone(), &Interventions::none(), batch)?
                / counted.max(1) as f64)?;
            loss_sum += loss.to_scalar::<f32>()? as f64;
            let store = loss.backward()?;
            for (slot, var) in grads.iter_mut().zip(&vars) {
                if let Some(g) = store.get(var.as_tensor()) {
                    *slot = Some(match slot.take() {
                        Some(acc) => (acc + g)?,
                        None => g.clone(),
                    });
                }
            }
        }
        if !loss_sum.is_finite() {
            return Err(TrainError::NonFinite {
                step,
                loss: loss_sum,
            });
        }
        let lr = linear_lr(cfg.lr, step, warmup, total);
        opt.step(&grads, lr)?;
        state.step += 1;
        state.tokens += counted;
        state.losses.push(loss_sum);
        report(&StepReport {
            step: state.step,
            total,
            epoch,
            loss: loss_sum,
            lr,
            p,
            counted,
            tokens: state.tokens,
            seconds: started.elapsed().as_secs_f64(),
        });
        let due = cfg
            .save_every
            .is_some_and(|k| k > 0 && state.step.is_multiple_of(k));
        if due && state.step < total {
            save(&lora, &opt, &state, cfg)?;
        }
    }
    state.finished = state.step >= total && !interrupted;
    save(&lora, &opt, &state, cfg)?;
    Ok(Outcome {
        state,
        seconds: started.elapsed().as_secs_f64(),
        interrupted,
        lora,
    })
}

/// The adapter of `lora` as a file's contents.
pub fn adapter_file(lora: &Lora, base_model: Option<String>) -> Result<AdapterFile> {
    let mut tensors = BTreeMap::new();
    for (&id, pair) in lora.pairs() {
        let host = |t: &Tensor| t.to_device(&candle_core::Device::Cpu);
        tensors.insert(id, (host(pair.a.as_tensor())?, host(pair.b.as_tensor())?));
    }
    Ok(AdapterFile {
        rank: lora.rank,
        alpha: lora.alpha,
        tensors,
        base_model,
    })
}

fn save(lora: &Lora, opt: &AdamW, state: &TrainState, cfg: &TrainConfig) -> Result<()> {
    let file = adapter_file(lora, cfg.base_model.clone())?;
    let moments: std::collections::HashMap<String, Tensor> = opt
        .state()
        .into_iter()
        .map(|(k, t)| Ok((k, t.to_device(&candle_core::Device::Cpu)?)))
        .collect::<candle_core::Result<_>>()?;
    let text = serde_json::to_string_pretty(state).expect("the state serializes");
    file.write_with(&cfg.out, |dir| {
        let opt_path = dir.join(OPTIMIZER_FILE);
        candle_core::safetensors::save(&moments, &opt_path).map_err(|e| {
            crate::checkpoint::CheckpointError::Io {
                path: opt_path.clone(),
                source: std::io::Error::other(e.to_string()),
            }
        })?;
        let path = dir.join(STATE_FILE);
        std::fs::write(&path, text + "\n")
            .map_err(|source| crate::checkpoint::CheckpointError::Io { path, source })
    })?;
    tracing::info!(
        step = state.step,
        "checkpoint written to {}",
        cfg.out.display()
    );
    Ok(())
}
