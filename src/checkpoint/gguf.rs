//! GGUF (v2, v3) header parsing over a memory map.
//!
//! We parse the header ourselves instead of using candle's reader because a
//! broken or hostile file must produce an error, not an allocation of whatever
//! length the header claims: every count and length is checked against the
//! bytes that are really left before anything is sized from it. Tensor data
//! stays in the mapping; candle's quantized types dequantize it on request.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use candle_core::quantized::GgmlDType;

use super::error::{CheckpointError, Result};

pub const GGUF_MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
const MAX_DIMS: u32 = 4;

/// One metadata value. Arrays keep their element type so they can be written back.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(u32, Vec<GgufValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl GgufValue {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            // Through the shortest decimal form, so an f32 1e-5 reads as 1e-5
            // (as config.json states it), not 9.99999974e-6.
            Self::F32(v) => v.to_string().parse().ok(),
            Self::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            Self::Array(_, v) => Some(v),
            _ => None,
        }
    }

    /// The GGUF type id, as written in the file.
    pub fn type_id(&self) -> u32 {
        match self {
            Self::U8(_) => 0,
            Self::I8(_) => 1,
            Self::U16(_) => 2,
            Self::I16(_) => 3,
            Self::U32(_) => 4,
            Self::I32(_) => 5,
            Self::F32(_) => 6,
            Self::Bool(_) => 7,
            Self::String(_) => 8,
            Self::Array(..) => 9,
            Self::U64(_) => 10,
            Self::I64(_) => 11,
            Self::F64(_) => 12,
        }
    }
}

/// A tensor as the GGUF header describes it (shape in GGUF order: fastest dim first).
#[derive(Debug, Clone)]
pub struct GgufTensor {
    pub name: String,
    pub dtype: GgmlDType,
    pub ggml_dims: Vec<u64>,
    /// Absolute offset of the data in the file.
    pub offset: u64,
    pub bytes: u64,
}

impl GgufTensor {
    /// Shape in row-major (PyTorch / Hugging Face) order.
    pub fn shape(&self) -> Vec<usize> {
        self.ggml_dims.iter().rev().map(|&d| d as usize).collect()
    }
}

#[derive(Debug, Clone)]
pub struct GgufHeader {
    pub version: u32,
    pub metadata: BTreeMap<String, GgufValue>,
    pub tensors: Vec<GgufTensor>,
    pub alignment: u64,
}

/// The GGML type id -> candle dtype. Ids from ggml.h (`enum ggml_type`).
pub fn ggml_dtype_from_id(id: u32) -> Option<GgmlDType> {
    Some(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

pub fn ggml_dtype_id(dtype: GgmlDType) -> u32 {
    match dtype {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
    }
}

/// The name llama.cpp prints for a type.
pub fn ggml_dtype_name(dtype: GgmlDType) -> &'static str {
    match dtype {
        GgmlDType::F32 => "F32",
        GgmlDType::F16 => "F16",
        GgmlDType::BF16 => "BF16",
        GgmlDType::Q4_0 => "Q4_0",
        GgmlDType::Q4_1 => "Q4_1",
        GgmlDType::Q5_0 => "Q5_0",
        GgmlDType::Q5_1 => "Q5_1",
        GgmlDType::Q8_0 => "Q8_0",
        GgmlDType::Q8_1 => "Q8_1",
        GgmlDType::Q2K => "Q2_K",
        GgmlDType::Q3K => "Q3_K",
        GgmlDType::Q4K => "Q4_K",
        GgmlDType::Q5K => "Q5_K",
        GgmlDType::Q6K => "Q6_K",
        GgmlDType::Q8K => "Q8_K",
    }
}

/// Bounds-checked little-endian reader over the mapped header.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn err(&self, message: String) -> CheckpointError {
        CheckpointError::malformed(self.path, message)
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.err(format!(
                "truncated: {what} needs {n} bytes at offset {} but the file ends at {}",
                self.pos,
                self.buf.len()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Checks a claimed element count against the bytes left before anything is allocated.
    fn check_count(&self, count: u64, min_size: usize, what: &str) -> Result<usize> {
        let room = (self.remaining() / min_size.max(1)) as u64;
        if count > room {
            return Err(self.err(format!(
                "{what} claims {count} entries but only {} bytes remain (at most {room} entries)",
                self.remaining()
            )));
        }
        Ok(count as usize)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        if len > self.remaining() as u64 {
            return Err(self.err(format!(
                "{what}: string length {len} at offset {} runs past the end of the file ({} bytes)",
                self.pos - 8,
                self.buf.len()
            )));
        }
        let at = self.pos;
        let bytes = self.take(len as usize, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| {
            self.err(format!(
                "{what}: the string at offset {at} is not valid UTF-8 (invalid byte at offset {})",
                at + e.utf8_error().valid_up_to()
            ))
        })
    }

    fn value(&mut self, type_id: u32, what: &str, depth: u32) -> Result<GgufValue> {
        Ok(match type_id {
            0 => GgufValue::U8(self.array::<1>(what)?[0]),
            1 => GgufValue::I8(self.array::<1>(what)?[0] as i8),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(what)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(what)?)),
            4 => GgufValue::U32(self.u32(what)?),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(what)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(what)?)),
            7 => GgufValue::Bool(self.array::<1>(what)?[0] != 0),
            8 => GgufValue::String(self.string(what)?),
            9 => {
                if depth > 2 {
                    return Err(self.err(format!("{what}: arrays nested too deep")));
                }
                let elem = self.u32(what)?;
                let min = value_min_size(elem).ok_or_else(|| {
                    self.err(format!("{what}: unknown array element type {elem}"))
                })?;
                let n = self.u64(what)?;
                let n = self.check_count(n, min, what)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.value(elem, what, depth + 1)?);
                }
                GgufValue::Array(elem, v)
            }
            10 => GgufValue::U64(self.u64(what)?),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(what)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(what)?)),
            other => return Err(self.err(format!("{what}: unknown metadata value type {other}"))),
        })
    }
}

