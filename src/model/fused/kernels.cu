// mwtop's CUDA kernels, compiled at run time by NVRTC (src/model/fused/cuda.rs
// launches them). The softmax mirrors candle-kernels' `softmax` (one warp per
// row: max, exp and sum, scale) and its `usilu`/`ugelu` formulas.
extern "C" __global__ void mwtop_masked_softmax(const float* s, const float* m, float* out,
    int rows, int cols, int t, int heads, int batched, int has_mask) {
  int row = blockIdx.x * blockDim.y + threadIdx.y;
  if (row >= rows) return;
  int lane = threadIdx.x;
  int q = row % t;
  int b = row / (t * heads);
  const float* mr = m + (unsigned long long)((batched ? b * t : 0) + q) * cols;
  const float* sr = s + (unsigned long long)row * cols;
  float* o = out + (unsigned long long)row * cols;
  float mx = -__int_as_float(0x7f800000);
  for (int c = lane; c < cols; c += 32) mx = fmaxf(mx, has_mask ? sr[c] + mr[c] : sr[c]);
  for (int k = 16; k > 0; k >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, k, 32));
  float sum = 0.f;
  for (int c = lane; c < cols; c += 32) {
    float e = expf((has_mask ? sr[c] + mr[c] : sr[c]) - mx);
    o[c] = e;
    sum += e;
  }
  for (int k = 16; k > 0; k >>= 1) sum += __shfl_xor_sync(0xffffffff, sum, k, 32);
  float inv = 1.f / sum;
  for (int c = lane; c < cols; c += 32) o[c] = o[c] * inv;
}

// d softmax: dx = y * (g - sum(g * y)) per row, one warp per row.
extern "C" __global__ void mwtop_softmax_bwd(const float* y, const float* g, float* out,
    int rows, int cols) {
  int row = blockIdx.x * blockDim.y + threadIdx.y;
  if (row >= rows) return;
  int lane = threadIdx.x;
  const float* yr = y + (unsigned long long)row * cols;
  const float* gr = g + (unsigned long long)row * cols;
  float* o = out + (unsigned long long)row * cols;
  float dot = 0.f;
  for (int c = lane; c < cols; c += 32) dot += yr[c] * gr[c];
  for (int k = 16; k > 0; k >>= 1) dot += __shfl_xor_sync(0xffffffff, dot, k, 32);
  for (int c = lane; c < cols; c += 32) o[c] = yr[c] * (gr[c] - dot);
}

// d RMSNorm: y = x w r, r = rsqrt(mean(x^2) + eps); dx = g w r - x r^3 sum(g w x) / d.
extern "C" __global__ void mwtop_rmsnorm_bwd(const float* x, const float* w, const float* g,
    float* out, int rows, int cols, float eps) {
  int row = blockIdx.x * blockDim.y + threadIdx.y;
  if (row >= rows) return;
  int lane = threadIdx.x;
  const float* xr = x + (unsigned long long)row * cols;
  const float* gr = g + (unsigned long long)row * cols;
  float* o = out + (unsigned long long)row * cols;
  float ss = 0.f, dot = 0.f;
  for (int c = lane; c < cols; c += 32) {
    float xv = xr[c];
    ss += xv * xv;
    dot += gr[c] * w[c] * xv;
  }
  for (int k = 16; k > 0; k >>= 1) {
    ss += __shfl_xor_sync(0xffffffff, ss, k, 32);
    dot += __shfl_xor_sync(0xffffffff, dot, k, 32);
  }
  float r = rsqrtf(ss / cols + eps);
  float k3 = r * r * r * dot / cols;
  for (int c = lane; c < cols; c += 32) o[c] = gr[c] * w[c] * r - xr[c] * k3;
}

