//! MacDrop (the House of Cards paper, Algorithm 1): during fine-tuning,
//! each step drops elements of the k massive rows of W_up and W_gate at
//! the massive layer with probability p, one mask for both, no rescaling;
//! p decays over training.

use candle_core::{DType, Device};

use super::Result;
use crate::model::lora::RowDrop;
use crate::rng::SplitMix64;

/// How p falls from p0 over training (the paper's ablation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// p0 (1 - t/T), t the update and T the updates in all (the paper's).
    Step,
    /// p0 (1 - e/E), e the epoch (0-based) and E the epochs.
    Epoch,
    /// p0 exp(-5 t/T): falls faster, to under 1% of p0 at the end.
    Exp,
    /// p0 throughout.
    Constant,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct MacDrop {
    pub layer: usize,
    /// The massive rows, most massive first (d_ff dims).
    pub rows: Vec<usize>,
    pub p0: f64,
    pub schedule: Schedule,
    pub seed: u64,
}

impl MacDrop {
    /// p at update `step` of `total`, in epoch `epoch` of `epochs`.
    pub fn probability(&self, step: usize, total: usize, epoch: usize, epochs: usize) -> f64 {
        let frac = |a: usize, b: usize| a as f64 / b.max(1) as f64;
        let p = match self.schedule {
            Schedule::Step => self.p0 * (1.0 - frac(step, total)),
            Schedule::Epoch => self.p0 * (1.0 - frac(epoch, epochs)),
            Schedule::Exp => self.p0 * (-5.0 * frac(step, total)).exp(),
            Schedule::Constant => self.p0,
        };
        p.clamp(0.0, 1.0)
    }

    /// The mask of update `step`: drawn from the seed and the step alone,
    /// so a resumed run draws the masks the uninterrupted one would have.
    pub fn mask(
        &self,
        p: f64,
        step: usize,
        d_model: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<RowDrop> {
        let mut rng =
            SplitMix64::new(self.seed ^ (step as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
        Ok(RowDrop::draw(
            self.layer, &self.rows, d_model, p, &mut rng, dtype, device,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn macdrop(schedule: Schedule) -> MacDrop {
        MacDrop {
            layer: 1,
            rows: vec![3, 7],
            p0: 0.8,
            schedule,
            seed: 5,
        }
    }

    #[test]
    fn the_schedules_fall_from_p0_as_defined() {
        let m = macdrop(Schedule::Step);
        assert_eq!(m.probability(0, 10, 0, 1), 0.8);
        assert!((m.probability(5, 10, 0, 1) - 0.4).abs() < 1e-12);
        assert_eq!(m.probability(10, 10, 0, 1), 0.0);
        let e = macdrop(Schedule::Epoch);
        assert_eq!(e.probability(7, 10, 0, 3), 0.8);
        assert!((e.probability(7, 10, 2, 3) - 0.8 / 3.0).abs() < 1e-12);
        let x = macdrop(Schedule::Exp);
        assert!((x.probability(10, 10, 0, 1) - 0.8 * (-5f64).exp()).abs() < 1e-12);
        assert_eq!(macdrop(Schedule::Constant).probability(9, 10, 2, 3), 0.8);
    }

    #[test]
    fn masks_drop_about_p_of_the_rows_and_repeat_per_step() {
        let m = macdrop(Schedule::Step);
        let a = m.mask(0.8, 3, 1000, DType::F32, &Device::Cpu).unwrap();
        let b = m.mask(0.8, 3, 1000, DType::F32, &Device::Cpu).unwrap();
        let c = m.mask(0.8, 4, 1000, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(a.keep.dims(), [2, 1000]);
        let frac = a.dropped as f64 / 2000.0;
        assert!((frac - 0.8).abs() < 0.03, "{frac}");
        let v = |r: &RowDrop| r.keep.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v(&a), v(&b));
        assert_ne!(v(&a), v(&c));
        assert!(v(&a).iter().all(|&k| k == 0.0 || k == 1.0));
        let none = m.mask(0.0, 3, 1000, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(none.dropped, 0);
    }
}
