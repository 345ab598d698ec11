//! Matrix-vector product for one token (or a few rows) on the CPU.
//!
//! Decoding multiplies one activation row by every weight matrix: a pure
//! memory-bandwidth problem. gemm's single-row path runs on one thread, and
//! one core does not saturate memory bandwidth; splitting the rows of W over
//! the rayon pool does (SmolLM2 f32 decode on 2 cores: 35 -> 42 tokens/s).

use candle_core::quantized::GgmlDType;
use candle_core::{CpuStorage, DType, Device, Storage, Tensor};
use rayon::prelude::*;

/// Rows handed to one rayon task: big enough to amortize scheduling.
const ROWS_PER_TASK: usize = 64;

/// The most activation rows one product reads W once for (a token, the
/// A/B pair's two, a short batch); more go to the general matmul.
pub(crate) const MAX_ROWS: usize = 8;

/// y = x W^T for contiguous W (out, in) and up to [`MAX_ROWS`] rows of x
/// f32 on the CPU, shape (rows of x, out): W f32, or held as stored in
/// bf16/f16 (each weight row widened exactly to f32 once). Each row's sums
/// run in the same order whatever the batch, so each row equals itself
/// decoded alone, and the A/B pair reads W once per step (gemm's kernels
/// for two rows ran at a third of one row's speed per row). None when the fast path does not apply
/// (other dtypes or device, strided weights, more rows).
pub fn gemv(w: &Tensor, x: &Tensor) -> candle_core::Result<Option<Tensor>> {
    if !matches!(w.device(), Device::Cpu) || x.dtype() != DType::F32 || !w.is_contiguous() {
        return Ok(None);
    }
    let (out, inp) = w.dims2()?;
    let n = x.elem_count() / inp.max(1);
    if !(1..=MAX_ROWS).contains(&n) || n * inp != x.elem_count() || x.dim(x.rank() - 1)? != inp {
        return Ok(None);
    }
    let xv: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let (storage, layout) = w.storage_and_layout();
    let rows = layout.start_offset()..layout.start_offset() + out * inp;
    let y = match &*storage {
        Storage::Cpu(CpuStorage::F32(data)) => times_rows(
            &data[rows],
            inp,
            &xv,
            n,
            |r: &[f32], f: &mut dyn FnMut(&[f32])| f(r),
        ),
        Storage::Cpu(CpuStorage::BF16(data)) => times_rows(&data[rows], inp, &xv, n, widen_bf16),
        Storage::Cpu(CpuStorage::F16(data)) => times_rows(&data[rows], inp, &xv, n, widen_f16),
        _ => return Ok(None),
    };
    drop(storage);
    Tensor::from_vec(y, (n, out), &Device::Cpu).map(Some)
}

/// [`gemv`] for W held as GGUF blocks (see [`super::matrix::Blocks`]):
/// each row dequantized by candle's own code into a per-thread buffer, then
/// dotted as the f32 copy's row is, so the product equals the f32 copy's to
/// the bit while only the blocks are read. None where [`gemv`] would not
/// apply, or for a format not kept as blocks.
pub(super) fn gemv_blocks(
    blocks: &super::matrix::Blocks,
    x: &Tensor,
) -> candle_core::Result<Option<Tensor>> {
    let w = &blocks.bytes;
    if !matches!(w.device(), Device::Cpu) || x.dtype() != DType::F32 || !w.is_contiguous() {
        return Ok(None);
    }
    let Some(dequantize) = row_dequantizer(blocks.format) else {
        return Ok(None);
    };
    let (out, row_bytes) = w.dims2()?;
    let inp = blocks.cols;
    let n = x.elem_count() / inp.max(1);
    if !(1..=MAX_ROWS).contains(&n) || n * inp != x.elem_count() || x.dim(x.rank() - 1)? != inp {
        return Ok(None);
    }
    let xv: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let (storage, layout) = w.storage_and_layout();
    let Storage::Cpu(CpuStorage::U8(data)) = &*storage else {
        return Ok(None);
    };
    let bytes = &data[layout.start_offset()..layout.start_offset() + out * row_bytes];
    let y = times_rows(
        bytes,
        row_bytes,
        &xv,
        n,
        |row: &[u8], f: &mut dyn FnMut(&[f32])| {
            with_row_f32(inp, |values| {
                dequantize(row, values);
                f(values)
            })
        },
    );
    drop(storage);
    Tensor::from_vec(y, (n, out), &Device::Cpu).map(Some)
}

