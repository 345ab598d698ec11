//! How one forward's captures are reduced: at once on the CPU, stacked over
//! layers on a GPU.

use candle_core::Tensor;

use super::hooks::{self, Captured, HookName};
use super::Result;

/// Captures of one forward. On the CPU each state is reduced at once (in
/// place, no copy). On a GPU the states stay on the device until the end of
/// the forward and each kind of reduction then runs once over all layers
/// stacked, so a run costs one reduction (one host copy) instead of one per
/// layer: kernel launches, not arithmetic, are what a GPU waits on here.
#[derive(Default)]
pub(super) struct Captures {
    done: Vec<(usize, Captured)>,
    deferred: Vec<(usize, HookName, hooks::Reduction, Tensor)>,
    next: usize,
}

impl Captures {
    pub(super) fn add(
        &mut self,
        hook: HookName,
        reduction: hooks::Reduction,
        x: &Tensor,
    ) -> Result<()> {
        let order = self.next;
        self.next += 1;
        if x.device().is_cpu() {
            self.done.push((order, hooks::reduce(hook, reduction, x)?));
        } else {
            self.deferred.push((order, hook, reduction, x.clone()));
        }
        Ok(())
    }

    /// Reduces what was deferred, grouped by reduction, shape and device, and
    /// returns every capture in the order it was taken.
    pub(super) fn finish(mut self) -> Result<Vec<Captured>> {
        let mut deferred = std::mem::take(&mut self.deferred);
        while !deferred.is_empty() {
            let (_, _, reduction, first) = &deferred[0];
            let (reduction, dims) = (*reduction, first.dims().to_vec());
            // Each device's states are reduced there (layers split over
            // several devices).
            let device = first.device().clone();
            let (group, rest): (Vec<_>, Vec<_>) = deferred.into_iter().partition(|(_, _, r, t)| {
                *r == reduction && t.dims() == dims.as_slice() && t.device().same_device(&device)
            });
            deferred = rest;
            self.done.extend(reduce_stacked(group, reduction)?);
        }
        self.done.sort_by_key(|(order, _)| *order);
        Ok(self.done.into_iter().map(|(_, c)| c).collect())
    }
}

/// One reduction over states of equal shape (batch, tokens, dims) stacked
/// along the batch, split back per state.
fn reduce_stacked(
    group: Vec<(usize, HookName, hooks::Reduction, Tensor)>,
    reduction: hooks::Reduction,
) -> Result<Vec<(usize, Captured)>> {
    let b = group[0].3.dim(0)?;
    let tensors: Vec<&Tensor> = group.iter().map(|g| &g.3).collect();
    let stacked = Tensor::cat(&tensors, 0)?;
    let all = hooks::reduce(group[0].1, reduction, &stacked)?;
    let per_value = all.values.len() / group.len();
    let per_index = all.indices.len() / group.len();
    let mut shape = all.shape.clone();
    shape[0] = b;
    Ok(group
        .into_iter()
        .enumerate()
        .map(|(i, (order, hook, reduction, _))| {
            let captured = Captured {
                hook,
                reduction,
                shape: shape.clone(),
                values: all.values[i * per_value..(i + 1) * per_value].to_vec(),
                indices: all.indices[i * per_index..(i + 1) * per_index].to_vec(),
            };
            (order, captured)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::hooks::{HookPoint, Reduction};
    use candle_core::Device;

    #[test]
    fn stacked_reductions_equal_one_at_a_time() {
        let states: Vec<Tensor> = (0..3)
            .map(|l| {
                let v: Vec<f32> = (0..2 * 5 * 8)
                    .map(|i| ((i * 7 + l * 13) % 23) as f32 - 11.0)
                    .collect();
                Tensor::from_vec(v, (2, 5, 8), &Device::Cpu).unwrap()
            })
            .collect();
        for r in [
            Reduction::MaxAbsPerDim,
            Reduction::MedianAbs,
            Reduction::MedianAbsPerToken,
            Reduction::TopK(3),
            Reduction::Position(1),
            Reduction::Full,
        ] {
            let group: Vec<_> = states
                .iter()
                .enumerate()
                .map(|(l, t)| (10 - l, HookName::new(l, HookPoint::ResidPost), r, t.clone()))
                .collect();
            let stacked = reduce_stacked(group, r).unwrap();
            for (l, (order, c)) in stacked.iter().enumerate() {
                let single =
                    hooks::reduce(HookName::new(l, HookPoint::ResidPost), r, &states[l]).unwrap();
                assert_eq!(*order, 10 - l);
                assert_eq!(
                    (&c.shape, &c.values, &c.indices),
                    (&single.shape, &single.values, &single.indices),
                    "{r:?} layer {l}"
                );
            }
        }
    }
}