// y = W x, W (rows, cols) of 16-bit floats (bf16 when is_bf16, else f16),
// x and y f32; one warp per row, eight weights (16 bytes) a load when the
// rows are 16-byte aligned. bf16 -> f32 is the bits shifted up; f16 -> f32
// is exact too; the sum is f32.
__device__ __forceinline__ float mwtop_widen(unsigned short h, int is_bf16) {
  if (is_bf16) return __uint_as_float(((unsigned int)h) << 16);
  // IEEE half -> float, subnormals included.
  unsigned int sign = ((unsigned int)h & 0x8000u) << 16;
  unsigned int exp = (h >> 10) & 0x1f;
  unsigned int man = h & 0x3ff;
  if (exp == 0x1f) return __uint_as_float(sign | 0x7f800000u | (man << 13));
  if (exp == 0) {
    float v = (float)man * 5.9604644775390625e-08f; // man * 2^-24
    return sign ? -v : v;
  }
  return __uint_as_float(sign | ((exp + 112u) << 23) | (man << 13));
}

// y (n, rows) = x (n, cols) W^T for n <= MWTOP_GEMV_ROWS activation rows:
// each weight row is read once for all n. Every row's sum runs in the same
// order whatever n is, so a row of a batch equals that row decoded alone.
#define MWTOP_GEMV_ROWS 8
// 16-byte loads of W a lane issues before using them.
#define MWTOP_GEMV_BURST 8

// With `g` (not null) both GEMVs multiply by RMSNorm(x) * g instead of x:
// the norm before a projection without a kernel (and a round trip of the
// normed rows) of its own. Each warp finds the rows' scales itself,
// rsqrt(mean(x^2) + eps), and forms scale * x * g as mwtop_rmsnorm does.
__device__ void mwtop_rms_scales(const float* x, int n, int cols, int lane, int vec, float eps,
    float* sc) {
#pragma unroll
  for (int j = 0; j < MWTOP_GEMV_ROWS; ++j) {
    if (j >= n) break;
    const float* xj = x + (unsigned long long)j * cols;
    float ss = 0.f;
    if (vec) {
      const float4* x4 = (const float4*)xj;
      int n4 = cols >> 2;
      for (int i0 = lane; i0 < n4; i0 += 32 * MWTOP_GEMV_BURST) {
        float4 v[MWTOP_GEMV_BURST];
#pragma unroll
        for (int u = 0; u < MWTOP_GEMV_BURST; ++u) {
          int i = i0 + 32 * u;
          v[u] = i < n4 ? x4[i] : make_float4(0.f, 0.f, 0.f, 0.f);
        }
#pragma unroll
        for (int u = 0; u < MWTOP_GEMV_BURST; ++u)
          ss += v[u].x * v[u].x + v[u].y * v[u].y + v[u].z * v[u].z + v[u].w * v[u].w;
      }
    } else {
      for (int c = lane; c < cols; c += 32) ss += xj[c] * xj[c];
    }
    for (int k = 16; k > 0; k >>= 1) ss += __shfl_xor_sync(0xffffffff, ss, k, 32);
    sc[j] = rsqrtf(ss / cols + eps);
  }
}

// Element c of the product's input row xj: x, or its norm times g.
__device__ __forceinline__ float mwtop_act(const float* xj, const float* g, float sc, int c) {
  return g ? sc * xj[c] * g[c] : xj[c];
}

// Elements 4i..4i+3 of the product's input row xj (16-byte aligned).
__device__ __forceinline__ float4 mwtop_act4(const float* xj, const float* g, float sc, int i) {
  float4 a = ((const float4*)xj)[i];
  if (g) {
    float4 w = ((const float4*)g)[i];
    a = make_float4(sc * a.x * w.x, sc * a.y * w.y, sc * a.z * w.z, sc * a.w * w.w);
  }
  return a;
}

