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

// Programmatic dependent launch (sm_90 and later; the host launches a
// kernel this way only from the module compiled for such a device): a
// kernel lets the next one start as soon as all its blocks run, and the
// next waits for it to finish (and its writes to land) only where it first
// reads what the one before wrote. A GEMV loads its first weights before
// that wait, so a decode step's chain of kernels overlaps each weight
// fetch with the tail of the kernel before. Every kernel launched so
// waits before it reads another kernel's output or writes anything.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define MWTOP_LET_NEXT_START() asm volatile("griddepcontrol.launch_dependents;" ::: "memory")
#define MWTOP_AFTER_PREVIOUS() asm volatile("griddepcontrol.wait;" ::: "memory")
#else
#define MWTOP_LET_NEXT_START()
#define MWTOP_AFTER_PREVIOUS()
#endif

// act(gate) for the gated MLPs: SiLU, or GELU's tanh form, candle's
// `usilu`/`ugelu` formulas.
__device__ __forceinline__ float mwtop_gate_act(float g, int gelu) {
  if (gelu) {
    float g3 = g * g * g;
    float alpha = g + 0.044715f * g3;
    return 0.5f * g * (1.0f + tanhf((float)(1.12837916709551257390 * 0.70710678118654752440) * alpha));
  }
  return g / (1.0f + expf(-g));
}

