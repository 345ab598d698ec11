//! Matrix-vector product for one token on the CPU.
//!
//! Decoding multiplies one activation row by every weight matrix: a pure
//! memory-bandwidth problem. gemm's single-row path runs on one thread, and
//! one core does not saturate memory bandwidth; splitting the rows of W over
//! the rayon pool does (SmolLM2 f32 decode on 2 cores: 35 -> 42 tokens/s).

use candle_core::{CpuStorage, DType, Device, Storage, Tensor};
use rayon::prelude::*;

/// Rows handed to one rayon task: big enough to amortize scheduling.
const ROWS_PER_TASK: usize = 64;

/// y = W x for contiguous W (out, in) and x (in) on the CPU, x f32 and W
/// f32 or held as stored in bf16/f16 (each weight widened exactly to f32,
/// the same sums in the same order as for f32); None when the fast path does
/// not apply (other dtypes or device, strided weights).
pub fn gemv(w: &Tensor, x: &Tensor) -> candle_core::Result<Option<Tensor>> {
    if !matches!(w.device(), Device::Cpu) || x.dtype() != DType::F32 || !w.is_contiguous() {
        return Ok(None);
    }
    let (out, inp) = w.dims2()?;
    let xv: Vec<f32> = x.flatten_all()?.to_vec1()?;
    if xv.len() != inp {
        return Ok(None);
    }
    let (storage, layout) = w.storage_and_layout();
    let rows = layout.start_offset()..layout.start_offset() + out * inp;
    let y = match &*storage {
        Storage::Cpu(CpuStorage::F32(data)) => times_rows(&data[rows], &xv, dot),
        Storage::Cpu(CpuStorage::BF16(data)) => times_rows(&data[rows], &xv, dot_bf16),
        Storage::Cpu(CpuStorage::F16(data)) => times_rows(&data[rows], &xv, dot_f16),
        _ => return Ok(None),
    };
    drop(storage);
    Tensor::from_vec(y, out, &Device::Cpu).map(Some)
}

/// Each row of `w` (rows of x.len()) dotted with x, the rows split over the
/// rayon pool.
fn times_rows<T: Sync>(w: &[T], x: &[f32], dot: impl Fn(&[T], &[f32]) -> f32 + Sync) -> Vec<f32> {
    let inp = x.len();
    let mut y = vec![0f32; w.len() / inp];
    y.par_chunks_mut(ROWS_PER_TASK)
        .enumerate()
        .for_each(|(block, ys)| {
            for (i, yi) in ys.iter_mut().enumerate() {
                let r = block * ROWS_PER_TASK + i;
                *yi = dot(&w[r * inp..(r + 1) * inp], x);
            }
        });
    y
}

/// [`dot`] of a bf16 row: bf16 is f32's upper half, so widening is a shift.
fn dot_bf16(a: &[half::bf16], b: &[f32]) -> f32 {
    with_row_f32(a.len(), |row| {
        for (r, v) in row.iter_mut().zip(a) {
            *r = f32::from_bits((v.to_bits() as u32) << 16);
        }
        dot(row, b)
    })
}

/// [`dot`] of an f16 row, widened with half's (F16C where present) conversion.
fn dot_f16(a: &[half::f16], b: &[f32]) -> f32 {
    use half::slice::HalfFloatSliceExt;
    with_row_f32(a.len(), |row| {
        a.convert_to_f32_slice(row);
        dot(row, b)
    })
}

/// Runs `f` on a per-thread f32 buffer of `n` values (reused across rows, so
/// widening a row costs no allocation).
fn with_row_f32<R>(n: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    thread_local! {
        static ROW: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    ROW.with(|row| {
        let mut row = row.borrow_mut();
        row.resize(n, 0.0);
        f(&mut row[..n])
    })
}

/// Dot product; AVX2+FMA when the CPU has them (checked once), else baseline SIMD.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static HAS_AVX2_FMA: OnceLock<bool> = OnceLock::new();
        if *HAS_AVX2_FMA
            .get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
        {
            // SAFETY: the features were detected at run time.
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_portable(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_portable(a, b)
}

/// Eight independent accumulators so the compiler vectorizes the loop.
#[inline(always)]
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, ra) = a.split_at(a.len() / 8 * 8);
    let (cb, rb) = b.split_at(ca.len());
    for (x, y) in ca.chunks_exact(8).zip(cb.chunks_exact(8)) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}