/// The fewest bytes a value of this type occupies (for count checks).
fn value_min_size(type_id: u32) -> Option<usize> {
    Some(match type_id {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 => 8,
        9 => 12,
        10..=12 => 8,
        _ => return None,
    })
}

/// Parses the header of a GGUF file held entirely in `buf` (a memory map).
pub fn parse(path: &Path, buf: &[u8]) -> Result<GgufHeader> {
    let mut r = Reader { buf, pos: 0, path };
    let magic = r.array::<4>("magic")?;
    if &magic != GGUF_MAGIC {
        return Err(r.err(format!(
            "not a GGUF file (magic {:?}, expected \"GGUF\")",
            String::from_utf8_lossy(&magic)
        )));
    }
    let version = r.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(CheckpointError::unsupported(
            path,
            format!("GGUF version {version} (supported: 2, 3)"),
        ));
    }
    let n_tensors = r.u64("tensor count")?;
    let n_kv = r.u64("metadata count")?;
    // A key-value pair is at least a key length, a type and one byte of value.
    let n_kv = r.check_count(n_kv, 13, "metadata count")?;
    let mut metadata = BTreeMap::new();
    for i in 0..n_kv {
        let key = r.string(&format!("metadata key #{i}"))?;
        let type_id = r.u32(&key)?;
        let value = r.value(type_id, &key, 0)?;
        if metadata.contains_key(&key) {
            return Err(r.err(format!("metadata key {key} appears twice")));
        }
        metadata.insert(key, value);
    }
    // A tensor entry is at least a name length, n_dims, a type and an offset.
    let n_tensors = r.check_count(n_tensors, 24, "tensor count")?;
    let mut raw = Vec::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let name = r.string(&format!("tensor #{i} name"))?;
        let n_dims = r.u32(&name)?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(r.err(format!(
                "tensor {name}: {n_dims} dimensions (1 to {MAX_DIMS} allowed)"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(r.u64(&name)?);
        }
        let type_id = r.u32(&name)?;
        let offset = r.u64(&name)?;
        raw.push((name, dims, type_id, offset));
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 30 => a,
            _ => {
                return Err(r.err(format!(
                    "general.alignment = {} is not a power of two (up to 2^30)",
                    super::gguf_config::shown(v)
                )))
            }
        },
    };
    let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
    let file_len = buf.len() as u64;
    let mut tensors = Vec::with_capacity(raw.len());
    let mut names = HashSet::new();
    for (name, dims, type_id, rel) in raw {
        if !names.insert(name.clone()) {
            return Err(r.err(format!("tensor {name} appears twice")));
        }
        let dtype = ggml_dtype_from_id(type_id).ok_or_else(|| {
            CheckpointError::unsupported(path, format!("tensor {name}: GGML type id {type_id}"))
        })?;
        if dims.contains(&0) {
            return Err(r.err(format!(
                "tensor {name}: shape {dims:?} has a dimension of 0"
            )));
        }
        let elems = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&e| e <= file_len.saturating_mul(8))
            .ok_or_else(|| {
                r.err(format!(
                    "tensor {name}: shape {dims:?} has more elements than a file of {file_len} bytes can hold"
                ))
            })?;
        let block = dtype.block_size() as u64;
        if elems % block != 0 || dims[0] % block != 0 {
            return Err(r.err(format!(
                "tensor {name}: shape {dims:?} is not a whole number of {} blocks of {block}",
                ggml_dtype_name(dtype)
            )));
        }
        let bytes = (elems / block)
            .checked_mul(dtype.type_size() as u64)
            .ok_or_else(|| r.err(format!("tensor {name}: shape {dims:?} overflows")))?;
        if rel % alignment != 0 {
            return Err(r.err(format!(
                "tensor {name}: offset {rel} is not aligned to {alignment}"
            )));
        }
        let offset = data_start.saturating_add(rel);
        match offset.checked_add(bytes) {
            Some(end) if end <= file_len => {}
            _ => {
                return Err(r.err(format!(
                    "tensor {name}: data [{offset}, +{bytes}) runs past the end of the file ({file_len} bytes)"
                )))
            }
        }
        tensors.push(GgufTensor {
            name,
            dtype,
            ggml_dims: dims,
            offset,
            bytes,
        });
    }
    let mut by_offset: Vec<&GgufTensor> = tensors.iter().collect();
    by_offset.sort_by_key(|t| t.offset);
    for w in by_offset.windows(2) {
        if w[0].offset + w[0].bytes > w[1].offset {
            return Err(r.err(format!("tensors {} and {} overlap", w[0].name, w[1].name)));
        }
    }
    Ok(GgufHeader {
        version,
        metadata,
        tensors,
        alignment,
    })
}