// IEEE half -> float, exact, subnormals included; bf16 -> f32 is the bits
// shifted up.
__device__ __forceinline__ float mwtop_widen(unsigned short h, int is_bf16) {
  if (is_bf16) return __uint_as_float(((unsigned int)h) << 16);
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

// y (n, rows) = add + in(x) W^T for n <= MWTOP_GEMV_ROWS activation rows, W
// (rows, cols) f32 or 16-bit floats (bf16 or f16, widened exactly), every
// sum f32: each weight row is read once for all n, a warp per row. Every
// row's sum runs in the same order whatever n is, so a row of a batch
// equals that row decoded alone.
#define MWTOP_GEMV_ROWS 8
// 16-byte loads of W a lane issues before using them (the host may set
// another number when it compiles the kernels, to measure it).
#ifndef MWTOP_GEMV_BURST
#define MWTOP_GEMV_BURST 8
#endif

#ifndef MWTOP_GEMV_EXACT_N
#define MWTOP_GEMV_EXACT_N 1
#endif

// What the product's input is, in(x):
#define MWTOP_IN_PLAIN 0 // x (n, cols)
#define MWTOP_IN_NORM 1  // RMSNorm(x) * g, g = aux (cols)
#define MWTOP_IN_SILU 2  // silu(gate) * up [* mask]: x (n, 2 cols) gate then up, mask = aux (n, cols)
#define MWTOP_IN_GELU 3  // the same with GELU (tanh)

// The two weight formats: a 16-byte chunk of f32 (4 weights) or of 16-bit
// floats (8 weights), widened to f32.
struct MwtopW32 {
  typedef float4 Chunk;
  enum { PER = 4, BYTES = 4 };
  __device__ static Chunk zero() { return make_float4(0.f, 0.f, 0.f, 0.f); }
  __device__ static void widen(Chunk c, float* ws, int) {
    ws[0] = c.x, ws[1] = c.y, ws[2] = c.z, ws[3] = c.w;
  }
  __device__ static float one(const void* w, unsigned long long i, int) { return ((const float*)w)[i]; }
};
struct MwtopW16 {
  typedef uint4 Chunk;
  enum { PER = 8, BYTES = 2 };
  __device__ static Chunk zero() { return make_uint4(0u, 0u, 0u, 0u); }
  __device__ static void widen(Chunk c, float* ws, int is_bf16) {
    unsigned int u[4] = {c.x, c.y, c.z, c.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      ws[2 * k] = mwtop_widen((unsigned short)(u[k] & 0xffffu), is_bf16);
      ws[2 * k + 1] = mwtop_widen((unsigned short)(u[k] >> 16), is_bf16);
    }
  }
  __device__ static float one(const void* w, unsigned long long i, int is_bf16) {
    return mwtop_widen(((const unsigned short*)w)[i], is_bf16);
  }
};

// in(x) of the block's n rows staged once in shared memory `sx` (n, cols)
// by all its threads: the norm's scale found once per block, the gated
// product formed once per block (block 0 also writes it to `tee_x`, the
// hook's slab row, when given), instead of each warp reading x from L2.
// Each thread issues MWTOP_STAGE_BURST 16-byte loads before using them
// (`xvec`: x, the mask and cols allow them), so staging costs a memory
// round trip or two, not one per element.
#define MWTOP_STAGE_BURST 4
__device__ void mwtop_stage(const float* x, int n, int cols, int mode, const float* aux,
    float eps, float* sx, float* tee_x, int xvec) {
  __shared__ float red[MWTOP_GEMV_ROWS][32];
  int tid = threadIdx.y * blockDim.x + threadIdx.x;
  int nt = blockDim.x * blockDim.y;
  int total = n * cols;
  bool tee = tee_x && blockIdx.x == 0;
  if (mode == MWTOP_IN_SILU || mode == MWTOP_IN_GELU) {
    int gelu = mode == MWTOP_IN_GELU;
    if (xvec) {
      int c4 = cols >> 2, total4 = total >> 2;
      const float4* x4 = (const float4*)x;
      for (int e0 = tid; e0 < total4; e0 += nt * MWTOP_STAGE_BURST) {
        float4 g[MWTOP_STAGE_BURST], u[MWTOP_STAGE_BURST], m[MWTOP_STAGE_BURST];
#pragma unroll
        for (int k = 0; k < MWTOP_STAGE_BURST; ++k) {
          int e = e0 + k * nt;
          if (e < total4) {
            int j = e / c4, c = e - j * c4;
            g[k] = x4[(unsigned long long)j * 2 * c4 + c];
            u[k] = x4[(unsigned long long)j * 2 * c4 + c4 + c];
            if (aux) m[k] = ((const float4*)aux)[e];
          }
        }
#pragma unroll
        for (int k = 0; k < MWTOP_STAGE_BURST; ++k) {
          int e = e0 + k * nt;
          if (e < total4) {
            float4 v = make_float4(mwtop_gate_act(g[k].x, gelu) * u[k].x,
                mwtop_gate_act(g[k].y, gelu) * u[k].y, mwtop_gate_act(g[k].z, gelu) * u[k].z,
                mwtop_gate_act(g[k].w, gelu) * u[k].w);
            if (aux) v = make_float4(v.x * m[k].x, v.y * m[k].y, v.z * m[k].z, v.w * m[k].w);
            ((float4*)sx)[e] = v;
            if (tee) ((float4*)tee_x)[e] = v;
          }
        }
      }
    } else {
      for (int e = tid; e < total; e += nt) {
        int j = e / cols, c = e - j * cols;
        const float* r = x + (unsigned long long)j * 2 * cols;
        float v = mwtop_gate_act(r[c], gelu) * r[cols + c];
        if (aux) v = v * aux[e];
        sx[e] = v;
        if (tee) tee_x[e] = v;
      }
    }
    __syncthreads();
    return;
  }
  if (xvec) {
    int total4 = total >> 2;
    const float4* x4 = (const float4*)x;
    for (int e0 = tid; e0 < total4; e0 += nt * MWTOP_STAGE_BURST) {
      float4 v[MWTOP_STAGE_BURST];
#pragma unroll
      for (int k = 0; k < MWTOP_STAGE_BURST; ++k) {
        int e = e0 + k * nt;
        if (e < total4) v[k] = x4[e];
      }
#pragma unroll
      for (int k = 0; k < MWTOP_STAGE_BURST; ++k) {
        int e = e0 + k * nt;
        if (e < total4) ((float4*)sx)[e] = v[k];
      }
    }
  } else {
    for (int e = tid; e < total; e += nt) sx[e] = x[e];
  }
  __syncthreads();
  if (mode != MWTOP_IN_NORM) return;
  float ss[MWTOP_GEMV_ROWS];
#pragma unroll
  for (int j = 0; j < MWTOP_GEMV_ROWS; ++j) {
    ss[j] = 0.f;
    if (j < n)
      for (int c = tid; c < cols; c += nt) {
        float v = sx[j * cols + c];
        ss[j] += v * v;
      }
  }
  int warp = tid >> 5, lane = tid & 31, warps = nt >> 5;
#pragma unroll
  for (int j = 0; j < MWTOP_GEMV_ROWS; ++j) {
    if (j < n) {
      float s = ss[j];
      for (int k = 16; k > 0; k >>= 1) s += __shfl_xor_sync(0xffffffff, s, k, 32);
      if (lane == 0) red[j][warp] = s;
    }
  }
  __syncthreads();
  float sc[MWTOP_GEMV_ROWS];
#pragma unroll
  for (int j = 0; j < MWTOP_GEMV_ROWS; ++j) {
    float s = 0.f;
    if (j < n)
      for (int w = 0; w < warps; ++w) s += red[j][w];
    sc[j] = rsqrtf(s / cols + eps);
  }
#pragma unroll
  for (int j = 0; j < MWTOP_GEMV_ROWS; ++j) {
    if (j < n)
      for (int c = tid; c < cols; c += nt) sx[j * cols + c] = sc[j] * sx[j * cols + c] * aux[c];
  }
  __syncthreads();
}

// Whether a lane issues all its loads of x (and of the norm's weight) for
// a burst of weights before the burst's products, and reads a row's
// squares for the norm with 16-byte loads in bursts: a few round trips to
// L2 per product instead of one per chunk. The products' sums run in the
// same order either way; the norm's sum of squares takes the float4 order,
// so its scale may round differently from the unheld one. (The host may set 0 when it compiles the
// kernels, to measure it.)
#ifndef MWTOP_GEMV_HOIST
#define MWTOP_GEMV_HOIST 1
#endif

// Unstaged (x too large for shared memory) RMSNorm: each warp finds the
// rows' scales itself, rsqrt(mean(x^2) + eps). `xvec`: x's rows are
// 16-byte aligned and cols a multiple of 4.
template <int NR>
__device__ void mwtop_rms_scales(const float* x, int n, int cols, int lane, float eps, float* sc,
    int xvec) {
#pragma unroll
  for (int j = 0; j < NR; ++j) {
    if (j >= n) break;
    const float* xj = x + (unsigned long long)j * cols;
    float ss = 0.f;
#if MWTOP_GEMV_HOIST
    if (xvec) {
      const float4* x4 = (const float4*)xj;
      int c4 = cols >> 2;
      for (int b0 = lane; b0 < c4; b0 += 32 * MWTOP_GEMV_BURST) {
        float4 v[MWTOP_GEMV_BURST];
#pragma unroll
        for (int k = 0; k < MWTOP_GEMV_BURST; ++k)
          v[k] = b0 + 32 * k < c4 ? x4[b0 + 32 * k] : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
        for (int k = 0; k < MWTOP_GEMV_BURST; ++k) {
          ss += v[k].x * v[k].x;
          ss += v[k].y * v[k].y;
          ss += v[k].z * v[k].z;
          ss += v[k].w * v[k].w;
        }
      }
    } else
#endif
      for (int c = lane; c < cols; c += 32) ss += xj[c] * xj[c];
    for (int k = 16; k > 0; k >>= 1) ss += __shfl_xor_sync(0xffffffff, ss, k, 32);
    sc[j] = rsqrtf(ss / cols + eps);
  }
}

// Elements 4i..4i+3 of input row xj (16-byte aligned), times sc * g where
// an unstaged norm applies.
__device__ __forceinline__ float4 mwtop_act4(const float* xj, const float* g, float sc, int i) {
  float4 a = ((const float4*)xj)[i];
  if (g) {
    float4 w = ((const float4*)g)[i];
    a = make_float4(sc * a.x * w.x, sc * a.y * w.y, sc * a.z * w.z, sc * a.w * w.w);
  }
  return a;
}

// The input the products read, in(x): staged in shared memory `sx` (see
// mwtop_stage), or x itself, with the unstaged norm's weight (`*g`) and
// each row's scale (`sc`) where a norm applies.
template <int NR>
__device__ __forceinline__ const float* mwtop_gemv_input(const float* x, int n, int cols,
    int mode, const float* aux, float eps, int staged, float* sx, float* tee_x, bool live,
    int lane, const float** g, float* sc, int xvec) {
#pragma unroll
  for (int j = 0; j < NR; ++j) sc[j] = 1.f;
  if (staged) {
    mwtop_stage(x, n, cols, mode, aux, eps, sx, tee_x, staged == 2);
    return sx;
  }
  if (mode == MWTOP_IN_NORM) {
    *g = aux;
    if (live) mwtop_rms_scales<NR>(x, n, cols, lane, eps, sc, xvec);
  }
  return x;
}

// Each row's lane sums reduced over the warp; lane 0 stores add + sum (the
// order the composed `residual + projection` adds in), also into `tee_y` (a
// hook's slab row, or the step's logits) when given.
template <int NR>
__device__ __forceinline__ void mwtop_gemv_store(float* acc, int n, int rows, int row, int lane,
    const float* add, float* y, float* tee_y) {
#pragma unroll
  for (int j = 0; j < NR; ++j) {
    if (j < n) {
      float a = acc[j];
      for (int k = 16; k > 0; k >>= 1) a += __shfl_xor_sync(0xffffffff, a, k, 32);
      unsigned long long at = (unsigned long long)j * rows + row;
      if (lane == 0) {
        float v = add ? add[at] + a : a;
        y[at] = v;
        if (tee_y) tee_y[at] = v;
      }
    }
  }
}

// One burst of a lane's weight chunks (i0, i0 + 32, ...) times in(x), into
// each row's sum: x read chunk by chunk as the products go.
template <class F, int NR>
__device__ __forceinline__ void mwtop_burst(const typename F::Chunk* qs, const float* src,
    const float* g, const float* sc, float* acc, int n, int cols, int nc, int i0, int is_bf16) {
#pragma unroll
  for (int u = 0; u < MWTOP_GEMV_BURST; ++u) {
    int i = i0 + 32 * u;
    if (i >= nc) break;
    float ws[F::PER];
    F::widen(qs[u], ws, is_bf16);
#pragma unroll
    for (int j = 0; j < NR; ++j) {
      if (j < n) {
        const float* xj = src + (unsigned long long)j * cols;
#pragma unroll
        for (int h = 0; h < F::PER / 4; ++h) {
          float4 a = mwtop_act4(xj, g, sc[j], i * (F::PER / 4) + h);
          acc[j] = fmaf(ws[4 * h], a.x, acc[j]);
          acc[j] = fmaf(ws[4 * h + 1], a.y, acc[j]);
          acc[j] = fmaf(ws[4 * h + 2], a.z, acc[j]);
          acc[j] = fmaf(ws[4 * h + 3], a.w, acc[j]);
        }
      }
    }
  }
}

// The same products in the same order, the burst's inputs loaded first:
// the norm's weight once, then each row's x, every load of a row issued
// before its products (one round trip to L2 per row, not one per chunk).
template <class F, int NR>
__device__ __forceinline__ void mwtop_burst_held(const typename F::Chunk* qs, const float* src,
    const float* g, const float* sc, float* acc, int n, int cols, int nc, int i0, int is_bf16) {
  const int P = F::PER / 4;
  int valid = (nc - i0 + 31) >> 5;
  if (valid > MWTOP_GEMV_BURST) valid = MWTOP_GEMV_BURST;
  const float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);
  float4 ga[MWTOP_GEMV_BURST * P];
  if (g) {
#pragma unroll
    for (int u = 0; u < MWTOP_GEMV_BURST; ++u)
#pragma unroll
      for (int h = 0; h < P; ++h)
        ga[u * P + h] = u < valid ? ((const float4*)g)[(i0 + 32 * u) * P + h] : zero;
  }
#pragma unroll
  for (int j = 0; j < NR; ++j) {
    if (j < n) {
      const float4* xj = (const float4*)(src + (unsigned long long)j * cols);
      float4 xa[MWTOP_GEMV_BURST * P];
#pragma unroll
      for (int u = 0; u < MWTOP_GEMV_BURST; ++u)
#pragma unroll
        for (int h = 0; h < P; ++h) xa[u * P + h] = u < valid ? xj[(i0 + 32 * u) * P + h] : zero;
#pragma unroll
      for (int u = 0; u < MWTOP_GEMV_BURST; ++u) {
        if (u < valid) {
          float ws[F::PER];
          F::widen(qs[u], ws, is_bf16);
#pragma unroll
          for (int h = 0; h < P; ++h) {
            float4 a = xa[u * P + h];
            if (g) {
              float4 w = ga[u * P + h];
              a = make_float4(sc[j] * a.x * w.x, sc[j] * a.y * w.y, sc[j] * a.z * w.z,
                  sc[j] * a.w * w.w);
            }
            acc[j] = fmaf(ws[4 * h], a.x, acc[j]);
            acc[j] = fmaf(ws[4 * h + 1], a.y, acc[j]);
            acc[j] = fmaf(ws[4 * h + 2], a.z, acc[j]);
            acc[j] = fmaf(ws[4 * h + 3], a.w, acc[j]);
          }
        }
      }
    }
  }
}

