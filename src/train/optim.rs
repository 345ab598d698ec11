//! AdamW as torch computes it (decoupled weight decay, bias-corrected
//! moments, eps outside the square root), its state savable for resuming;
//! and transformers' linear schedule with warm-up.

use std::collections::HashMap;

use candle_core::{Tensor, Var};

use super::Result;

#[derive(Debug, Clone, Copy)]
pub struct AdamWParams {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWParams {
    /// transformers' Trainer defaults (no weight decay).
    fn default() -> Self {
        Self {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

pub struct AdamW {
    pub params: AdamWParams,
    vars: Vec<Var>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Steps taken.
    pub step: usize,
}

impl AdamW {
    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    pub fn new(vars: Vec<Var>, params: AdamWParams) -> Result<Self> {
        let zeros = |v: &Var| v.as_tensor().zeros_like();
        let m = vars.iter().map(zeros).collect::<candle_core::Result<_>>()?;
        let v = vars.iter().map(zeros).collect::<candle_core::Result<_>>()?;
        Ok(Self {
            params,
            vars,
            m,
            v,
            step: 0,
        })
    }

    /// One update with `lr` from `grads`, one per variable in order (a
    /// variable without a gradient keeps its value and moments).
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64) -> Result<()> {
        self.step += 1;
        let p = self.params;
        let t = self.step as i32;
        let (c1, c2) = (1.0 - p.beta1.powi(t), 1.0 - p.beta2.powi(t));
        for i in 0..self.vars.len() {
            let var = &self.vars[i];
            let Some(g) = grads.get(i).and_then(Option::as_ref) else {
                continue;
            };
            let m = ((&self.m[i] * p.beta1)? + (g * (1.0 - p.beta1))?)?;
            let v = ((&self.v[i] * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
            let theta = (var.as_tensor() * (1.0 - lr * p.weight_decay))?;
            let denom = ((&v / c2)?.sqrt()? + p.eps)?;
            let theta = (theta - ((&m / denom)? * (lr / c1))?)?;
            var.set(&theta)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// The moments, named for a safetensors file.
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (i, (m, v)) in self.m.iter().zip(&self.v).enumerate() {
            out.insert(format!("m.{i}"), m.clone());
            out.insert(format!("v.{i}"), v.clone());
        }
        out
    }

    /// Restores moments saved by [`Self::state`] (same variables, same order).
    pub fn restore(&mut self, state: &HashMap<String, Tensor>, step: usize) -> Result<()> {
        for i in 0..self.vars.len() {
            let get = |k: String| -> Result<Tensor> {
                let t = state.get(&k).ok_or_else(|| {
                    super::TrainError::Data(format!("the optimizer state has no {k}"))
                })?;
                if t.dims() != self.vars[i].dims() {
                    return Err(super::TrainError::Data(format!(
                        "the optimizer state's {k} is {:?}, its variable {:?}",
                        t.dims(),
                        self.vars[i].dims()
                    )));
                }
                Ok(t.to_device(self.vars[i].device())?)
            };
            self.m[i] = get(format!("m.{i}"))?;
            self.v[i] = get(format!("v.{i}"))?;
        }
        self.step = step;
        Ok(())
    }
}

/// transformers' `get_linear_schedule_with_warmup`: the learning rate of
/// update `step` (0-based) rises from 0 over `warmup` updates, then falls
/// linearly to 0 at `total`.
pub fn linear_lr(peak: f64, step: usize, warmup: usize, total: usize) -> f64 {
    let factor = if step < warmup {
        step as f64 / warmup.max(1) as f64
    } else {
        (total.saturating_sub(step) as f64 / total.saturating_sub(warmup).max(1) as f64).max(0.0)
    };
    peak * factor
}

/// Warm-up updates for a ratio, as transformers rounds it (up).
pub fn warmup_steps(ratio: f64, total: usize) -> usize {
    (ratio * total as f64).ceil() as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn the_schedule_warms_up_then_decays_to_zero() {
        assert_eq!(linear_lr(1.0, 0, 2, 10), 0.0);
        assert_eq!(linear_lr(1.0, 1, 2, 10), 0.5);
        assert_eq!(linear_lr(1.0, 2, 2, 10), 1.0);
        assert_eq!(linear_lr(1.0, 6, 2, 10), 0.5);
        assert_eq!(linear_lr(1.0, 10, 2, 10), 0.0);
        assert_eq!(linear_lr(2.0, 0, 0, 4), 2.0);
        assert_eq!(warmup_steps(0.05, 30), 2);
        assert_eq!(warmup_steps(0.0, 30), 0);
    }

    /// One step by hand: m = 0.1 g, v = 0.001 g^2, update lr * g / (|g| + eps').
    #[test]
    fn a_first_step_moves_each_value_by_the_learning_rate() {
        let x = Var::from_vec(vec![1.0f32, -2.0], 2, &Device::Cpu).unwrap();
        let mut opt = AdamW::new(vec![x.clone()], AdamWParams::default()).unwrap();
        let loss = (x.as_tensor().sqr().unwrap().sum_all().unwrap() * 0.5).unwrap();
        let grads = loss.backward().unwrap();
        opt.step(&[grads.get(x.as_tensor()).cloned()], 0.1).unwrap();
        let got = x.as_tensor().to_vec1::<f32>().unwrap();
        assert!(
            (got[0] - 0.9).abs() < 1e-6 && (got[1] + 1.9).abs() < 1e-6,
            "{got:?}"
        );
        let state = opt.state();
        let mut again = AdamW::new(vec![x.clone()], AdamWParams::default()).unwrap();
        again.restore(&state, opt.step).unwrap();
        assert_eq!(again.step, 1);
        assert_eq!(
            again.state()["m.0"].to_vec1::<f32>().unwrap(),
            state["m.0"].to_vec1::<f32>().unwrap()
        );
    }
}
