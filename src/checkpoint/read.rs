//! Reading a checkpoint's tensors: as dense tensors in a compute dtype
//! (converted, with llama.cpp's stored transforms undone and non-finite
//! values refused), or a GGUF tensor's quantized blocks as they are.

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};

use super::*;

impl Checkpoint {
    /// The float dtype a tensor is stored in, when it is one candle holds
    /// as it is (F32, F16, BF16); None for quantized GGUF blocks and the
    /// rest, which only a conversion makes dense.
    pub fn stored_float_dtype(&self, name: &str) -> Option<DType> {
        match self.info(name)?.dtype {
            StoredDType::Safetensors(safetensors::Dtype::F32) => Some(DType::F32),
            StoredDType::Safetensors(safetensors::Dtype::F16) => Some(DType::F16),
            StoredDType::Safetensors(safetensors::Dtype::BF16) => Some(DType::BF16),
            StoredDType::Ggml(GgmlDType::F32) => Some(DType::F32),
            StoredDType::Ggml(GgmlDType::F16) => Some(DType::F16),
            StoredDType::Ggml(GgmlDType::BF16) => Some(DType::BF16),
            _ => None,
        }
    }

    /// A 2-D quantized GGUF tensor's blocks as the file holds them, rows in
    /// Hugging Face order (GGUF's RoPE permutation of q/k rows undone, row
    /// by row: a row is whole blocks); None for any other tensor. Refuses
    /// blocks whose scales are not finite, as [`Self::tensor`] refuses
    /// such values.
    pub fn quantized_rows(&self, name: &str) -> Result<Option<QuantizedRows>> {
        let Some(info) = self.info(name) else {
            return Ok(None);
        };
        let StoredDType::Ggml(format) = info.dtype else {
            return Ok(None);
        };
        let Some(scales) = block_scale_offsets(format) else {
            return Ok(None);
        };
        if info.shape.len() != 2 || info.transform == Transform::SubtractOne {
            return Ok(None);
        }
        let file = &self.files[info.file_index];
        let start = info.offset as usize;
        let data = &file.map[start..start + info.bytes as usize];
        let (rows, cols) = (info.shape[0], info.shape[1]);
        let row_bytes = cols / format.block_size() * format.type_size();
        if rows * row_bytes != data.len() {
            return Err(CheckpointError::malformed(
                &file.path,
                format!(
                    "tensor {name}: {} bytes for {rows} rows of {row_bytes}",
                    data.len()
                ),
            ));
        }
        if !block_scales_finite(scales, format, data) {
            return Err(CheckpointError::malformed(
                &file.path,
                format!(
                    "tensor {} holds NaN or infinite values",
                    self.shown_name(name)
                ),
            ));
        }
        let bytes = match info.transform {
            Transform::UnpermuteRope { heads } => unpermute_rope_rows(data, rows, heads),
            _ => data.to_vec(),
        };
        Ok(Some(QuantizedRows {
            format,
            rows,
            cols,
            bytes,
        }))
    }

    /// Reads one tensor (canonical name) as a dense tensor of `dtype` on `device`.
    /// Quantized GGUF data is dequantized from the mapped bytes; GGUF's RoPE
    /// row permutation of q/k is undone, so the result is in Hugging Face layout.
    pub fn tensor(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let info = self
            .info(name)
            .ok_or_else(|| CheckpointError::MissingTensor {
                path: self.source.clone(),
                name: name.to_string(),
            })?;
        let file = &self.files[info.file_index];
        let candle_err = |source| CheckpointError::Candle {
            path: file.path.clone(),
            name: name.to_string(),
            source: Box::new(source),
        };
        let start = info.offset as usize;
        let data = &file.map[start..start + info.bytes as usize];
        let tensor = match info.dtype {
            StoredDType::Safetensors(st) => {
                let view = safetensors::tensor::TensorView::new(st, info.shape.clone(), data)
                    .map_err(|e| CheckpointError::malformed(&file.path, format!("{name}: {e}")))?;
                candle_core::safetensors::Load::load(&view, &Device::Cpu).map_err(candle_err)?
            }
            StoredDType::Ggml(g) => dequantize_ggml(g, data, &info.shape).map_err(candle_err)?,
        };
        let tensor = apply_transform(tensor, info.transform).map_err(candle_err)?;
        let out = tensor
            .to_dtype(dtype)
            .and_then(|t| t.to_device(device))
            .map_err(candle_err)?;
        if !all_finite(&out).map_err(candle_err)? {
            let stored_finite = all_finite(&tensor).map_err(candle_err)?;
            return Err(CheckpointError::malformed(
                &file.path,
                if stored_finite {
                    format!(
                        "tensor {}: its values overflow {dtype:?} to infinity (use --dtype f32)",
                        self.shown_name(name)
                    )
                } else {
                    format!(
                        "tensor {} holds NaN or infinite values",
                        self.shown_name(name)
                    )
                },
            ));
        }
        Ok(out)
    }
}

/// Whether every element is finite, on the tensor's own device: x * 0 is 0
/// for a finite x and NaN for NaN or an infinity, so the sum is NaN exactly
/// when some element is not finite (one scalar comes back).
fn all_finite(t: &Tensor) -> candle_core::Result<bool> {
    if !t.dtype().is_float() {
        return Ok(true);
    }
    let s = t
        .affine(0.0, 0.0)?
        .sum_all()?
        .to_dtype(DType::F32)?
        .to_scalar::<f32>()?;
    Ok(s.is_finite())
}

/// Dequantizes (or just reinterprets) GGML bytes into an f32 CPU tensor.
pub fn dequantize_ggml(
    dtype: GgmlDType,
    data: &[u8],
    shape: &[usize],
) -> candle_core::Result<Tensor> {
    // candle reinterprets the bytes as blocks in place: give it 4-byte aligned
    // memory (a mapping is page aligned and GGUF offsets are aligned, but
    // general.alignment may legally be 1 or 2).
    let aligned: Vec<u32>;
    let bytes = if data.as_ptr().align_offset(4) == 0 {
        data
    } else {
        let mut v = vec![0u32; data.len().div_ceil(4)];
        // SAFETY: v holds at least data.len() bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), v.as_mut_ptr() as *mut u8, data.len());
        }
        aligned = v;
        // SAFETY: reading back the bytes just copied.
        unsafe { std::slice::from_raw_parts(aligned.as_ptr() as *const u8, data.len()) }
    };
    let q = candle_core::quantized::ggml_file::qtensor_from_ggml(
        dtype,
        bytes,
        shape.to_vec(),
        &Device::Cpu,
    )?;
    q.dequantize(&Device::Cpu)
}

/// Undoes what llama.cpp's converter did to the stored values.
fn apply_transform(t: Tensor, transform: Transform) -> candle_core::Result<Tensor> {
    match transform {
        Transform::None => Ok(t),
        Transform::SubtractOne => t.affine(1.0, -1.0),
        Transform::UnpermuteRope { heads } => {
            let (rows, cols) = t.dims2()?;
            let half = rows / heads / 2;
            // GGUF rows per head are (half, 2) interleaved; HF has (2, half).
            t.reshape((heads, half, 2, cols))?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((rows, cols))
        }
    }
}