// The end of both GEMVs: each row's lane sums reduced over the warp, lane 0
// storing y[j, row].
// With `add` (not null), y = add + W x: the residual stream's sum in the
// same kernel, the order the composed `residual + projection` adds in.
__device__ __forceinline__ void mwtop_gemv_store(const float* acc, int n, int lane, float* y,
    const float* add, int rows, int row) {
#pragma unroll
  for (int j = 0; j < MWTOP_GEMV_ROWS; ++j) {
    if (j < n) {
      float a = acc[j];
      for (int k = 16; k > 0; k >>= 1) a += __shfl_xor_sync(0xffffffff, a, k, 32);
      unsigned long long at = (unsigned long long)j * rows + row;
      if (lane == 0) y[at] = add ? add[at] + a : a;
    }
  }
}
extern "C" __global__ void mwtop_gemv16(const unsigned short* w, const float* x, float* y,
    const float* add, const float* g, float eps, int rows, int cols, int n, int is_bf16,
    int vec8) {
  int row = blockIdx.x * blockDim.y + threadIdx.y;
  if (row >= rows) return;
  int lane = threadIdx.x;
  const unsigned short* wr = w + (unsigned long long)row * cols;
  float acc[MWTOP_GEMV_ROWS], sc[MWTOP_GEMV_ROWS];
#pragma unroll
  for (int j = 0; j < MWTOP_GEMV_ROWS; ++j) acc[j] = 0.f, sc[j] = 1.f;
  if (g) mwtop_rms_scales(x, n, cols, lane, vec8, eps, sc);
  if (vec8) {
    const uint4* w8 = (const uint4*)wr;
    int n8 = cols >> 3;
    // Loads in bursts, as in mwtop_gemv32 (the same order of sums).
    for (int i0 = lane; i0 < n8; i0 += 32 * MWTOP_GEMV_BURST) {
      uint4 qs[MWTOP_GEMV_BURST];
#pragma unroll
      for (int b = 0; b < MWTOP_GEMV_BURST; ++b) {
        int i = i0 + 32 * b;
        qs[b] = i < n8 ? w8[i] : make_uint4(0u, 0u, 0u, 0u);
      }
#pragma unroll
      for (int b = 0; b < MWTOP_GEMV_BURST; ++b) {
        int i = i0 + 32 * b;
        if (i >= n8) break;
        uint4 q = qs[b];
        unsigned int u[4] = {q.x, q.y, q.z, q.w};
        float ws[8];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          ws[2 * k] = mwtop_widen((unsigned short)(u[k] & 0xffffu), is_bf16);
          ws[2 * k + 1] = mwtop_widen((unsigned short)(u[k] >> 16), is_bf16);
        }
#pragma unroll
        for (int j = 0; j < MWTOP_GEMV_ROWS; ++j) {
          if (j < n) {
            const float* xj = x + (unsigned long long)j * cols;
            float4 a = mwtop_act4(xj, g, sc[j], 2 * i), c = mwtop_act4(xj, g, sc[j], 2 * i + 1);
            float xs[8] = {a.x, a.y, a.z, a.w, c.x, c.y, c.z, c.w};
#pragma unroll
            for (int k = 0; k < 8; ++k) acc[j] = fmaf(ws[k], xs[k], acc[j]);
          }
        }
      }
    }
  } else {
    for (int c = lane; c < cols; c += 32) {
      float wc = mwtop_widen(wr[c], is_bf16);
#pragma unroll
      for (int j = 0; j < MWTOP_GEMV_ROWS; ++j)
        if (j < n) acc[j] = fmaf(wc, mwtop_act(x + (unsigned long long)j * cols, g, sc[j], c), acc[j]);
    }
  }
  mwtop_gemv_store(acc, n, lane, y, add, rows, row);
}

