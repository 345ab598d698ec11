//! A small GGUF v3 writer.
//!
//! Used to build synthetic checkpoints (tests, benchmarks) and F32 references
//! for llama.cpp. Writes to a temporary name and renames, like every file mwtop writes.

use std::io::Write;
use std::path::Path;

use candle_core::quantized::GgmlDType;

use super::gguf::{ggml_dtype_id, GgufValue, GGUF_MAGIC};

/// One tensor to write: GGUF name, type, row-major shape and the raw GGML bytes.
pub struct GgufTensorData {
    pub name: String,
    pub dtype: GgmlDType,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &GgufValue) {
    match v {
        GgufValue::U8(x) => out.push(*x),
        GgufValue::I8(x) => out.push(*x as u8),
        GgufValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Bool(x) => out.push(u8::from(*x)),
        GgufValue::String(s) => put_string(out, s),
        GgufValue::Array(elem, items) => {
            out.extend_from_slice(&elem.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item);
            }
        }
        GgufValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

/// The tensors of a parsed GGUF (`header` of `bytes`) as writer input, so
/// a file can be read, edited and written back.
pub fn tensors_of(header: &super::gguf::GgufHeader, bytes: &[u8]) -> Vec<GgufTensorData> {
    header
        .tensors
        .iter()
        .map(|t| GgufTensorData {
            name: t.name.clone(),
            dtype: t.dtype,
            shape: t.shape(),
            data: bytes[t.offset as usize..(t.offset + t.bytes) as usize].to_vec(),
        })
        .collect()
}

/// Serializes a whole GGUF v3 file into memory (alignment 32).
pub fn to_bytes(metadata: &[(String, GgufValue)], tensors: &[GgufTensorData]) -> Vec<u8> {
    const ALIGN: usize = 32;
    let mut out = Vec::new();
    out.extend_from_slice(GGUF_MAGIC);
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        put_string(&mut out, k);
        out.extend_from_slice(&v.type_id().to_le_bytes());
        put_value(&mut out, v);
    }
    let mut rel = 0usize;
    for t in tensors {
        put_string(&mut out, &t.name);
        out.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
        for &d in t.shape.iter().rev() {
            out.extend_from_slice(&(d as u64).to_le_bytes());
        }
        out.extend_from_slice(&ggml_dtype_id(t.dtype).to_le_bytes());
        out.extend_from_slice(&(rel as u64).to_le_bytes());
        rel = (rel + t.data.len()).div_ceil(ALIGN) * ALIGN;
    }
    out.resize(out.len().div_ceil(ALIGN) * ALIGN, 0);
    for t in tensors {
        out.extend_from_slice(&t.data);
        out.resize(out.len().div_ceil(ALIGN) * ALIGN, 0);
    }
    out
}

/// Writes a GGUF file atomically (temporary name, then rename).
pub fn write(
    path: &Path,
    metadata: &[(String, GgufValue)],
    tensors: &[GgufTensorData],
) -> std::io::Result<()> {
    let tmp = crate::checkpoint::temp_sibling(path);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&to_bytes(metadata, tensors))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Raw little-endian bytes of f32 values (a GGML F32 tensor).
pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}