template <class F, int NR>
__device__ void mwtop_gemv(const void* w, const float* x, float* y, const float* add,
    const float* aux, float eps, int rows, int cols, int n, int is_bf16, int vec, int mode,
    int staged, float* tee_y, float* tee_x) {
  // staged: 0 no, 1 with 4-byte loads of x, 2 with 16-byte loads.
  extern __shared__ __align__(16) float sx[];
  typedef typename F::Chunk Chunk;
  // The one- and two-row builds take exactly their rows (the host picks
  // them so): a count known when compiling lets each row's loads issue
  // beside the other's, with no test of n between them. (The host may set
  // MWTOP_GEMV_EXACT_N 0 when it compiles the kernels, to measure it.)
  if (MWTOP_GEMV_EXACT_N && NR < MWTOP_GEMV_ROWS) n = NR;
  MWTOP_LET_NEXT_START();
  int row = blockIdx.x * blockDim.y + threadIdx.y;
  int lane = threadIdx.x;
  bool live = row < rows;
  int nc = cols / F::PER;
  const Chunk* wc = (const Chunk*)((const char*)w + (unsigned long long)(live ? row : 0) * cols * F::BYTES);
  // The first burst of this row's weights: they depend on no kernel before.
  Chunk qs[MWTOP_GEMV_BURST];
  if (vec) {
#pragma unroll
    for (int u = 0; u < MWTOP_GEMV_BURST; ++u) {
      int i = lane + 32 * u;
      qs[u] = live && i < nc ? wc[i] : F::zero();
    }
  }
  MWTOP_AFTER_PREVIOUS();
  const float* g = 0;
  float sc[NR];
  // Unstaged, vec means x's rows are 16-byte aligned.
  const float* src = mwtop_gemv_input<NR>(x, n, cols, mode, aux, eps, staged, sx, tee_x, live, lane,
      &g, sc, vec && !staged);
  if (!live) return;
  float acc[NR];
#pragma unroll
  for (int j = 0; j < NR; ++j) acc[j] = 0.f;
  if (vec) {
    // Each lane's sum runs over chunks lane, lane + 32, ... in order; a
    // burst of loads is in flight before its products.
    for (int i0 = lane;;) {
      // f32 weights only: for 16-bit ones the held inputs would take twice
      // the registers (205 against 122), halving the warps that stream a
      // large model's weights.
      if (MWTOP_GEMV_HOIST && F::PER == 4)
        mwtop_burst_held<F, NR>(qs, src, g, sc, acc, n, cols, nc, i0, is_bf16);
      else
        mwtop_burst<F, NR>(qs, src, g, sc, acc, n, cols, nc, i0, is_bf16);
      i0 += 32 * MWTOP_GEMV_BURST;
      if (i0 >= nc) break;
#pragma unroll
      for (int u = 0; u < MWTOP_GEMV_BURST; ++u) {
        int i = i0 + 32 * u;
        qs[u] = i < nc ? wc[i] : F::zero();
      }
    }
  } else {
    unsigned long long base = (unsigned long long)row * cols;
    for (int c = lane; c < cols; c += 32) {
      float wv = F::one(w, base + c, is_bf16);
#pragma unroll
      for (int j = 0; j < NR; ++j) {
        if (j < n) {
          const float* xj = src + (unsigned long long)j * cols;
          float a = g ? sc[j] * xj[c] * g[c] : xj[c];
          acc[j] = fmaf(wv, a, acc[j]);
        }
      }
    }
  }
  mwtop_gemv_store<NR>(acc, n, rows, row, lane, add, y, tee_y);
}

