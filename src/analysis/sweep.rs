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

/// Tokens one batch of attacks may hold: on a GPU enough for the paper's
/// 26 runs of a short text in one forward (larger matrices, and the layers
/// before the attacked one run once for all of them); on the CPU, where a
/// batch gains nothing but the shared layers, a few 2048-token windows.
const BATCH_TOKENS_GPU: usize = 16_384;
const BATCH_TOKENS_CPU: usize = 8_192;

/// Rows of each batch for `attacks` attacks on windows of `window_tokens`:
/// as few batches as the budget allows, of even size.
fn batch_rows(attacks: usize, window_tokens: usize, budget: usize) -> usize {
    let most = (budget / window_tokens.max(1)).clamp(1, attacks.max(1));
    let batches = attacks.div_ceil(most).max(1);
    attacks.div_ceil(batches).max(1)
}

/// Perplexity of `tokens` under each attack; `progress(done, total)` after
/// each batch.
pub fn run_attacks(
    model: &Model,
    tokens: &[u32],
    attacks: &[Attack],
    window: Window,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<Perplexity>> {
    let budget = if model.device().is_cpu() {
        BATCH_TOKENS_CPU
    } else {
        BATCH_TOKENS_GPU
    };
    let per_batch = batch_rows(attacks.len(), tokens.len().min(window.size), budget);
    let mut out = Vec::with_capacity(attacks.len());
    for chunk in attacks.chunks(per_batch) {
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

#[cfg(test)]
mod tests {
    use super::batch_rows;

    #[test]
    fn batches_are_few_and_even() {
        // The paper's 26 runs of a 413-token text: one batch on a GPU.
        assert_eq!(batch_rows(26, 413, 16_384), 26);
        // On the CPU's budget, 19 fit: two batches of 13.
        assert_eq!(batch_rows(26, 413, 8_192), 13);
        // 2048-token windows: 8 fit, so four batches of 7 (not 8+8+8+2).
        assert_eq!(batch_rows(26, 2048, 16_384), 7);
        // A window over the budget still runs, a row at a time.
        assert_eq!(batch_rows(26, 40_000, 16_384), 1);
        assert_eq!(batch_rows(1, 10, 16_384), 1);
    }
}
