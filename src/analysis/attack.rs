//! The House-of-Cards attacks on the massive layer only (down_proj and other
//! layers untouched), as d_ff masks (equal to zeroing rows of W_up and
//! W_gate, see the model layer's tests):
//! - zero: the top-k massive rows set to 0 (top-k zeroing);
//! - keep: every other row set to 0 (top-k retaining; "keep only"; k = 0
//!   zeroes both matrices);
//! - random-zero / random-keep: the same with k random dims (seeded), drawn
//!   from the dims outside the top-k, as controls;
//! - super: the one super weight (Yu et al.) of down_proj set to 0.
//!
//! Any attack may carry single-weight edits besides (`--edit`).

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::checkpoint::{Proj, WeightId};
use crate::model::intervention::{Interventions, MaskMode, WeightEdit};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttackMode {
    Original,
    Zero,
    Keep,
    RandomZero,
    RandomKeep,
    /// The super weight, down_proj[massive hidden dim, top massive d_ff dim], zeroed.
    Super,
}

impl AttackMode {
    pub const ALL: [AttackMode; 6] = [
        Self::Original,
        Self::Zero,
        Self::Keep,
        Self::RandomZero,
        Self::RandomKeep,
        Self::Super,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Original => "original",
            Self::Zero => "zero",
            Self::Keep => "keep",
            Self::RandomZero => "random-zero",
            Self::RandomKeep => "random-keep",
            Self::Super => "super",
        }
    }

    fn is_random(self) -> bool {
        matches!(self, Self::RandomZero | Self::RandomKeep)
    }
}

impl fmt::Display for AttackMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for AttackMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                format!(
                    "mode {s:?}: expected original, zero, keep, random-zero, random-keep or super"
                )
            })
    }
}

/// One attack, resolved to concrete dims.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attack {
    pub mode: AttackMode,
    pub layer: usize,
    pub k: usize,
    /// The d_ff dims the mask names (zeroed for zero modes, kept for keep
    /// modes; the super weight's column for super).
    pub dims: Vec<usize>,
    /// Single weights set besides (the super weight; `--edit`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub edits: Vec<WeightEdit>,
}

impl Attack {
    /// `ranked`: the massive dims, most massive first. Random modes draw k
    /// dims (seeded) among the d_ff dims outside the first k of `ranked`.
    pub fn new(
        mode: AttackMode,
        layer: usize,
        ranked: &[usize],
        k: usize,
        d_ff: usize,
        seed: u64,
    ) -> Self {
        let k = k.min(d_ff);
        let dims = match mode {
            AttackMode::Original | AttackMode::Super => Vec::new(),
            m if m.is_random() => {
                let top: Vec<usize> = ranked.iter().take(k).copied().collect();
                let pool: Vec<usize> = (0..d_ff).filter(|d| !top.contains(d)).collect();
                sample(&pool, k, seed)
            }
            _ => ranked.iter().take(k).copied().collect(),
        };
        Self {
            mode,
            layer,
            k,
            dims,
            edits: Vec::new(),
        }
    }

    /// Zeroing the super weight down_proj[row, col] of `layer`.
    pub fn super_weight(layer: usize, row: usize, col: usize) -> Self {
        Self {
            mode: AttackMode::Super,
            layer,
            k: 1,
            dims: vec![col],
            edits: vec![WeightEdit {
                tensor: WeightId::layer(layer, Proj::Down),
                row,
                col,
                value: 0.0,
            }],
        }
    }

    /// The attack with `edits` applied besides.
    pub fn with_edits(mut self, edits: &[WeightEdit]) -> Self {
        self.edits.extend_from_slice(edits);
        self
    }

    pub fn interventions(&self) -> Interventions {
        let mut iv = self.masks();
        iv.weight_edits.extend(self.edits.iter().cloned());
        iv
    }

    fn masks(&self) -> Interventions {
        match self.mode {
            AttackMode::Original | AttackMode::Super => Interventions::none(),
            AttackMode::Zero | AttackMode::RandomZero => {
                Interventions::ffn_mask(self.layer, MaskMode::Zero, self.dims.clone())
            }
            AttackMode::Keep | AttackMode::RandomKeep => {
                Interventions::ffn_mask(self.layer, MaskMode::Keep, self.dims.clone())
            }
        }
    }
}

/// `k` distinct elements of `pool`, chosen by a seeded Fisher-Yates shuffle (splitmix64).
fn sample(pool: &[usize], k: usize, seed: u64) -> Vec<usize> {
    let mut v = pool.to_vec();
    let k = k.min(v.len());
    crate::rng::SplitMix64::new(seed).shuffle_prefix(&mut v, k);
    v.truncate(k);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_controls_are_seeded_and_avoid_the_massive_dims() {
        let ranked = [7, 3, 9];
        let a = Attack::new(AttackMode::RandomZero, 2, &ranked, 2, 16, 42);
        assert_eq!(
            a,
            Attack::new(AttackMode::RandomZero, 2, &ranked, 2, 16, 42)
        );
        assert_ne!(
            a.dims,
            Attack::new(AttackMode::RandomZero, 2, &ranked, 2, 16, 43).dims
        );
        assert_eq!(a.dims.len(), 2);
        assert!(a.dims.iter().all(|d| *d != 7 && *d != 3 && *d < 16));
        assert_eq!(
            Attack::new(AttackMode::Zero, 2, &ranked, 2, 16, 0).dims,
            vec![7, 3]
        );
        assert_eq!(
            Attack::new(AttackMode::Keep, 2, &ranked, 0, 16, 0).dims,
            Vec::<usize>::new()
        );
        assert!("keep".parse::<AttackMode>().is_ok() && "nope".parse::<AttackMode>().is_err());
    }
}