// Each kernel in three builds by the most rows it takes: the general one
// (up to MWTOP_GEMV_ROWS), and one for a single row and one for two (the
// A/B pair), which hold only those rows' sums and inputs in registers.
// The sums run in the same order in all three.
#define MWTOP_GEMV_KERNEL(NAME, F, WT, NR)                                                   \
  extern "C" __global__ void NAME(const WT* w, const float* x, float* y, const float* add,   \
      const float* aux, float eps, int rows, int cols, int n, int is_bf16, int vec, int mode, \
      int staged, float* tee_y, float* tee_x) {                                               \
    mwtop_gemv<F, NR>(w, x, y, add, aux, eps, rows, cols, n, is_bf16, vec, mode, staged,     \
        tee_y, tee_x);                                                                        \
  }
MWTOP_GEMV_KERNEL(mwtop_gemv32, MwtopW32, float, MWTOP_GEMV_ROWS)
MWTOP_GEMV_KERNEL(mwtop_gemv32_r1, MwtopW32, float, 1)
MWTOP_GEMV_KERNEL(mwtop_gemv32_r2, MwtopW32, float, 2)
MWTOP_GEMV_KERNEL(mwtop_gemv16, MwtopW16, unsigned short, MWTOP_GEMV_ROWS)
MWTOP_GEMV_KERNEL(mwtop_gemv16_r1, MwtopW16, unsigned short, 1)
MWTOP_GEMV_KERNEL(mwtop_gemv16_r2, MwtopW16, unsigned short, 2)
#undef MWTOP_GEMV_KERNEL

// GGUF's quantized blocks (ggml's formats, by their GGUF type ids), read
// as candle's CPU dequantization reads them: each weight is formed by the
// same f32 operations in the same order, each rounded alike (__fmul_rn and
// friends are never contracted into an fma), so it equals the CPU's weight
// to the bit. A "unit" is 32 consecutive weights of a row: a whole block
// of the 32-weight formats, a sub-block of the 256-weight ones.
#define MWTOP_Q4_0 2
#define MWTOP_Q4_1 3
#define MWTOP_Q5_0 6
#define MWTOP_Q5_1 7
#define MWTOP_Q8_0 8
#define MWTOP_Q4_K 12
#define MWTOP_Q5_K 13
#define MWTOP_Q6_K 14

