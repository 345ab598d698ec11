//! A weight matrix as held on its device: dense, or as the GGUF file's
//! quantized blocks (see [`super::WeightPrecision::Stored`]). A product
//! with blocks reads them as they are where a kernel can (a decode step's
//! GEMV on a GPU) and otherwise dequantizes the matrix for that product
//! only, so the device holds the file's bytes, not a dense copy four to
//! eight times their size.

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};

use super::Result;

/// A matrix (rows, cols).
#[derive(Clone, Debug)]
pub(super) enum Matrix {
    /// In the compute dtype, or a float dtype that widens to it exactly.
    Dense(Tensor),
    Blocks(Blocks),
}

/// GGUF quantized rows: `bytes` (rows, row bytes) u8, each row its
/// cols / block-size blocks as the file stores them. Dequantized, each
/// value is exactly what candle's (and llama.cpp's) CPU dequantization
/// gives, in the same order of operations.
#[derive(Clone, Debug)]
pub(super) struct Blocks {
    pub(super) bytes: Tensor,
    pub(super) format: GgmlDType,
    pub(super) cols: usize,
}

/// The block formats kept as blocks; files in others are converted at load.
pub(super) fn keeps_blocks(format: GgmlDType) -> bool {
    matches!(
        format,
        GgmlDType::Q4_0
            | GgmlDType::Q4_1
            | GgmlDType::Q5_0
            | GgmlDType::Q5_1
            | GgmlDType::Q8_0
            | GgmlDType::Q4K
            | GgmlDType::Q5K
            | GgmlDType::Q6K
    )
}

impl Matrix {
    pub(super) fn rows(&self) -> Result<usize> {
        Ok(match self {
            Self::Dense(t) => t.dim(0)?,
            Self::Blocks(b) => b.bytes.dim(0)?,
        })
    }

    pub(super) fn cols(&self) -> Result<usize> {
        Ok(match self {
            Self::Dense(t) => t.dim(1)?,
            Self::Blocks(b) => b.cols,
        })
    }

    pub(super) fn device(&self) -> &Device {
        match self {
            Self::Dense(t) => t.device(),
            Self::Blocks(b) => b.bytes.device(),
        }
    }

    /// The dense tensor, when held dense.
    pub(super) fn as_dense(&self) -> Option<&Tensor> {
        match self {
            Self::Dense(t) => Some(t),
            Self::Blocks(_) => None,
        }
    }

    /// Bytes held on the device.
    pub(super) fn bytes(&self) -> usize {
        let t = match self {
            Self::Dense(t) => t,
            Self::Blocks(b) => &b.bytes,
        };
        t.elem_count() * t.dtype().size_in_bytes()
    }

    /// Rows `start..start + n` as a view (a block row is whole blocks).
    pub(super) fn narrow_rows(&self, start: usize, n: usize) -> Result<Self> {
        Ok(match self {
            Self::Dense(t) => Self::Dense(t.narrow(0, start, n)?),
            Self::Blocks(b) => Self::Blocks(Blocks {
                bytes: b.bytes.narrow(0, start, n)?,
                ..b.clone()
            }),
        })
    }

    /// The rows `index` (u32, on the matrix's device) lists, in its order.
    pub(super) fn select_rows(&self, index: &Tensor) -> Result<Self> {
        Ok(match self {
            Self::Dense(t) => Self::Dense(t.index_select(index, 0)?),
            Self::Blocks(b) => Self::Blocks(Blocks {
                bytes: b.bytes.index_select(index, 0)?,
                ..b.clone()
            }),
        })
    }

    pub(super) fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(match self {
            Self::Dense(t) => Self::Dense(t.to_device(device)?),
            Self::Blocks(b) => Self::Blocks(Blocks {
                bytes: b.bytes.to_device(device)?,
                ..b.clone()
            }),
        })
    }

    /// The matrix dense in `dtype`: a view when already so, else a copy
    /// for the caller's product (blocks dequantized on their device).
    pub(super) fn dense(&self, dtype: DType) -> Result<Tensor> {
        match self {
            Self::Dense(t) if t.dtype() == dtype => Ok(t.clone()),
            Self::Dense(t) => Ok(t.to_dtype(dtype)?),
            Self::Blocks(b) => Ok(b.dequantize()?.to_dtype(dtype)?),
        }
    }

    /// The stack of `parts` by rows, each part then a view of it: blocks
    /// of one format stay blocks; any other mix is dense in the widest
    /// dtype among the dense parts (`compute` when none is dense).
    pub(super) fn stack(parts: &[&Matrix], compute: DType) -> Result<Self> {
        let blocks: Option<Vec<&Blocks>> = parts
            .iter()
            .map(|m| match m {
                Self::Blocks(b) => Some(b),
                Self::Dense(_) => None,
            })
            .collect();
        if let Some(blocks) = blocks {
            let first = blocks.first().copied();
            if let Some(first) = first.filter(|f| {
                blocks
                    .iter()
                    .all(|b| b.format == f.format && b.cols == f.cols)
            }) {
                let bytes: Vec<&Tensor> = blocks.iter().map(|b| &b.bytes).collect();
                return Ok(Self::Blocks(Blocks {
                    bytes: Tensor::cat(&bytes, 0)?,
                    format: first.format,
                    cols: first.cols,
                }));
            }
        }
        let widest = parts
            .iter()
            .filter_map(|m| m.as_dense().map(Tensor::dtype))
            .max_by_key(|d| d.size_in_bytes())
            .unwrap_or(compute);
        let dense = parts
            .iter()
            .map(|m| m.dense(widest))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self::Dense(Tensor::cat(&dense, 0)?))
    }
}

impl Blocks {
    /// The values as f32 (rows, cols) on the blocks' device.
    pub(super) fn dequantize(&self) -> Result<Tensor> {
        if let Some(t) = super::fused::dequantize(self)? {
            return Ok(t);
        }
        let rows = self.bytes.dim(0)?;
        let host = self.bytes.flatten_all()?.to_vec1::<u8>()?;
        let t = crate::checkpoint::dequantize_ggml(self.format, &host, &[rows, self.cols])?;
        Ok(t.to_device(self.bytes.device())?)
    }
}
