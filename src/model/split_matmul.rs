//! x W^T on the CPU for many rows of x (a prompt), split over the thread
//! pool by W's rows: one fork per product, each part a single-threaded
//! gemm call (the kernel candle itself runs).
//!
//! candle hands each product to gemm's own parallel split, which on two
//! cores forks and joins inside every product at a fine grain. SmolLM2's
//! prompt then ran at 1.3-1.4x its one-thread speed on two threads. Equal
//! parts of W need one join per product. Every element is the same dot
//! product over the whole of K either way, so splitting by W's rows
//! changes no element's order of summation along K.

use candle_core::{CpuStorage, DType, Device, Storage, Tensor};
use rayon::prelude::*;

/// Products smaller than this (m * n * k) stay on candle's path: too small
/// to split.
const MIN_WORK: usize = 1 << 20;

/// Whether the split applies: `MWTOP_CPU_SPLIT=0` leaves every product to
/// candle (to measure it; the results are the same bits).
fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("MWTOP_CPU_SPLIT").as_deref() != Ok("0"))
}

/// A pointer the pool's parts share: the destination, which they write in
/// disjoint blocks, or an operand they only read. It lives until every
/// part has joined.
struct Shared<P>(P);
// SAFETY: see the type's docs; each use says why its accesses are disjoint.
unsafe impl<P> Send for Shared<P> {}
unsafe impl<P> Sync for Shared<P> {}

/// dst (m, n), rows `dst_rs` apart and columns adjacent, = lhs (m, k) times
/// rhs (k, n), each operand given by its first element and its (row,
/// column) strides: gemm on this thread alone.
///
/// # Safety
/// Every element the strides reach must lie in its buffer, and no other
/// thread may touch dst's block meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn part(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    lhs: *const f32,
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: *const f32,
    (rhs_rs, rhs_cs): (usize, usize),
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        false,
        lhs,
        lhs_cs as isize,
        lhs_rs as isize,
        rhs,
        rhs_cs as isize,
        rhs_rs as isize,
        0f32,
        1f32,
        false,
        false,
        false,
        gemm::Parallelism::None,
    )
}

/// y (m, n) = x (m, k) W^T for f32 W (n, k) contiguous and x f32 on the CPU,
/// with the pool's threads each taking an equal share of W's rows. None
/// where it does not apply (other devices or dtypes, strided W, a small
/// product, one thread).
pub(super) fn matmul_t(x: &Tensor, w: &Tensor) -> candle_core::Result<Option<Tensor>> {
    if !enabled()
        || !matches!(w.device(), Device::Cpu)
        || !matches!(x.device(), Device::Cpu)
        || w.dtype() != DType::F32
        || x.dtype() != DType::F32
        || !w.is_contiguous()
    {
        return Ok(None);
    }
    let (n, k) = w.dims2()?;
    let (m, xk) = x.dims2()?;
    let threads = rayon::current_num_threads();
    if xk != k || threads < 2 || m * n * k < MIN_WORK || n < threads {
        return Ok(None);
    }
    let x = x.contiguous()?;
    let (xs, xl) = x.storage_and_layout();
    let (ws, wl) = w.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(xd)), Storage::Cpu(CpuStorage::F32(wd))) = (&*xs, &*ws)
    else {
        return Ok(None);
    };
    let xv = &xd[xl.start_offset()..xl.start_offset() + m * k];
    let wv = &wd[wl.start_offset()..wl.start_offset() + n * k];
    let mut y = vec![0f32; m * n];
    let dst = Shared(y.as_mut_ptr());
    let share = n.div_ceil(threads);
    (0..threads).into_par_iter().for_each(|p| {
        let (j0, j1) = (p * share, ((p + 1) * share).min(n));
        if j0 >= j1 {
            return;
        }
        let dst = &dst;
        // SAFETY: x is (m, k) row-major, W's rows j0..j1 are (j1 - j0, k)
        // row-major read as the (k, j1 - j0) matrix W^T (row stride 1,
        // column stride k), and the destination block is columns j0..j1 of
        // y (m, n), which only this part writes.
        unsafe {
            part(
                (m, j1 - j0, k),
                dst.0.add(j0),
                n,
                xv.as_ptr(),
                (k, 1),
                wv.as_ptr().add(j0 * k),
                (1, k),
            )
        }
    });
    drop((xs, ws));
    Tensor::from_vec(y, (m, n), &Device::Cpu).map(Some)
}