__device__ __forceinline__ int mwtop_block_weights(int fmt) {
  return fmt == MWTOP_Q4_K || fmt == MWTOP_Q5_K || fmt == MWTOP_Q6_K ? 256 : 32;
}
__device__ __forceinline__ int mwtop_block_bytes(int fmt) {
  switch (fmt) {
    case MWTOP_Q4_0: return 18;
    case MWTOP_Q4_1: return 20;
    case MWTOP_Q5_0: return 22;
    case MWTOP_Q5_1: return 24;
    case MWTOP_Q8_0: return 34;
    case MWTOP_Q4_K: return 144;
    case MWTOP_Q5_K: return 176;
    default: return 210; // MWTOP_Q6_K
  }
}
// candle's get_scale_min_k4: the 6-bit scale and minimum of sub-block j.
__device__ __forceinline__ void mwtop_scale_min_k4(int j, const unsigned char* q, int* sc, int* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// Part p (0..3) of unit u of a row is 8 of its 32 weights. In the 4-bit
// and 5-bit 32-weight formats byte j holds weights j and j + 16, so part p
// is weights 4p..4p+3 and 16+4p..16+4p+3; elsewhere it is 8p..8p+7. A part
// is read in two steps, so that a lane's next loads are in flight while it
// multiplies: mwtop_part_load reads the bytes it needs into registers with
// the widest loads the format's alignment allows (a row starts at a
// multiple of its block size from a base aligned to 16 bytes; the host
// checks; a row's offset is whole rows), and mwtop_part_form forms the
// weights as candle's CPU code does.
struct MwtopRaw {
  unsigned int r[8];
};
__device__ __forceinline__ unsigned int mwtop_ld16(const unsigned char* p) {
  return *(const unsigned short*)p;
}
__device__ __forceinline__ unsigned int mwtop_ld16x2(const unsigned char* p) {
  return mwtop_ld16(p) | (mwtop_ld16(p + 2) << 16);
}
__device__ __forceinline__ unsigned int mwtop_ld32(const unsigned char* p) {
  return *(const unsigned int*)p;
}
__device__ __forceinline__ void mwtop_ld64(const unsigned char* p, unsigned int* r) {
  uint2 v = *(const uint2*)p;
  r[0] = v.x, r[1] = v.y;
}
// f16 -> f32 in hardware (exact for every f16 value).
__device__ __forceinline__ float mwtop_h2f(unsigned int h) {
  float f;
  unsigned short x = (unsigned short)h;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x));
  return f;
}
// Byte k of the bytes held in r from word w on.
__device__ __forceinline__ int mwtop_byte(const unsigned int* r, int w, int k) {
  return (r[w + (k >> 2)] >> (8 * (k & 3))) & 0xff;
}

template <int F>
__device__ __forceinline__ void mwtop_part_load(const unsigned char* row, int u, int p, MwtopRaw* q) {
  unsigned int* r = q->r;
  if (F == MWTOP_Q4_0) {
    const unsigned char* b = row + (unsigned long long)u * 18;
    r[0] = mwtop_ld16(b);
    r[1] = mwtop_ld16x2(b + 2 + 4 * p);
  } else if (F == MWTOP_Q4_1) {
    const unsigned char* b = row + (unsigned long long)u * 20;
    r[0] = mwtop_ld32(b);
    r[1] = mwtop_ld32(b + 4 + 4 * p);
  } else if (F == MWTOP_Q5_0) {
    const unsigned char* b = row + (unsigned long long)u * 22;
    r[0] = mwtop_ld16(b);
    r[1] = mwtop_ld16x2(b + 2);
    r[2] = mwtop_ld16x2(b + 6 + 4 * p);
  } else if (F == MWTOP_Q5_1) {
    const unsigned char* b = row + (unsigned long long)u * 24;
    r[0] = mwtop_ld32(b);
    r[1] = mwtop_ld32(b + 4);
    r[2] = mwtop_ld32(b + 8 + 4 * p);
  } else if (F == MWTOP_Q8_0) {
    const unsigned char* b = row + (unsigned long long)u * 34;
    r[0] = mwtop_ld16(b);
    r[1] = mwtop_ld16x2(b + 2 + 8 * p);
    r[2] = mwtop_ld16x2(b + 6 + 8 * p);
  } else if (F == MWTOP_Q4_K || F == MWTOP_Q5_K) {
    int sub = u & 7;
    const unsigned char* b = row + (unsigned long long)(u >> 3) * (F == MWTOP_Q4_K ? 144 : 176);
    r[0] = mwtop_ld32(b);
    r[1] = mwtop_ld32(b + 4);
    r[2] = mwtop_ld32(b + 8);
    r[3] = mwtop_ld32(b + 12);
    mwtop_ld64(b + (F == MWTOP_Q4_K ? 16 : 48) + 32 * (sub >> 1) + 8 * p, r + 4);
    if (F == MWTOP_Q5_K) mwtop_ld64(b + 16 + 8 * p, r + 6);
  } else { // MWTOP_Q6_K
    int sub = u & 7, idx = sub >> 2, which = sub & 3;
    const unsigned char* b = row + (unsigned long long)(u >> 3) * 210;
    r[0] = mwtop_ld16(b + 208);
    r[1] = b[192 + 8 * idx + 2 * which + (p >> 1)];
    const unsigned char* ql = b + 64 * idx + 32 * (which & 1) + 8 * p;
    const unsigned char* qh = b + 128 + 32 * idx + 8 * p;
    r[2] = mwtop_ld16x2(ql);
    r[3] = mwtop_ld16x2(ql + 4);
    r[4] = mwtop_ld16x2(qh);
    r[5] = mwtop_ld16x2(qh + 4);
  }
}