// The same product for f32 weights (the dense copy): 16-byte loads of W
// and x when both are aligned.
extern "C" __global__ void mwtop_gemv32(const float* w, const float* x, float* y,
    const float* add, const float* g, float eps, int rows, int cols, int n, int vec4) {
  int row = blockIdx.x * blockDim.y + threadIdx.y;
  if (row >= rows) return;
  int lane = threadIdx.x;
  const float* wr = w + (unsigned long long)row * cols;
  float acc[MWTOP_GEMV_ROWS], sc[MWTOP_GEMV_ROWS];
#pragma unroll
  for (int j = 0; j < MWTOP_GEMV_ROWS; ++j) acc[j] = 0.f, sc[j] = 1.f;
  if (g) mwtop_rms_scales(x, n, cols, lane, vec4, eps, sc);
  if (vec4) {
    const float4* w4 = (const float4*)wr;
    int n4 = cols >> 2;
    // MWTOP_GEMV_BURST loads of W issued before their products, so a row
    // costs a few memory round trips, not one per 512 bytes; each lane's
    // sum still runs over i = lane, lane + 32, ... in order.
    for (int i0 = lane; i0 < n4; i0 += 32 * MWTOP_GEMV_BURST) {
      float4 qs[MWTOP_GEMV_BURST];
#pragma unroll
      for (int u = 0; u < MWTOP_GEMV_BURST; ++u) {
        int i = i0 + 32 * u;
        qs[u] = i < n4 ? w4[i] : make_float4(0.f, 0.f, 0.f, 0.f);
      }
#pragma unroll
      for (int u = 0; u < MWTOP_GEMV_BURST; ++u) {
        int i = i0 + 32 * u;
        if (i >= n4) break;
        float4 q = qs[u];
#pragma unroll
        for (int j = 0; j < MWTOP_GEMV_ROWS; ++j) {
          if (j < n) {
            float4 a = mwtop_act4(x + (unsigned long long)j * cols, g, sc[j], i);
            acc[j] = fmaf(q.x, a.x, acc[j]);
            acc[j] = fmaf(q.y, a.y, acc[j]);
            acc[j] = fmaf(q.z, a.z, acc[j]);
            acc[j] = fmaf(q.w, a.w, acc[j]);
          }
        }
      }
    }
  } else {
    for (int c = lane; c < cols; c += 32) {
      float wc = wr[c];
#pragma unroll
      for (int j = 0; j < MWTOP_GEMV_ROWS; ++j)
        if (j < n) acc[j] = fmaf(wc, mwtop_act(x + (unsigned long long)j * cols, g, sc[j], c), acc[j]);
    }
  }
  mwtop_gemv_store(acc, n, lane, y, add, rows, row);
}

// RMSNorm of each row of x (rows, cols) times w: one block of 256 threads
// per row (candle's gives a row of fewer than 1,024 one warp, which waits
// on its loads), the same formula: x * rsqrt(mean(x^2) + eps) * w.
extern "C" __global__ void mwtop_rmsnorm(const float* x, const float* w, float* y,
    int cols, float eps) {
  const float* xr = x + (unsigned long long)blockIdx.x * cols;
  float acc = 0.f;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    float v = xr[c];
    acc += v * v;
  }
  __shared__ float part[32];
  for (int k = 16; k > 0; k >>= 1) acc += __shfl_xor_sync(0xffffffff, acc, k, 32);
  int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) part[warp] = acc;
  __syncthreads();
  acc = lane < (int)(blockDim.x >> 5) ? part[lane] : 0.f;
  for (int k = 16; k > 0; k >>= 1) acc += __shfl_xor_sync(0xffffffff, acc, k, 32);
  float scale = rsqrtf(acc / cols + eps);
  float* yr = y + (unsigned long long)blockIdx.x * cols;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) yr[c] = scale * xr[c] * w[c];
}

extern "C" __global__ void mwtop_gated(const float* x, float* out, long long n, int dff, int gelu) {
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  long long r = i / dff;
  int j = (int)(i - r * dff);
  float g = x[r * 2 * dff + j];
  float u = x[r * 2 * dff + dff + j];
  float a;
  if (gelu) {
    float g3 = g * g * g;
    float alpha = g + 0.044715f * g3;
    a = 0.5f * g * (1.0f + tanhf((float)(1.12837916709551257390 * 0.70710678118654752440) * alpha));
  } else {
    a = g / (1.0f + expf(-g));
  }
  out[i] = a * u;
}