/// a (d0, d1, m, k) times b (d0, d1, k, n), f32 on the CPU, each matrix
/// with any strides (a transposed view of k, a row range of a longer cache),
/// into a contiguous (d0, d1, m, n): every matrix's rows split over the
/// pool, one fork for the whole batch (attention's scores and weighted
/// values). None where it does not apply.
pub(super) fn batched(a: &Tensor, b: &Tensor) -> candle_core::Result<Option<Tensor>> {
    if !enabled()
        || !matches!(a.device(), Device::Cpu)
        || !matches!(b.device(), Device::Cpu)
        || a.dtype() != DType::F32
        || b.dtype() != DType::F32
        || a.rank() != 4
        || b.rank() != 4
    {
        return Ok(None);
    }
    let (d0, d1, m, k) = a.dims4()?;
    let (e0, e1, bk, n) = b.dims4()?;
    let threads = rayon::current_num_threads();
    let batch = d0 * d1;
    if (d0, d1, k) != (e0, e1, bk) || threads < 2 || batch * m * n * k < MIN_WORK {
        return Ok(None);
    }
    let (as_, al) = a.storage_and_layout();
    let (bs, bl) = b.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(ad)), Storage::Cpu(CpuStorage::F32(bd))) = (&*as_, &*bs)
    else {
        return Ok(None);
    };
    let (sa, sb) = (al.stride(), bl.stride());
    let (a0, b0) = (
        ad[al.start_offset()..].as_ptr(),
        bd[bl.start_offset()..].as_ptr(),
    );
    let mut y = vec![0f32; batch * m * n];
    let dst = Shared(y.as_mut_ptr());
    let (a0, b0) = (Shared(a0), Shared(b0));
    // Each matrix in as many row ranges as threads (one when rows are few).
    let parts = threads.min(m.div_ceil(16)).max(1);
    let rows = m.div_ceil(parts);
    (0..batch * parts).into_par_iter().for_each(|task| {
        let (bi, p) = (task / parts, task % parts);
        let (r0, r1) = (p * rows, ((p + 1) * rows).min(m));
        if r0 >= r1 {
            return;
        }
        let (i, j) = (bi / d1, bi % d1);
        let (dst, a0, b0) = (&dst, &a0, &b0);
        // SAFETY: the offsets follow the layouts' strides within their
        // storages (candle's invariant for a tensor's view); rows r0..r1 of
        // matrix bi of y are written by this task only.
        unsafe {
            part(
                (r1 - r0, n, k),
                dst.0.add(bi * m * n + r0 * n),
                n,
                a0.0.add(i * sa[0] + j * sa[1] + r0 * sa[2]),
                (sa[2], sa[3]),
                b0.0.add(i * sb[0] + j * sb[1]),
                (sb[2], sb[3]),
            )
        }
    });
    drop((as_, bs));
    Tensor::from_vec(y, (d0, d1, m, n), &Device::Cpu).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(rows: usize, cols: usize, seed: u32) -> Tensor {
        let v: Vec<f32> = (0..rows * cols)
            .map(|i| {
                let h = (i as u32 ^ seed).wrapping_mul(2654435761);
                (h >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect();
        Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
    }

    /// The split product equals candle's matmul to the bit, for widths that
    /// split evenly and unevenly over the pool.
    #[test]
    fn split_product_equals_candles_matmul() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for (m, n, k) in [(413, 576, 576), (64, 1537, 192), (9, 1000, 300)] {
            let (x, w) = (tensor(m, k, 1), tensor(n, k, 2));
            let split = pool
                .install(|| matmul_t(&x, &w))
                .unwrap()
                .expect("the split applies");
            let candle = x.matmul(&w.t().unwrap()).unwrap();
            assert_eq!(split.dims(), &[m, n]);
            let (a, b) = (
                split.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                candle.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            let worst = a
                .iter()
                .zip(&b)
                .map(|(p, q)| (p - q).abs())
                .fold(0f32, f32::max);
            assert_eq!(worst, 0.0, "({m}, {n}, {k})");
        }
    }

    /// Batched products over strided views (k transposed, a row range of
    /// a longer buffer) equal candle's matmul to the bit.
    #[test]
    fn batched_product_over_views_equals_candles_matmul() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let q = tensor(2 * 3 * 99, 64, 3).reshape((2, 3, 99, 64)).unwrap();
        // Keys: 40 of a 50-row buffer, viewed transposed (64, 40).
        let keys = tensor(2 * 3 * 50, 64, 4).reshape((2, 3, 50, 64)).unwrap();
        let k = keys.narrow(2, 0, 40).unwrap();
        let kt = k.t().unwrap();
        let scores = pool.install(|| batched(&q, &kt)).unwrap().expect("applies");
        let want = q.matmul(&kt).unwrap();
        assert_eq!(scores.dims(), want.dims());
        let diff = (scores - &want)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0);
        // Weighted values: (2, 3, 99, 40) times the 40-row range (40, 64).
        let probs = want;
        let out = pool
            .install(|| batched(&probs, &k))
            .unwrap()
            .expect("applies");
        let want = probs.matmul(&k).unwrap();
        let diff = (out - want)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0);
    }

    #[test]
    fn small_or_single_threaded_products_stay_with_candle() {
        let (x, w) = (tensor(4, 64, 1), tensor(64, 64, 2));
        assert!(matmul_t(&x, &w).unwrap().is_none());
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let (x, w) = (tensor(413, 576, 1), tensor(576, 576, 2));
        assert!(one.install(|| matmul_t(&x, &w)).unwrap().is_none());
    }
}