/// Dequantizes one row of blocks (bytes as the file holds them) into f32.
type RowDequantizer = fn(&[u8], &mut [f32]);

fn row_dequantizer(format: GgmlDType) -> Option<RowDequantizer> {
    use candle_core::quantized::k_quants::*;
    Some(match format {
        GgmlDType::Q4_0 => dequantize_q4::<false>,
        GgmlDType::Q4_1 => dequantize_q4::<true>,
        GgmlDType::Q5_0 => dequantize_row::<BlockQ5_0>,
        GgmlDType::Q5_1 => dequantize_row::<BlockQ5_1>,
        GgmlDType::Q8_0 => dequantize_q8_0,
        GgmlDType::Q4K => dequantize_row::<BlockQ4K>,
        GgmlDType::Q5K => dequantize_row::<BlockQ5K>,
        GgmlDType::Q6K => dequantize_row::<BlockQ6K>,
        _ => return None,
    })
}

/// The f16 at the start of `b`, widened.
fn f16_at(b: &[u8]) -> f32 {
    half::f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// Q8_0 rows (34-byte blocks: an f16 scale, 32 i8) as candle's `to_float`
/// computes them (`q as f32 * d`), read in place: the most common formats
/// of a decode step skip the aligned copy and the generic code.
fn dequantize_q8_0(row: &[u8], out: &mut [f32]) {
    for (b, o) in row.chunks_exact(34).zip(out.chunks_exact_mut(32)) {
        let d = f16_at(b);
        for (o, &q) in o.iter_mut().zip(&b[2..34]) {
            *o = q as i8 as f32 * d;
        }
    }
}

/// Q4_0 (18-byte blocks: f16 d, 16 bytes of nibbles) and Q4_1 (20 bytes:
/// f16 d and m first) as candle's `to_float` computes them: byte j holds
/// weights j (low nibble) and j + 16; `(q - 8) * d`, or `q * d + m`.
fn dequantize_q4<const MIN: bool>(row: &[u8], out: &mut [f32]) {
    let (size, start) = if MIN { (20, 4) } else { (18, 2) };
    for (b, o) in row.chunks_exact(size).zip(out.chunks_exact_mut(32)) {
        let d = f16_at(b);
        let (lo, hi) = o.split_at_mut(16);
        let qs = &b[start..start + 16];
        if MIN {
            let m = f16_at(&b[2..]);
            for ((l, h), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(qs) {
                *l = (q & 0x0F) as f32 * d + m;
                *h = (q >> 4) as f32 * d + m;
            }
        } else {
            for ((l, h), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(qs) {
                *l = ((q & 0x0F) as i16 - 8) as f32 * d;
                *h = ((q >> 4) as i16 - 8) as f32 * d;
            }
        }
    }
}

/// candle's `to_float` over a row's blocks, copied first into a per-thread
/// buffer aligned for them (a row of a u8 tensor may start anywhere).
fn dequantize_row<B: candle_core::quantized::k_quants::GgmlType>(row: &[u8], out: &mut [f32]) {
    thread_local! {
        static ALIGNED: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let count = row.len() / std::mem::size_of::<B>();
    ALIGNED.with(|buf| {
        let mut buf = buf.borrow_mut();
        buf.resize(row.len().div_ceil(8), 0);
        // SAFETY: the buffer holds at least row.len() bytes, 8-aligned (at
        // least B's alignment, which has f16 and u8 fields); B is a
        // #[repr(C)] block of plain integers and f16s, valid for any bytes.
        let blocks = unsafe {
            std::ptr::copy_nonoverlapping(row.as_ptr(), buf.as_mut_ptr() as *mut u8, row.len());
            std::slice::from_raw_parts(buf.as_ptr() as *const B, count)
        };
        B::to_float(blocks, out);
    });
}

/// Each row of `w` (`row_len` elements of T: a row of blocks holds fewer
/// bytes than its row of x has values) dotted with each of the `n` rows of
/// x (row-major, n x in), the rows of w split over the rayon pool; `as_f32`
/// hands a row of w to its callback as f32. Returns y (n, rows of w),
/// row-major.
fn times_rows<T: Sync>(
    w: &[T],
    row_len: usize,
    x: &[f32],
    n: usize,
    as_f32: impl Fn(&[T], &mut dyn FnMut(&[f32])) + Sync,
) -> Vec<f32> {
    let inp = x.len() / n;
    let out = w.len() / row_len;
    // y transposed (out, n): each task writes a contiguous block.
    let mut yt = vec![0f32; out * n];
    yt.par_chunks_mut(ROWS_PER_TASK * n)
        .enumerate()
        .for_each(|(block, ys)| {
            for (i, yr) in ys.chunks_mut(n).enumerate() {
                let r = block * ROWS_PER_TASK + i;
                as_f32(&w[r * row_len..(r + 1) * row_len], &mut |row| {
                    for (j, y) in yr.iter_mut().enumerate() {
                        *y = dot(row, &x[j * inp..(j + 1) * inp]);
                    }
                });
            }
        });
    if n == 1 {
        return yt;
    }
    let mut y = vec![0f32; out * n];
    for (r, yr) in yt.chunks(n).enumerate() {
        for (j, v) in yr.iter().enumerate() {
            y[j * out + r] = *v;
        }
    }
    y
}

/// A bf16 row as f32: bf16 is f32's upper half, so widening is a shift.
fn widen_bf16(a: &[half::bf16], f: &mut dyn FnMut(&[f32])) {
    with_row_f32(a.len(), |row| {
        for (r, v) in row.iter_mut().zip(a) {
            *r = f32::from_bits((v.to_bits() as u32) << 16);
        }
        f(row)
    })
}

/// An f16 row as f32, widened with half's (F16C where present) conversion.
fn widen_f16(a: &[half::f16], f: &mut dyn FnMut(&[f32])) {
    use half::slice::HalfFloatSliceExt;
    with_row_f32(a.len(), |row| {
        a.convert_to_f32_slice(row);
        f(row)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A bf16 matrix with values of every magnitude, its columns not a
    /// multiple of the SIMD width.
    fn bf16_matrix(rows: usize, cols: usize) -> Tensor {
        let v: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919 % 1013) as f32 - 506.0) * 0.37f32.powi((i % 5) as i32))
            .collect();
        Tensor::from_vec(v, (rows, cols), &Device::Cpu)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap()
    }

    fn activations(n: usize, cols: usize) -> Tensor {
        let v: Vec<f32> = (0..n * cols)
            .map(|i| ((i * 31 % 17) as f32 - 8.0) / 3.0)
            .collect();
        Tensor::from_vec(v, (n, cols), &Device::Cpu).unwrap()
    }

    /// W times row `j` of x, alone.
    fn row_alone(w: &Tensor, x: &Tensor, j: usize) -> Vec<f32> {
        gemv(w, &x.narrow(0, j, 1).unwrap())
            .unwrap()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn rows_of_a_batch_equal_each_row_alone_and_the_f32_copy() {
        let w = bf16_matrix(131, 45);
        let wide = w.to_dtype(DType::F32).unwrap();
        let x = activations(MAX_ROWS, 45);
        let y: Vec<Vec<f32>> = gemv(&w, &x).unwrap().unwrap().to_vec2().unwrap();
        assert_eq!(y.len(), MAX_ROWS);
        for (j, row) in y.iter().enumerate() {
            assert_eq!(row, &row_alone(&w, &x, j), "row {j}");
            assert_eq!(row, &row_alone(&wide, &x, j), "row {j}");
        }
        // And the general matmul agrees to rounding.
        let mm: Vec<Vec<f32>> = x.matmul(&wide.t().unwrap()).unwrap().to_vec2().unwrap();
        for (a, b) in y.iter().flatten().zip(mm.iter().flatten()) {
            assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{a} vs {b}");
        }
    }

    #[test]
    fn f32_rows_of_a_batch_equal_each_row_alone() {
        let w = bf16_matrix(131, 45).to_dtype(DType::F32).unwrap();
        let x = activations(2, 45);
        let y: Vec<Vec<f32>> = gemv(&w, &x).unwrap().unwrap().to_vec2().unwrap();
        for (j, row) in y.iter().enumerate() {
            assert_eq!(row, &row_alone(&w, &x, j), "row {j}");
        }
    }

    #[test]
    fn more_rows_go_to_the_general_matmul() {
        let w = bf16_matrix(16, 8);
        assert!(gemv(&w, &activations(MAX_ROWS + 1, 8)).unwrap().is_none());
        let wide = w.to_dtype(DType::F32).unwrap();
        assert!(gemv(&wide, &activations(MAX_ROWS + 1, 8))
            .unwrap()
            .is_none());
        assert!(gemv(&wide, &activations(MAX_ROWS, 8)).unwrap().is_some());
        // x's rows must be W's columns long.
        assert!(gemv(&w, &activations(1, 16)).unwrap().is_none());
    }
}