// One decode step's rotary embedding and cache store: the query heads
// rotated with the scaled tables into q_out, the key heads rotated and the
// value heads copied into the cache buffers at the position held on the
// device. One thread per pair of dims (i, i + hd/2) of a head slot: query
// heads, then key heads, then value heads. The rotation is candle's
// non-interleaved `rope` formula. q (b, nq, hd), k and v (b, nk, hd);
// tables (positions, hd/2); caches (b, nk, cap, hd).
extern "C" __global__ void mwtop_rope_store(const float* q, const float* k, const float* v,
    const float* cos_q, const float* sin_q, const float* cos_k, const float* sin_k,
    const unsigned int* pos, float* q_out, float* k_cache, float* v_cache, int b, int nq,
    int nk, int hd, int cap) {
  int half = hd / 2;
  int slots = nq + 2 * nk;
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= (long long)b * slots * half) return;
  int c = (int)(i % half);
  long long r = i / half;
  int slot = (int)(r % slots);
  int row = (int)(r / slots);
  unsigned long long p = pos[0];
  if (slot < nq) {
    const float* x = q + ((unsigned long long)row * nq + slot) * hd;
    float* o = q_out + ((unsigned long long)row * nq + slot) * hd;
    float co = cos_q[p * half + c], si = sin_q[p * half + c];
    float x1 = x[c], x2 = x[c + half];
    o[c] = x1 * co - x2 * si;
    o[c + half] = x1 * si + x2 * co;
  } else if (slot < nq + nk) {
    int h = slot - nq;
    const float* x = k + ((unsigned long long)row * nk + h) * hd;
    float* o = k_cache + (((unsigned long long)row * nk + h) * cap + p) * hd;
    float co = cos_k[p * half + c], si = sin_k[p * half + c];
    float x1 = x[c], x2 = x[c + half];
    o[c] = x1 * co - x2 * si;
    o[c + half] = x1 * si + x2 * co;
  } else {
    int h = slot - nq - nk;
    const float* x = v + ((unsigned long long)row * nk + h) * hd;
    float* o = v_cache + (((unsigned long long)row * nk + h) * cap + p) * hd;
    o[c] = x[c];
    o[c + half] = x[c + half];
  }
}

// One decode step's attention, a block per (row, query head):
// softmax(q k^T, capped as cap * tanh where the family caps, + mask) v over
// the cache buffer. Only keys the additive mask opens (the filled,
// in-window positions) are scored, and only values up to the last open
// key are read (a closed key's weight is exactly 0). Every phase issues its
// loads together, since a decode step is a chain of such kernels, each
// bound by its memory round trips: MWTOP_KEY_LANES lanes per key for the
// scores, float4 loads of keys and values where head_dim allows, scores in
// shared memory (`scratch`, cap per block, when they do not fit).
// q (b, heads, hd) carries attention's scale (and 1 / cap); k and v
// (b, kv_heads, cap, hd); mask (cap); pos (null, or the step's position
// on the device: no later key is read); out (b, heads * hd).
#define MWTOP_NEG_INF __int_as_float(0xff800000)
#define MWTOP_KEY_LANES 8

__device__ float mwtop_block_max(float x, float* red) {
  for (int k = 16; k > 0; k >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, k, 32));
  int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();
  if (lane == 0) red[warp] = x;
  __syncthreads();
  x = lane < (int)(blockDim.x >> 5) ? red[lane] : MWTOP_NEG_INF;
  for (int k = 16; k > 0; k >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, k, 32));
  return x;
}

__device__ float mwtop_block_sum(float x, float* red) {
  for (int k = 16; k > 0; k >>= 1) x += __shfl_xor_sync(0xffffffff, x, k, 32);
  int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();
  if (lane == 0) red[warp] = x;
  __syncthreads();
  x = lane < (int)(blockDim.x >> 5) ? red[lane] : 0.f;
  for (int k = 16; k > 0; k >>= 1) x += __shfl_xor_sync(0xffffffff, x, k, 32);
  return x;
}