template <int F>
__device__ __forceinline__ void mwtop_part_form(const MwtopRaw* q, int u, int p, float* w) {
  const unsigned int* r = q->r;
  if (F == MWTOP_Q4_0 || F == MWTOP_Q4_1) {
    float d = mwtop_h2f(r[0]);
    float m = F == MWTOP_Q4_1 ? mwtop_h2f(r[0] >> 16) : 0.f;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      int v = mwtop_byte(r, 1, k);
      if (F == MWTOP_Q4_0) {
        w[k] = __fmul_rn((float)((v & 15) - 8), d);
        w[k + 4] = __fmul_rn((float)((v >> 4) - 8), d);
      } else {
        w[k] = __fadd_rn(__fmul_rn((float)(v & 15), d), m);
        w[k + 4] = __fadd_rn(__fmul_rn((float)(v >> 4), d), m);
      }
    }
  } else if (F == MWTOP_Q5_0 || F == MWTOP_Q5_1) {
    float d = mwtop_h2f(r[0]);
    float m = F == MWTOP_Q5_1 ? mwtop_h2f(r[0] >> 16) : 0.f;
    unsigned int qh = r[1];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      int j = 4 * p + k;
      int v = mwtop_byte(r, 2, k);
      int h0 = ((qh >> j) << 4) & 0x10;
      int h1 = (qh >> (j + 12)) & 0x10;
      if (F == MWTOP_Q5_0) {
        w[k] = __fmul_rn((float)(((v & 15) | h0) - 16), d);
        w[k + 4] = __fmul_rn((float)(((v >> 4) | h1) - 16), d);
      } else {
        w[k] = __fadd_rn(__fmul_rn((float)((v & 15) | h0), d), m);
        w[k + 4] = __fadd_rn(__fmul_rn((float)((v >> 4) | h1), d), m);
      }
    }
  } else if (F == MWTOP_Q8_0) {
    float d = mwtop_h2f(r[0]);
#pragma unroll
    for (int k = 0; k < 8; ++k) w[k] = __fmul_rn((float)(signed char)mwtop_byte(r, 1, k), d);
  } else if (F == MWTOP_Q4_K || F == MWTOP_Q5_K) {
    int sub = u & 7;
    float d = mwtop_h2f(r[0]), dmin = mwtop_h2f(r[0] >> 16);
    unsigned char scales[12];
#pragma unroll
    for (int k = 0; k < 12; ++k) scales[k] = (unsigned char)mwtop_byte(r, 1, k);
    int sc, mn;
    mwtop_scale_min_k4(sub, scales, &sc, &mn);
    float d1 = __fmul_rn(d, (float)sc), m1 = __fmul_rn(dmin, (float)mn);
    int shift = (sub & 1) * 4;
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      float v = (float)((mwtop_byte(r, 4, k) >> shift) & 0xF);
      if (F == MWTOP_Q5_K && ((mwtop_byte(r, 6, k) >> sub) & 1)) v = __fadd_rn(v, 16.f);
      w[k] = __fsub_rn(__fmul_rn(d1, v), m1);
    }
  } else { // MWTOP_Q6_K
    int which = u & 3;
    float ds = __fmul_rn(mwtop_h2f(r[0]), (float)(signed char)r[1]);
    int shift = which >= 2 ? 4 : 0;
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      int v = (((mwtop_byte(r, 2, k) >> shift) & 0xF) | (((mwtop_byte(r, 4, k) >> (2 * which)) & 3) << 4)) - 32;
      w[k] = __fmul_rn(ds, (float)v);
    }
  }
}

// The float4 indices (within the row) of the x elements part p of unit u
// multiplies: i0 for its weights 0..3, i1 for 4..7.
template <int F>
__device__ __forceinline__ void mwtop_part_x(int u, int p, int* i0, int* i1) {
  if (F == MWTOP_Q4_0 || F == MWTOP_Q4_1 || F == MWTOP_Q5_0 || F == MWTOP_Q5_1) {
    *i0 = 8 * u + p;
    *i1 = 8 * u + 4 + p;
  } else {
    *i0 = 8 * u + 2 * p;
    *i1 = 8 * u + 2 * p + 1;
  }
}

// Blocks (rows, cols / block weights) of format F into f32 out (rows,
// cols): a thread per part, its 8 weights formed as the GEMV forms them.
template <int F>
__device__ void mwtop_dequant_t(const unsigned char* w, float* out, long long rows, int cols) {
  int parts = cols / 8;
  unsigned long long row_bytes = (unsigned long long)(cols / mwtop_block_weights(F)) * mwtop_block_bytes(F);
  long long total = rows * parts;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (long long)gridDim.x * blockDim.x) {
    long long r = i / parts;
    int k = (int)(i - r * parts), u = k >> 2, p = k & 3;
    MwtopRaw raw;
    mwtop_part_load<F>(w + r * row_bytes, u, p, &raw);
    float ws[8];
    mwtop_part_form<F>(&raw, u, p, ws);
    int i0, i1;
    mwtop_part_x<F>(u, p, &i0, &i1);
    float4* o = (float4*)(out + r * cols);
    o[i0] = make_float4(ws[0], ws[1], ws[2], ws[3]);
    o[i1] = make_float4(ws[4], ws[5], ws[6], ws[7]);
  }
}

extern "C" __global__ void mwtop_dequant(const unsigned char* w, float* out, int fmt,
    long long rows, int cols) {
  MWTOP_LET_NEXT_START();
  MWTOP_AFTER_PREVIOUS();
#define MWTOP_DEQUANT_CASE(F) \
  case F: mwtop_dequant_t<F>(w, out, rows, cols); break;
  switch (fmt) {
    MWTOP_DEQUANT_CASE(MWTOP_Q4_0)
    MWTOP_DEQUANT_CASE(MWTOP_Q4_1)
    MWTOP_DEQUANT_CASE(MWTOP_Q5_0)
    MWTOP_DEQUANT_CASE(MWTOP_Q5_1)
    MWTOP_DEQUANT_CASE(MWTOP_Q8_0)
    MWTOP_DEQUANT_CASE(MWTOP_Q4_K)
    MWTOP_DEQUANT_CASE(MWTOP_Q5_K)
    MWTOP_DEQUANT_CASE(MWTOP_Q6_K)
  }
#undef MWTOP_DEQUANT_CASE
}

// Parts a lane loads before forming any of them: its units u, u + 8, ...
// (up to MWTOP_GEMVQ_BURST of them), so that a large row's bytes stream
// with several loads in flight per lane instead of one.
#ifndef MWTOP_GEMVQ_BURST
#define MWTOP_GEMVQ_BURST 8
#endif
template <int F>
__device__ __forceinline__ void mwtop_parts_load(const unsigned char* wr, int u0, int units, int p,
    MwtopRaw* raw) {
#pragma unroll
  for (int k = 0; k < MWTOP_GEMVQ_BURST; ++k)
    if (u0 + 8 * k < units) mwtop_part_load<F>(wr, u0 + 8 * k, p, &raw[k]);
}

