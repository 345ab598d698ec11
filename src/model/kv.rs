//! Keys and values of the tokens processed so far, per layer, in buffers
//! with room to grow: a step writes its keys in place, and a replayed decode
//! step (see [`super::graph`]) finds the buffers at the same addresses.

use candle_core::Tensor;

use super::graph::DecodeGraph;
use super::{Model, ModelError, Result};

/// The smallest buffer, in positions; buffers double when full.
const MIN_CAPACITY: usize = 512;

/// Per-layer key/value cache for incremental decoding.
pub struct Cache {
    pub(super) layers: Vec<LayerKv>,
    pub(super) len: usize,
    /// The decode step recorded for these buffers, if any.
    pub(super) graph: Option<DecodeGraph>,
    /// Recording a decode step failed once: this cache decodes eagerly.
    pub(super) graph_failed: bool,
    /// Run one-token steps the way a recorded step does even where none is
    /// recorded (the CPU), so tests can check that path against the eager one.
    #[cfg(test)]
    pub(super) force_static: bool,
}

/// One layer's keys and values: (batch, kv_heads, capacity, head_dim).
pub(super) struct LayerKv {
    pub(super) k: Tensor,
    pub(super) v: Tensor,
}

impl Cache {
    pub(super) fn new() -> Self {
        Self {
            layers: Vec::new(),
            len: 0,
            graph: None,
            graph_failed: false,
            #[cfg(test)]
            force_static: false,
        }
    }

    /// Tokens already processed.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the buffers hold (0 before the first run).
    pub(super) fn capacity(&self) -> usize {
        self.layers.first().map_or(0, |l| l.k.dims()[2])
    }

    /// Makes room for `needed` positions of `batch` rows in every layer of
    /// `model`, keeping what is cached. Growing moves the buffers, so a
    /// recorded step, which points at the old ones, is dropped.
    pub(super) fn reserve(&mut self, model: &Model, batch: usize, needed: usize) -> Result<()> {
        if let Some(first) = self.layers.first() {
            let held = first.k.dims()[0];
            if held != batch {
                return Err(ModelError::Invalid(format!(
                    "the cache holds {held} rows; this run has {batch}"
                )));
            }
            if needed <= self.capacity() {
                return Ok(());
            }
        }
        let capacity = needed.next_power_of_two().max(MIN_CAPACITY);
        let c = &model.config;
        let dims = (batch, c.n_kv_heads, capacity, c.head_dim);
        // Each layer's cache on its layer's device.
        let grow = |old: Option<&Tensor>, i: usize| -> Result<Tensor> {
            let new = Tensor::zeros(dims, model.dtype, model.placement.of_layer(i))?;
            if let Some(old) = old.filter(|_| self.len > 0) {
                new.slice_set(&old.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
            }
            Ok(new)
        };
        let layers = (0..c.n_layers)
            .map(|i| {
                let old = self.layers.get(i);
                Ok(LayerKv {
                    k: grow(old.map(|l| &l.k), i)?,
                    v: grow(old.map(|l| &l.v), i)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.layers = layers;
        self.graph = None;
        Ok(())
    }
}

impl LayerKv {
    /// Writes k, v (batch, kv_heads, t, head_dim) at positions start.. and
    /// returns the keys and values of positions 0..start + t (views).
    pub(super) fn append(
        &mut self,
        k: &Tensor,
        v: &Tensor,
        start: usize,
    ) -> Result<(Tensor, Tensor)> {
        let end = start + k.dim(2)?;
        self.k.slice_set(k, 2, start)?;
        self.v.slice_set(v, 2, start)?;
        Ok((self.k.narrow(2, 0, end)?, self.v.narrow(2, 0, end)?))
    }
}
