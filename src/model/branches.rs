//! Rows that hold a tree of sequences: a shared prefix followed by several
//! branches, each attending to the prefix and to itself only, with the
//! positions it would have alone. One row then scores every choice of a
//! multiple-choice question in one pass, the context run once, with no
//! key/value cache to copy per choice; each token sees exactly the keys it
//! would see in its own sequence, so the result is that of running every
//! branch on its own.

use candle_core::{DType, Device, Tensor};

use super::rope::Rope;
use super::{ModelError, Result};

/// Per token (row-major over the batch, `rows * tokens` entries): its
/// RoPE position and its segment (0: the shared prefix, seen by every
/// later token of the row; any other value: a branch, seen only by later
/// tokens of the same branch). Right padding is one more branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Branches {
    pub positions: Vec<u32>,
    pub segments: Vec<u32>,
}

/// The rotary tables of a branched batch, gathered once per forward:
/// (scaled cos, scaled sin, cos, sin), each (rows, tokens, head_dim / 2),
/// for the global RoPE and, where the family has one, the local one.
pub(super) struct BranchTables {
    pub global: [Tensor; 4],
    pub local: Option<[Tensor; 4]>,
}

impl Branches {
    /// Checks the lengths and positions against a batch of `b` rows of `t`
    /// tokens and a model of `max_positions`.
    pub(super) fn check(&self, b: usize, t: usize, max_positions: usize) -> Result<()> {
        if self.positions.len() != b * t || self.segments.len() != b * t {
            return Err(ModelError::Invalid(format!(
                "branches: {} positions and {} segments for {b} rows of {t} tokens",
                self.positions.len(),
                self.segments.len()
            )));
        }
        if let Some(p) = self
            .positions
            .iter()
            .find(|&&p| p as usize >= max_positions)
        {
            return Err(ModelError::Invalid(format!(
                "branches: position {p} exceeds the model's {max_positions}"
            )));
        }
        Ok(())
    }

    /// The additive mask (rows, 1, 1, tokens, tokens): query i sees key
    /// j <= i of its row when j is in the prefix or in i's own branch, and
    /// with a sliding window `w` only when pos(i) - pos(j) < w (as
    /// transformers' sliding-window mask, in the branch's own positions).
    /// Every query sees itself, so no softmax row is empty.
    pub(super) fn mask(
        &self,
        b: usize,
        t: usize,
        window: Option<usize>,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let index = Tensor::arange(0u32, t as u32, device)?;
        let later = index
            .reshape((1, t))?
            .broadcast_gt(&index.reshape((t, 1))?)?; // (t, t): key after query
        let seg = Tensor::from_vec(self.segments.clone(), (b, t), device)?;
        let (seg_q, seg_k) = (seg.reshape((b, t, 1))?, seg.reshape((b, 1, t))?);
        let other_branch = seg_k
            .ne(0u32)?
            .broadcast_mul(&seg_k.broadcast_ne(&seg_q)?)?; // (b, t, t)
        let mut hidden = other_branch.broadcast_maximum(&later)?;
        if let Some(w) = window {
            let at = |add: i64| -> Result<Tensor> {
                let v: Vec<i64> = self.positions.iter().map(|&p| p as i64 + add).collect();
                Ok(Tensor::from_vec(v, (b, t), device)?)
            };
            let reach = at(w as i64)?.reshape((b, 1, t))?; // pos(j) + w
            let far = reach.broadcast_le(&at(0)?.reshape((b, t, 1))?)?;
            hidden = hidden.maximum(&far)?;
        }
        let hidden = hidden.reshape((b, 1, 1, t, t))?;
        let shape = hidden.shape().clone();
        let blocked = Tensor::full(f32::NEG_INFINITY, &shape, device)?.to_dtype(dtype)?;
        let open = Tensor::zeros(&shape, dtype, device)?;
        Ok(hidden.where_cond(&blocked, &open)?)
    }

    /// The rotary rows of every token's position, from `rope` (and `local`).
    pub(super) fn tables(
        &self,
        b: usize,
        t: usize,
        rope: &Rope,
        local: Option<&Rope>,
        device: &Device,
    ) -> Result<BranchTables> {
        let pos = Tensor::from_vec(self.positions.clone(), b * t, device)?;
        let gather = |r: &Rope| -> Result<[Tensor; 4]> {
            let [a, b_, c, d] = r.tables_at(&pos)?;
            let shape = |x: Tensor| -> Result<Tensor> {
                let half = x.dim(1)?;
                Ok(x.reshape((b, t, half))?)
            };
            Ok([shape(a)?, shape(b_)?, shape(c)?, shape(d)?])
        };
        Ok(BranchTables {
            global: gather(rope)?,
            local: local.map(gather).transpose()?,
        })
    }
}

impl BranchTables {
    /// The same tables on `device` (the next group of a split model).
    pub(super) fn to_device(&self, device: &Device) -> Result<Self> {
        let move4 = |t: &[Tensor; 4]| -> Result<[Tensor; 4]> {
            Ok([
                t[0].to_device(device)?,
                t[1].to_device(device)?,
                t[2].to_device(device)?,
                t[3].to_device(device)?,
            ])
        };
        Ok(Self {
            global: move4(&self.global)?,
            local: self.local.as_ref().map(move4).transpose()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A prefix of 2, branches of 2 and 1 tokens, one padding token: each
    /// token sees the prefix and its own branch's earlier tokens.
    #[test]
    fn branch_tokens_see_the_prefix_and_their_own_branch() {
        let br = Branches {
            positions: vec![0, 1, 2, 3, 2, 0],
            segments: vec![0, 0, 1, 1, 2, u32::MAX],
        };
        let m = br
            .mask(1, 6, None, DType::F32, &Device::Cpu)
            .unwrap()
            .reshape((6, 6))
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let seen: Vec<Vec<usize>> = m
            .iter()
            .map(|row| (0..6).filter(|&j| row[j] == 0.0).collect())
            .collect();
        assert_eq!(
            seen,
            vec![
                vec![0],
                vec![0, 1],
                vec![0, 1, 2],
                vec![0, 1, 2, 3],
                vec![0, 1, 4],
                vec![0, 1, 5],
            ]
        );
        // A window of 2 positions: position 3 no longer sees position 1.
        let m = br
            .mask(1, 6, Some(2), DType::F32, &Device::Cpu)
            .unwrap()
            .reshape((6, 6))
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let seen: Vec<usize> = (0..6).filter(|&j| m[3][j] == 0.0).collect();
        assert_eq!(seen, vec![2, 3]);
    }
}