// mwtop_gemv over blocks of format F: a warp per weight row, four lanes
// per unit (8 weights each, see mwtop_part), the warp's eight unit slots
// over units slot, slot + 8, ... in order, each lane's sum in one order
// whatever n is (so a row of a batch equals that row alone, as in
// mwtop_gemv); x rows 16-byte aligned (or staged).
template <int F, int NR>
__device__ void mwtop_gemvq_t(const unsigned char* w, const float* x, float* y, const float* add,
    const float* aux, float eps, int rows, int cols, int n, int mode, int staged, float* tee_y,
    float* tee_x) {
  extern __shared__ __align__(16) float sx[];
  if (MWTOP_GEMV_EXACT_N && NR < MWTOP_GEMV_ROWS) n = NR; // as in mwtop_gemv
  MWTOP_LET_NEXT_START();
  int row = blockIdx.x * blockDim.y + threadIdx.y;
  int lane = threadIdx.x;
  bool live = row < rows;
  int row_bytes = (cols / mwtop_block_weights(F)) * mwtop_block_bytes(F);
  const unsigned char* wr = w + (unsigned long long)(live ? row : 0) * row_bytes;
  int units = cols / 32, slot = lane >> 2, p = lane & 3;
  // This lane's first burst of parts: the weights depend on no kernel before.
  MwtopRaw raw[MWTOP_GEMVQ_BURST];
  if (live) mwtop_parts_load<F>(wr, slot, units, p, raw);
  MWTOP_AFTER_PREVIOUS();
  const float* g = 0;
  float sc[NR];
  // Unstaged, x's rows are 16-byte aligned (the host checks).
  const float* src = mwtop_gemv_input<NR>(x, n, cols, mode, aux, eps, staged, sx, tee_x, live, lane,
      &g, sc, 1);
  if (!live) return;
  float acc[NR];
#pragma unroll
  for (int j = 0; j < NR; ++j) acc[j] = 0.f;
  for (int u0 = slot; u0 < units; u0 += 8 * MWTOP_GEMVQ_BURST) {
#pragma unroll
    for (int k = 0; k < MWTOP_GEMVQ_BURST; ++k) {
      int u = u0 + 8 * k;
      if (u >= units) break;
      float ws[8];
      int i0, i1;
      mwtop_part_form<F>(&raw[k], u, p, ws);
      mwtop_part_x<F>(u, p, &i0, &i1);
#pragma unroll
      for (int j = 0; j < NR; ++j) {
        if (j < n) {
          const float* xj = src + (unsigned long long)j * cols;
          float4 a = mwtop_act4(xj, g, sc[j], i0);
          float4 c = mwtop_act4(xj, g, sc[j], i1);
          acc[j] = fmaf(ws[0], a.x, acc[j]);
          acc[j] = fmaf(ws[1], a.y, acc[j]);
          acc[j] = fmaf(ws[2], a.z, acc[j]);
          acc[j] = fmaf(ws[3], a.w, acc[j]);
          acc[j] = fmaf(ws[4], c.x, acc[j]);
          acc[j] = fmaf(ws[5], c.y, acc[j]);
          acc[j] = fmaf(ws[6], c.z, acc[j]);
          acc[j] = fmaf(ws[7], c.w, acc[j]);
        }
      }
    }
    if (u0 + 8 * MWTOP_GEMVQ_BURST < units)
      mwtop_parts_load<F>(wr, u0 + 8 * MWTOP_GEMVQ_BURST, units, p, raw);
  }
  mwtop_gemv_store<NR>(acc, n, rows, row, lane, add, y, tee_y);
}

// A kernel per format (named by its GGUF type id, mwtop_gemvq<id>, so that
// each takes only the registers its format needs), in the same three
// builds by rows as mwtop_gemv32.
#define MWTOP_GEMVQ_KERNEL(NAME, F, NR)                                                          \
  extern "C" __global__ void NAME(const unsigned char* w, const float* x, float* y,             \
      const float* add, const float* aux, float eps, int rows, int cols, int n, int mode,        \
      int staged, float* tee_y, float* tee_x) {                                                  \
    mwtop_gemvq_t<F, NR>(w, x, y, add, aux, eps, rows, cols, n, mode, staged, tee_y, tee_x);     \
  }
