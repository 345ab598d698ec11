//! The paper's table: every attack mode for k in [`SWEEP_KS`] on one target,
//! perplexities run a few attacks to a batch.

use serde::Serialize;

use super::attack::{Attack, AttackMode};
use super::perplexity::{perplexity, Perplexity, Window};
use super::target::Target;
use crate::model::intervention::Interventions;
use crate::model::{Model, Result};

/// The k of each sweep row (k = 0 only for keep: both matrices zeroed).
pub const SWEEP_KS: [usize; 7] = [0, 1, 2, 4, 8, 16, 32];

/// The attack modes of a sweep's columns, in order.
pub const SWEEP_MODES: [AttackMode; 4] = [
    AttackMode::Zero,
    AttackMode::Keep,
    AttackMode::RandomZero,
    AttackMode::RandomKeep,
];

/// One sweep row.
#[derive(Debug, Clone, Serialize)]
pub struct SweepRun {
    pub mode: AttackMode,
    pub k: usize,
    pub dims: Vec<usize>,
    pub perplexity: f64,
}

/// Every attack of the sweep, the original first.
pub fn sweep_attacks(target: &Target, d_ff: usize, seed: u64) -> Vec<Attack> {
    let attack = |mode, k| Attack::new(mode, target.layer, &target.ranked, k, d_ff, seed);
    let mut out = vec![attack(AttackMode::Original, 0)];
    for mode in SWEEP_MODES {
        for k in SWEEP_KS {
            if k > 0 || mode == AttackMode::Keep {
                out.push(attack(mode, k));
            }
        }
    }
    out
}

/// Attacks to a forward: enough to fill the batch, few enough for memory.
const BATCH: usize = 4;

/// Perplexity of `tokens` under each attack; `progress(done, total)` after
/// each batch.
pub fn run_attacks(
    model: &Model,
    tokens: &[u32],
    attacks: &[Attack],
    window: Window,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<Perplexity>> {
    let mut out = Vec::with_capacity(attacks.len());
    for chunk in attacks.chunks(BATCH) {
        let rows: Vec<Interventions> = chunk.iter().map(Attack::interventions).collect();
        out.extend(perplexity(model, tokens, &rows, window)?);
        progress(out.len(), attacks.len());
    }
    Ok(out)
}

/// The sweep's rows: each attack with its perplexity.
pub fn sweep_runs(attacks: &[Attack], ppl: &[Perplexity]) -> Vec<SweepRun> {
    attacks
        .iter()
        .zip(ppl)
        .map(|(a, p)| SweepRun {
            mode: a.mode,
            k: a.k,
            dims: a.dims.clone(),
            perplexity: p.perplexity,
        })
        .collect()
}