extern "C" __global__ void mwtop_decode_attention(const float* q, const float* k,
    const float* v, const float* mask, float* scratch, float* out, int heads, int kv_heads,
    int cap, int hd, float softcap, int vec, int scores_shared, const unsigned int* pos) {
  extern __shared__ __align__(16) float shared[];
  __shared__ float red[32];
  // Threads per part of the weighted sum: a float4 of dims each (`vec`: the
  // host saw head_dim a multiple of 32, at most 4 per thread, and the
  // caches 16-byte aligned), or one dim.
  int width = vec ? 4 : 1;
  int tp = hd / width;
  int parts = (int)blockDim.x >= tp ? (int)blockDim.x / tp : 1;
  float* qs = shared;                 // hd
  float* partial = shared + hd;       // parts * hd
  int bh = blockIdx.x;
  float* s = scores_shared ? shared + hd + parts * hd : scratch + (unsigned long long)bh * cap;
  int b = bh / heads, h = bh % heads;
  int kvh = h / (heads / kv_heads);
  unsigned long long base = ((unsigned long long)b * kv_heads + kvh) * cap * hd;
  const float* kb = k + base;
  const float* vb = v + base;
  for (int d = threadIdx.x; d < hd; d += blockDim.x) qs[d] = q[(unsigned long long)bh * hd + d];
  __syncthreads();
  // Scores: a group of MWTOP_KEY_LANES lanes per key, over the keys up to
  // the step's position (the mask closes every later one).
  int keys = pos ? min(cap, (int)pos[0] + 1) : cap;
  int groups = blockDim.x / MWTOP_KEY_LANES;
  int g = threadIdx.x / MWTOP_KEY_LANES, sub = threadIdx.x % MWTOP_KEY_LANES;
  float mx = MWTOP_NEG_INF;
  float last = -1.f;
  for (int j0 = 0; j0 < keys; j0 += groups) {
    int j = j0 + g;
    float m = j < keys ? mask[j] : MWTOP_NEG_INF;
    bool open = !(isinf(m) && m < 0.f);
    float acc = 0.f;
    if (open) {
      const float* kj = kb + (unsigned long long)j * hd;
      if (vec) {
        const float4* k4 = (const float4*)kj;
        const float4* q4 = (const float4*)qs;
#pragma unroll 4
        for (int i = sub; i < hd / 4; i += MWTOP_KEY_LANES) {
          float4 a = k4[i], c = q4[i];
          acc = fmaf(c.x, a.x, acc);
          acc = fmaf(c.y, a.y, acc);
          acc = fmaf(c.z, a.z, acc);
          acc = fmaf(c.w, a.w, acc);
        }
      } else {
#pragma unroll 4
        for (int d = sub; d < hd; d += MWTOP_KEY_LANES) acc = fmaf(qs[d], kj[d], acc);
      }
    }
    // The group's sum (whole warps run this loop; closed keys add zeros).
    for (int o = MWTOP_KEY_LANES / 2; o > 0; o >>= 1)
      acc += __shfl_xor_sync(0xffffffff, acc, o, 32);
    float sc = MWTOP_NEG_INF;
    if (open) {
      sc = (softcap > 0.f ? softcap * tanhf(acc) : acc) + m;
      last = (float)j;
    }
    if (j < keys && sub == 0) s[j] = sc;
    mx = fmaxf(mx, sc);
  }
  mx = mwtop_block_max(mx, red);
  int end = (int)mwtop_block_max(last, red) + 1;  // past the last open key
  float sum = 0.f;
  for (int j = threadIdx.x; j < end; j += blockDim.x) {
    float sc = s[j];
    float e = (isinf(sc) && sc < 0.f) ? 0.f : expf(sc - mx);
    s[j] = e;
    sum += e;
  }
  sum = mwtop_block_sum(sum, red);
  // Weights times values: `parts` threads per dim (or float4 of dims),
  // each over every parts-th key below `end`, summed in shared memory.
  // Keys below `end` are all written positions, so a weight of 0 adds 0.
  int p = threadIdx.x / tp;
  if (p < parts) {
    if (vec) {
      int d4 = threadIdx.x - p * tp;
      float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 4
      for (int j = p; j < end; j += parts) {
        float w = s[j];
        float4 x = ((const float4*)(vb + (unsigned long long)j * hd))[d4];
        acc.x = fmaf(w, x.x, acc.x);
        acc.y = fmaf(w, x.y, acc.y);
        acc.z = fmaf(w, x.z, acc.z);
        acc.w = fmaf(w, x.w, acc.w);
      }
      ((float4*)(partial + p * hd))[d4] = acc;
    } else {
      int step = parts == 1 ? (int)blockDim.x : hd;
      for (int d = threadIdx.x - p * hd; d < hd; d += step) {
        float acc = 0.f;
#pragma unroll 4
        for (int j = p; j < end; j += parts) acc = fmaf(s[j], vb[(unsigned long long)j * hd + d], acc);
        partial[p * hd + d] = acc;
      }
    }
  }
  __syncthreads();
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float acc = 0.f;
    for (int i = 0; i < parts; ++i) acc += partial[i * hd + d];
    out[(unsigned long long)bh * hd + d] = acc / sum;
  }
}