#define MWTOP_GEMVQ_FORMAT(ID)                                      \
  MWTOP_GEMVQ_KERNEL(mwtop_gemvq##ID, ID, MWTOP_GEMV_ROWS)          \
  MWTOP_GEMVQ_KERNEL(mwtop_gemvq##ID##_r1, ID, 1)                   \
  MWTOP_GEMVQ_KERNEL(mwtop_gemvq##ID##_r2, ID, 2)
// The ids of MWTOP_Q4_0 ... MWTOP_Q6_K (token pasting needs the numbers).
MWTOP_GEMVQ_FORMAT(2)
MWTOP_GEMVQ_FORMAT(3)
MWTOP_GEMVQ_FORMAT(6)
MWTOP_GEMVQ_FORMAT(7)
MWTOP_GEMVQ_FORMAT(8)
MWTOP_GEMVQ_FORMAT(12)
MWTOP_GEMVQ_FORMAT(13)
MWTOP_GEMVQ_FORMAT(14)
#undef MWTOP_GEMVQ_FORMAT
#undef MWTOP_GEMVQ_KERNEL

// RMSNorm of each row of x (rows, cols) times w: one block of 256 threads
// per row (candle's gives a row of fewer than 1,024 one warp, which waits
// on its loads), the same formula: x * rsqrt(mean(x^2) + eps) * w.
extern "C" __global__ void mwtop_rmsnorm(const float* x, const float* w, float* y,
    int cols, float eps) {
  MWTOP_LET_NEXT_START();
  MWTOP_AFTER_PREVIOUS();
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
  MWTOP_LET_NEXT_START();
  MWTOP_AFTER_PREVIOUS();
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  long long r = i / dff;
  int j = (int)(i - r * dff);
  out[i] = mwtop_gate_act(x[r * 2 * dff + j], gelu) * x[r * 2 * dff + dff + j];
}

// One decode step's attention, a block per (row, query head):
// softmax(q k^T, capped as cap * tanh where the family caps) v over the
// cache buffer's open keys. Only those (the filled, in-window positions)
// are scored, and only values up to the last open
// key are read (a closed key's weight is exactly 0). Every phase issues its
// loads together, since a decode step is a chain of such kernels, each
// bound by its memory round trips: MWTOP_KEY_LANES lanes per key for the
// scores, float4 loads of keys and values where head_dim allows, scores in
// shared memory (`scratch`, cap per block, when they do not fit).
// q (b, heads, hd), rows q_stride apart, carries attention's scale (and
// 1 / cap) once rotated; k_new and v_new (b, kv_heads, hd), rows k_stride
// and v_stride apart, this token's key and value (views of one qkv product
// all three); the tables (positions, hd/2): scaled cos and sin for q, cos
// and sin for k, or null; k and v the caches (b, kv_heads, cap, hd); pos,
// the step's position on the device: the keys up to it are open, the last
// `window` of them where window > 0; out (b, heads * hd).
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

extern "C" __global__ void mwtop_decode_attention(const float* q, long long q_stride,
    const float* k_new, const float* v_new, long long k_stride, long long v_stride,
    const float* cos_q, const float* sin_q, const float* cos_k, const float* sin_k, float* k,
    float* v, float* scratch, float* out, int heads, int kv_heads, int cap, int hd,
    float softcap, int vec, int scores_shared, const unsigned int* pos, int window) {
  extern __shared__ __align__(16) float shared[];
  __shared__ float red[32];
  MWTOP_LET_NEXT_START();
  MWTOP_AFTER_PREVIOUS();
  // Threads per part of the weighted sum: a float4 of dims each (`vec`: the
  // host saw head_dim a multiple of 32, at most 4 per thread, and the
  // caches 16-byte aligned), or one dim.
  int width = vec ? 4 : 1;
  int tp = hd / width;
  int parts = (int)blockDim.x >= tp ? (int)blockDim.x / tp : 1;
  float* qs = shared;                 // hd
  float* kn = shared + hd;            // hd: this token's key
  float* vn = shared + 2 * hd;        // hd: this token's value
  float* partial = shared + 3 * hd;   // parts * hd
  int bh = blockIdx.x;
  float* s = scores_shared ? shared + 3 * hd + parts * hd : scratch + (unsigned long long)bh * cap;
  int b = bh / heads, h = bh % heads;
  int rep = heads / kv_heads;
  int kvh = h / rep;
  unsigned long long base = ((unsigned long long)b * kv_heads + kvh) * cap * hd;
  float* kb = k + base;
  float* vb = v + base;
  unsigned int at = pos[0];
  const float* qr = q + b * q_stride + (unsigned long long)h * hd;
  // With the tables, this token's q and k rotated here (candle's
  // non-interleaved `rope`: pairs (i, i + hd/2), q with the scaled pair),
  // and its k and v kept in shared memory for its own key; the block of
  // each kv head's first query head also stores them into the cache at the
  // position, which no other block of this step reads. Without, q comes
  // rotated and the cache holds the token's key and value already.
  bool fresh = cos_q != 0;
  if (fresh) {
    int half = hd / 2;
    const float* kr = k_new + b * k_stride + (unsigned long long)kvh * hd;
    const float* vr = v_new + b * v_stride + (unsigned long long)kvh * hd;
    unsigned long long t = (unsigned long long)at * half;
    for (int c = threadIdx.x; c < half; c += blockDim.x) {
      float co = cos_q[t + c], si = sin_q[t + c];
      float x1 = qr[c], x2 = qr[c + half];
      qs[c] = x1 * co - x2 * si;
      qs[c + half] = x1 * si + x2 * co;
      co = cos_k[t + c], si = sin_k[t + c];
      x1 = kr[c], x2 = kr[c + half];
      kn[c] = x1 * co - x2 * si;
      kn[c + half] = x1 * si + x2 * co;
      vn[c] = vr[c];
      vn[c + half] = vr[c + half];
    }
    __syncthreads();
    if (h % rep == 0 && (int)at < cap) {
      for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        kb[(unsigned long long)at * hd + d] = kn[d];
        vb[(unsigned long long)at * hd + d] = vn[d];
      }
    }
  } else {
    for (int d = threadIdx.x; d < hd; d += blockDim.x) qs[d] = qr[d];
    __syncthreads();
  }
  // Scores: a group of MWTOP_KEY_LANES lanes per key, over the keys up to
  // the step's position (the mask closes every later one).
  int keys = min(cap, (int)at + 1);
  int groups = blockDim.x / MWTOP_KEY_LANES;
  int g = threadIdx.x / MWTOP_KEY_LANES, sub = threadIdx.x % MWTOP_KEY_LANES;
  float mx = MWTOP_NEG_INF;
  float last = -1.f;
  for (int j0 = 0; j0 < keys; j0 += groups) {
    int j = j0 + g;
    // The step's mask: keys up to the position, inside the sliding window
    // where there is one (key j is seen from position p when j + w > p).
    float m = MWTOP_NEG_INF;
    if (j < keys && (window <= 0 || (long long)j + window > (long long)at)) m = 0.f;
    bool open = !(isinf(m) && m < 0.f);
    float acc = 0.f;
    if (open) {
      const float* kj = fresh && j == (int)at ? kn : kb + (unsigned long long)j * hd;
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
        const float* vj = fresh && j == (int)at ? vn : vb + (unsigned long long)j * hd;
        float4 x = ((const float4*)vj)[d4];
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
        for (int j = p; j < end; j += parts) {
          const float* vj = fresh && j == (int)at ? vn : vb + (unsigned long long)j * hd;
          acc = fmaf(s[j], vj[d], acc);
        }
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
