// Gated DeltaNet on the GPU: the chunked core (WY/UT form) forward and backward, and the
// full layer around it (projections, short conv + SiLU, L2 norm, beta and decay, gated
// RMSNorm, output projection), the math of layers/gated_deltanet.cpp.
//
// Core forward, per (batch, value head), chunks of L <= chunk_size tokens in order, with
// S [dv, dk] the state entering the chunk:
//   gam_i = sum_{r <= i} g_r,  Gam = exp(gam),  decay(i, j) = exp(gam_i - gam_j)  (j <= i)
//   A = strictly_lower(diag(beta) (K K^T o decay)),  T = (I + A)^-1
//   U = T diag(beta) V,  W = T diag(beta Gam) K,  Delta = U - W S^T
//   O = scale (diag(Gam) Q S^T + (Q K^T o decay) Delta)        (scale = dk^-0.5)
//   S' = Gam_{L-1} S + Delta^T diag(decay(L-1, .)) K
// and the state entering each chunk saved to chunk_states (what the backward reads).
// Only S carries from chunk to chunk, so three kernels: T, W and U per chunk (all chunks at
// once; T saved for the backward, which would otherwise invert it again); the state pass per
// slice of value columns (Delta = U - W S^T and S', two small products per chunk, in order; S
// in registers for bf16 storage); the output per chunk. The backward is split the same way
// (section "core backward").
//
// Operands live in shared memory in the storage type, whole chunk matrices, multiplied by
// smem_product (core/cuda/device_util.cuh): bf16 by ldmatrix + mma.sync m16n8k16 with fp32
// accumulation, fp32 by exact FMAs (the configuration the tests hold to fp32 tolerances);
// the state and the sums over the value dimension are fp32. The inversion runs in fp32
// (unit_lower_inverse) and T is rounded once.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "core/cuda/device_util.cuh"
#include "core/cuda/gemm.h"
#include "core/cuda/layers.h"

namespace hysim::cuda {

namespace {

constexpr int kThreads = 256;       // the layer's elementwise kernels
constexpr int kChunkThreads = 512;  // per-chunk kernels: 16 warps for the 16-24 tiles of a chunk product
constexpr int kStateThreads = 128;  // the state passes
constexpr int kStateCols = 32;      // value columns per block of a state pass
constexpr int kMaxChunk = 64;       // the per-chunk kernels' shared memory plans (Olmo Hybrid and FLA use 64)
static_assert(kMaxChunk <= 2 * kWarp, "load_gates scans a chunk with one warp, two values per lane");

struct GdnDims {
  int Tn, H, Hv, dk, dv, C, NC;
};

// T = (I + A)^-1 for A strictly lower triangular (L x L, row stride ld; what is stored on and
// above the diagonal is ignored), in place: on return Tm holds T with its unit diagonal and
// zeros above. In blocks of 16 rows: each diagonal block by forward substitution (a warp per
// block, a lane per column, the column in registers: rows in turn, each a sum over the rows
// above, with no barrier and no shared-memory round trip between rows; the block's other
// warps wait at the next barrier, so this chain is their time), then row block i from the
// rows above it, T_i,<i = -T_ii (A_i,<i T_<i,<i), two products through tmp [16,
// mma_stride(L)]. The chunk's two triangular solves then become products with T (tensor
// cores for bf16 storage) instead of L block-wide barrier steps. Every thread of the block
// calls it.
template <class T, int Threads>
__device__ void unit_lower_inverse(int L, float* Tm, int ld, float* tmp) {
  const int warp = int(threadIdx.x) / kWarp, lane = int(threadIdx.x) % kWarp, nb = (L + 15) / 16;
  const int lt = mma_stride(L);
  for (int blk = warp; blk < nb; blk += Threads / kWarp) {
    const int b0 = blk * 16, bs = min(16, L - b0), j = lane % 16;  // lanes j and j + 16 alike
    // col[r] = T_b(r, j) of the diagonal block: 0 above the diagonal, 1 on it, and below
    // T(r, j) = -sum_{c < r} A(r, c) T(c, j) (the terms c < j vanish with T(c, j)).
    float col[16];
#pragma unroll
    for (int r = 0; r < 16; ++r) {
      float acc0 = 0.f, acc1 = 0.f;  // two chains: half the dependent adds per row
#pragma unroll
      for (int c = 0; c < r; ++c) {
        const float a = r < bs ? Tm[(b0 + r) * ld + b0 + c] : 0.f;  // the same word for every lane
        if (c % 2) acc1 = fmaf(a, col[c], acc1); else acc0 = fmaf(a, col[c], acc0);
      }
      col[r] = r < j ? 0.f : r == j ? 1.f : -(acc0 + acc1);
    }
    __syncwarp();  // every lane has read its rows of A before any writes over them
    if (lane < 16 && j < bs)
#pragma unroll
      for (int r = 0; r < 16; ++r)
        if (r < bs) Tm[(b0 + r) * ld + b0 + j] = col[r];
  }
  // Above the diagonal blocks (not read by the substitution above): zeros.
  for_each_index<Threads>(L, L, [&](int r, int c) {
    if (c / 16 > r / 16) Tm[r * ld + c] = 0.f;
  });
  __syncthreads();
  for (int r0 = 16; r0 < L; r0 += 16) {
    const int bs = min(16, L - r0);
    block_product<T, Threads>(
        bs, r0, r0, [&](int m, int k) { return Tm[(r0 + m) * ld + k]; }, [&](int n, int k) { return Tm[k * ld + n]; },
        [&](int m, int n, float acc) { tmp[m * lt + n] = acc; });
    __syncthreads();
    block_product<T, Threads>(
        bs, r0, bs, [&](int m, int k) { return Tm[(r0 + m) * ld + r0 + k]; },
        [&](int n, int k) { return tmp[k * lt + n]; }, [&](int m, int n, float acc) { Tm[(r0 + m) * ld + n] = -acc; });
    __syncthreads();
  }
}

// ---- shared by the forward and backward kernels ------------------------------------

struct Unit {
  __device__ float operator()(int) const { return 1.f; }
};

// dst (rows_pad x cols_pad, row stride ld) = scale(r) src[r src_ld + c] inside rows x cols, 0
// outside. bf16 rows that allow it move 16 bytes (8 values) per copy, unscaled ones by cp.async
// (every copy of the thread in flight at once; the loads were the kernels' latency otherwise),
// scaled ones four loads at a time. dst is ready after publish() (or load_gates, which ends with one).
template <int Threads, class E, class S, class F>
__device__ void load_rows(E* dst, int ld, int rows_pad, int cols_pad, const S* src, int64_t src_ld, int rows,
                          int cols, F scale) {
  if constexpr (std::is_same_v<E, S> && std::is_same_v<E, bf16>) {
    if (cols % 8 == 0 && src_ld % 8 == 0 && aligned16(src)) {
      const int vc = cols_pad / 8, n = rows_pad * vc;  // cols_pad and ld are multiples of 8 (round16, tile_stride)
      if constexpr (std::is_same_v<F, Unit>) {
        for_each_index<Threads>(rows_pad, vc, [&](int r, int c8) {
          const int c = c8 * 8;
          const bool in = r < rows && c < cols;
          cp_async16(dst + r * ld + c, in ? src + r * src_ld + c : src, in ? 16 : 0);
        });
      } else {
        FlatIndex at(int(threadIdx.x), Threads, vc);  // (row, 8-column group) of vector i
        constexpr int kBatch = 4;
        for (int i0 = int(threadIdx.x); i0 < n; i0 += kBatch * Threads) {
          uint4 x[kBatch];
          int rr[kBatch], cc[kBatch];
#pragma unroll
          for (int u = 0; u < kBatch; ++u, at.advance()) {
            const int i = i0 + u * Threads, r = rr[u] = at.r, c = cc[u] = at.c * 8;
            x[u] = i < n && r < rows && c < cols ? *reinterpret_cast<const uint4*>(src + r * src_ld + c)
                                                 : make_uint4(0, 0, 0, 0);
          }
#pragma unroll
          for (int u = 0; u < kBatch; ++u) {
            const int i = i0 + u * Threads, r = rr[u], c = cc[u];
            if (i >= n) break;
            const float sr = r < rows ? scale(r) : 0.f;
            __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&x[u]);
#pragma unroll
            for (int j = 0; j < 4; ++j) {
              const float2 f = __bfloat1622float2(h[j]);
              h[j] = __floats2bfloat162_rn(f.x * sr, f.y * sr);
            }
            *reinterpret_cast<uint4*>(dst + r * ld + c) = x[u];
          }
        }
      }
      return;
    }
  }
  for_each_index<Threads>(rows_pad, cols_pad, [&](int r, int c) {
    dst[r * ld + c] = from_f32<E>(r < rows && c < cols ? scale(r) * to_f32(src[r * src_ld + c]) : 0.f);
  });
}

// load_rows (unscaled) of a tile whose padded width ColsPad is a compile-time constant and whose
// padded height rows_pad is at most MaxRows (the backward register state pass's per-chunk
// tiles): the copies unrolled, each one's row and column by a constant divisor (the general
// loop's index arithmetic and branches were about half of that pass's instructions; the forward
// pass stays on load_rows, whose registers let three blocks share an SM).
template <int Threads, int ColsPad, int MaxRows>
__device__ __forceinline__ void load_tile(bf16* dst, int ld, int rows_pad, const bf16* src, int64_t src_ld, int rows,
                                          int cols) {
  static_assert(ColsPad % 8 == 0, "whole 16-byte copies");
  if (cols % 8 == 0 && src_ld % 8 == 0 && aligned16(src)) {
    constexpr unsigned kVC = ColsPad / 8;
    constexpr int kIters = (MaxRows * int(kVC) + Threads - 1) / Threads;
#pragma unroll
    for (int u = 0; u < kIters; ++u) {
      const unsigned i = threadIdx.x + unsigned(u * Threads);
      const int r = int(i / kVC), c = int(i % kVC) * 8;
      if (r < rows_pad) {
        const bool in = r < rows && c < cols;
        cp_async16(dst + r * ld + c, in ? src + r * src_ld + c : src, in ? 16 : 0);
      }
    }
    return;
  }
  load_rows<Threads>(dst, ld, rows_pad, ColsPad, src, src_ld, rows, cols, Unit{});
}

// Completes this thread's cp.async copies (load_rows), then the block barrier that publishes
// them and every other shared-memory write.
__device__ __forceinline__ void publish() {
  cp_async_wait_all();
  __syncthreads();
}

// This thread's share of sum(a o b) over a rows x cols region of two matrices with the same
// row stride ld (the caller reduces over the block): bf16 rows 16 bytes at a time where cols
// and ld allow. Zero-padded regions may be summed whole.
template <int Threads, class E>
__device__ float dot_partial(const E* a, const E* b, int ld, int rows, int cols) {
  float s = 0.f;
  if constexpr (std::is_same_v<E, bf16>) {
    if (cols % 8 == 0 && ld % 8 == 0) {
      for_each_index<Threads>(rows, cols / 8, [&](int r, int c8) {
        const int off = r * ld + c8 * 8;
        const uint4 x = *reinterpret_cast<const uint4*>(a + off), y = *reinterpret_cast<const uint4*>(b + off);
        const __nv_bfloat162 *hx = reinterpret_cast<const __nv_bfloat162*>(&x),
                             *hy = reinterpret_cast<const __nv_bfloat162*>(&y);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const float2 fx = __bfloat1622float2(hx[j]), fy = __bfloat1622float2(hy[j]);
          s += fx.x * fy.x + fx.y * fy.y;
        }
      });
      return s;
    }
  }
  for_each_index<Threads>(rows, cols, [&](int r, int c) { s += to_f32(a[r * ld + c]) * to_f32(b[r * ld + c]); });
  return s;
}

// The chunk's gates: gam = cumsum(g) (a warp's scan, L <= 64: one thread adding 64 values in
// turn was ~1 us of every chunk step of the state passes), beta, Gam = exp(gam),
// dend = exp(gam_{L-1} - gam). Publishes the caller's pending load_rows too; ends with a barrier.
template <int Threads, class TG>
__device__ void load_gates(float* gam, float* bet, float* Gam, float* dend, const TG* g, const TG* beta, int64_t bt0,
                           int Hv, int hv, int L) {
  for (int i = int(threadIdx.x); i < L; i += Threads) {
    gam[i] = to_f32(g[(bt0 + i) * Hv + hv]);
    if (bet) bet[i] = to_f32(beta[(bt0 + i) * Hv + hv]);
  }
  publish();  // also the callers' load_rows
  if (threadIdx.x < kWarp) {  // inclusive scan, two values per lane, in a fixed order
    const int lane = int(threadIdx.x);
    float a = lane < L ? gam[lane] : 0.f, b = lane + kWarp < L ? gam[lane + kWarp] : 0.f;
    for (int off = 1; off < kWarp; off <<= 1) {
      const float ua = __shfl_up_sync(0xffffffffu, a, off), ub = __shfl_up_sync(0xffffffffu, b, off);
      if (lane >= off) a += ua, b += ub;
    }
    b += __shfl_sync(0xffffffffu, a, kWarp - 1);
    if (lane < L) gam[lane] = a;
    if (lane + kWarp < L) gam[lane + kWarp] = b;
  }
  __syncthreads();
  for (int i = int(threadIdx.x); i < L; i += Threads) Gam[i] = expf(gam[i]), dend[i] = expf(gam[L - 1] - gam[i]);
  __syncthreads();
}

// W = T diag(beta Gam) K into W [Cp, sk] (zero-padded) from T in Tb [Cp, sc] and K in shared
// memory; Kb holds diag(beta Gam) K. Ends with a barrier.
template <int Threads, class E>
__device__ void chunk_w(E* W, E* Kb, const E* Tb, const E* K, const float* bet, const float* Gam, int L, int dk, int Cp,
                        int sk, int sc) {
  const int dkp = round16(dk);
  for_each_index<Threads>(Cp, dkp, [&](int r, int e) {
    Kb[r * sk + e] = from_f32<E>(r < L ? bet[r] * Gam[r] * to_f32(K[r * sk + e]) : 0.f);
  });
  __syncthreads();
  smem_product<Threads>(Cp, dkp, Cp, smem_op(Tb, sc), smem_op_t(Kb, sk), [&](int r, int e, float acc) {
    W[r * sk + e] = from_f32<E>(r < L && e < dk ? acc : 0.f);
  });
  __syncthreads();
}

// The chunk's WY factors from K and the gates in shared memory: T = (I + A)^-1 (inverted in
// fp32 in Tf, tmp its scratch) rounded into Tb [Cp, sc], and W (chunk_w); both zero-padded.
// Ends with a barrier.
template <int Threads, class E>
__device__ void chunk_wy(E* Tb, E* W, E* Kb, float* Tf, float* tmp, const E* K, const float* gam, const float* bet,
                         const float* Gam, int L, int dk, int Cp, int sk, int sc, int ldf) {
  smem_product<Threads>(L, L, round16(dk), smem_op(K, sk), smem_op(K, sk), [&](int r, int c, float kk) {
    Tf[r * ldf + c] = c < r ? bet[r] * expf(gam[r] - gam[c]) * kk : 0.f;
  });
  __syncthreads();
  unit_lower_inverse<E, Threads>(L, Tf, ldf, tmp);
  for_each_index<Threads>(Cp, Cp, [&](int r, int c) {
    Tb[r * sc + c] = from_f32<E>(r < L && c < L ? Tf[r * ldf + c] : 0.f);
  });
  chunk_w<Threads>(W, Kb, Tb, K, bet, Gam, L, dk, Cp, sk, sc);  // its first barrier publishes Tb
}

// rows x cols of a shared-memory matrix (row stride ld) to global memory (row stride dst_ld).
template <int Threads, class E>
__device__ void store_rows(E* dst, int64_t dst_ld, const E* src, int ld, int rows, int cols) {
  constexpr int kPer = 16 / sizeof(E);  // 16 bytes per copy where the rows allow
  if (cols % kPer == 0 && dst_ld % kPer == 0 && ld % kPer == 0 && aligned16(dst, src)) {
    for_each_index<Threads>(rows, cols / kPer, [&](int r, int cv) {
      const int c = cv * kPer;
      *reinterpret_cast<uint4*>(dst + r * dst_ld + c) = *reinterpret_cast<const uint4*>(src + r * ld + c);
    });
    return;
  }
  for_each_index<Threads>(rows, cols, [&](int r, int c) { dst[r * dst_ld + c] = src[r * ld + c]; });
}

// A state pass's fp32 slice S [kStateCols, dk] (row stride sk) rounded into the product
// operand Sb (zero-padded) and saved to out [nv, dk] (chunk_states or the backward's dS).
template <class E>
__device__ void snapshot_state(E* Sb, E* out, const float* S, int sk, int nv, int dk) {
  const int dkp = round16(dk);
  for_each_index<kStateThreads>(kStateCols, dkp, [&](int e, int f) {
    const E x = from_f32<E>(e < nv && f < dk ? S[e * sk + f] : 0.f);
    Sb[e * sk + f] = x;
    if (e < nv && f < dk) out[e * dk + f] = x;
  });
}

// ---- core forward: three kernels ------------------------------------------------------

// Shared memory of gdn_fwd_wy_kernel (byte offsets) for dk, value tiles of bv, chunk C.
template <class E>
struct GdnWyLayout {
  int Cp, sk, sc, sv, ldf;
  size_t K, Kb, W, Tf, tmp, Tb, Tu, Vb, vec, total;
  __host__ __device__ GdnWyLayout(int dk, int bv, int C) {
    Cp = round16(C), sk = tile_stride(dk), sc = tile_stride(C), sv = tile_stride(bv), ldf = mma_stride(C);
    SmemCarve m;
    K = m.take<E>(Cp * sk), Kb = m.take<E>(Cp * sk), W = m.take<E>(Cp * sk);
    Tf = m.take<float>(C * ldf), tmp = m.take<float>(16 * ldf), Tb = m.take<E>(Cp * sc), Tu = m.take<E>(Cp * sc);
    Vb = m.take<E>(Cp * sv);
    vec = m.take<float>(4 * Cp);
    total = m.bytes;
  }
};

// Per chunk: T = (I + A)^-1 to t_inv ([B Hv, NC, C, C], L x L per chunk: an activation, the
// backward's), W = T diag(beta Gam) K and U = (T diag(beta)) V to scratch ([B Hv, Tn, dk], [B Hv,
// Tn, dv]), and gam = cumsum(g) ([B Hv, NC, Cp], zero-padded) for the state pass. K and the first value tile (all of V where it fits: value_tile) are in flight
// together with the gates, so the chunk waits for global memory once.
template <class E, class TG>
__global__ void __launch_bounds__(kChunkThreads)
    gdn_fwd_wy_kernel(E* __restrict__ t_inv, E* __restrict__ w_out, E* __restrict__ u_out, float* __restrict__ gam_out,
                      const E* __restrict__ k, const E* __restrict__ v, const TG* __restrict__ beta,
                      const TG* __restrict__ g, GdnDims d, int bv) {
  extern __shared__ __align__(128) unsigned char smem[];
  const GdnWyLayout<E> ly(d.dk, bv, d.C);
  const int sk = ly.sk, sc = ly.sc, sv = ly.sv, Cp = ly.Cp;
  E* K = reinterpret_cast<E*>(smem + ly.K);
  E* Kb = reinterpret_cast<E*>(smem + ly.Kb);
  E* W = reinterpret_cast<E*>(smem + ly.W);
  float* Tf = reinterpret_cast<float*>(smem + ly.Tf);
  float* tmp = reinterpret_cast<float*>(smem + ly.tmp);
  E* Tb = reinterpret_cast<E*>(smem + ly.Tb);
  E* Tu = reinterpret_cast<E*>(smem + ly.Tu);
  E* Vb = reinterpret_cast<E*>(smem + ly.Vb);
  float* gam = reinterpret_cast<float*>(smem + ly.vec);
  float *bet = gam + Cp, *Gam = bet + Cp, *dend = Gam + Cp;

  const int kc = blockIdx.x, hv = blockIdx.y, b = blockIdx.z, dk = d.dk, dkp = round16(dk);
  const int t0 = kc * d.C, L = min(d.C, d.Tn - t0);
  const int64_t bt0 = int64_t(b) * d.Tn + t0, head = int64_t(b) * d.Hv + hv;
  const int64_t QK = int64_t(d.H) * dk, DV = int64_t(d.Hv) * d.dv, qk_off = int64_t(hv / (d.Hv / d.H)) * dk;
  const E* vc = v + bt0 * DV + int64_t(hv) * d.dv;
  const auto load_value_tile = [&](int e0) {
    const int nv = min(bv, d.dv - e0);
    load_rows<kChunkThreads>(Vb, sv, Cp, round16(nv), vc + e0, DV, L, nv, Unit{});
  };
  load_rows<kChunkThreads>(K, sk, Cp, dkp, k + bt0 * QK + qk_off, QK, L, dk, Unit{});
  load_value_tile(0);
  load_gates<kChunkThreads>(gam, bet, Gam, dend, g, beta, bt0, d.Hv, hv, L);
  for (int i = int(threadIdx.x); i < Cp; i += kChunkThreads)  // for the state pass: [Cp] per chunk, 0 past L
    gam_out[(head * d.NC + kc) * Cp + i] = i < L ? gam[i] : 0.f;
  chunk_wy<kChunkThreads>(Tb, W, Kb, Tf, tmp, K, gam, bet, Gam, L, dk, Cp, sk, sc, ly.ldf);
  store_rows<kChunkThreads>(t_inv + (head * d.NC + kc) * d.C * d.C, d.C, Tb, sc, L, L);
  store_rows<kChunkThreads>(w_out + (head * d.Tn + t0) * dk, dk, W, sk, L, dk);
  for_each_index<kChunkThreads>(Cp, Cp, [&](int r, int c) {  // Tu = T diag(beta), rounded once
    Tu[r * sc + c] = from_f32<E>(r < L && c < L ? Tf[r * ly.ldf + c] * bet[c] : 0.f);
  });
  __syncthreads();
  E* ug = u_out + (head * d.Tn + t0) * d.dv;
  for (int e0 = 0; e0 < d.dv; e0 += bv) {
    const int nv = min(bv, d.dv - e0);
    if (e0 > 0) load_value_tile(e0), publish();
    for_each_tile<kChunkThreads>(L, nv, [&](int m0, int n0) {
      float acc[2][4] = {};
      warp_tile_mma(acc, smem_op(Tu, sc), m0, smem_op_t(Vb, sv), n0, Cp);
      store_tile_to(acc, m0, n0, L, nv, ug + e0, d.dv);
    });
    __syncthreads();
  }
}

// Shared memory of the state passes (byte offsets): the fp32 state slice S (dS backward) and
// its product operand Sb, then K, `tiles` [Cp, dk] operand matrices M (forward: W; backward:
// Q then W) and `tiles` [Cp, 32] value tiles X.
template <class E>
struct GdnStatePassLayout {
  int Cp, sk, sx;
  size_t S, Sb, K, M, X, vec, total;
  __host__ __device__ GdnStatePassLayout(int dk, int C, int tiles) {
    Cp = round16(C), sk = tile_stride(dk), sx = tile_stride(kStateCols);
    SmemCarve m;
    S = m.take<float>(kStateCols * sk), Sb = m.take<E>(kStateCols * sk);
    K = m.take<E>(Cp * sk), M = m.take<E>(tiles * Cp * sk), X = m.take<E>(tiles * Cp * sx);
    vec = m.take<float>(3 * Cp);
    total = m.bytes;
  }
};

// Per 32 value columns, chunks in order: chunk_states <- S; Delta = U - W S^T (over U in
// scratch); S <- Gam_{L-1} S + (diag(dend) Delta)^T K, S in fp32.
template <class E, class TG>
__global__ void __launch_bounds__(kStateThreads)
    gdn_fwd_state_kernel(E* __restrict__ chunk_states, E* __restrict__ ud, const E* __restrict__ k,
                         const E* __restrict__ w, const TG* __restrict__ g, GdnDims d) {
  extern __shared__ __align__(128) unsigned char smem[];
  const GdnStatePassLayout<E> ly(d.dk, d.C, 1);
  const int sk = ly.sk, sx = ly.sx, Cp = ly.Cp;
  float* S = reinterpret_cast<float*>(smem + ly.S);
  E* Sb = reinterpret_cast<E*>(smem + ly.Sb);
  E* K = reinterpret_cast<E*>(smem + ly.K);
  E* W = reinterpret_cast<E*>(smem + ly.M);
  E* X = reinterpret_cast<E*>(smem + ly.X);  // U, then diag(dend) Delta
  float* gam = reinterpret_cast<float*>(smem + ly.vec);
  float *Gam = gam + Cp, *dend = Gam + Cp;

  const int e0 = blockIdx.x * kStateCols, hv = blockIdx.y, b = blockIdx.z, dk = d.dk, dkp = round16(dk);
  const int nv = min(kStateCols, d.dv - e0);
  const int64_t head = int64_t(b) * d.Hv + hv, QK = int64_t(d.H) * dk, qk_off = int64_t(hv / (d.Hv / d.H)) * dk;
  for (int i = int(threadIdx.x); i < kStateCols * sk; i += kStateThreads) S[i] = 0.f;

  for (int kc = 0; kc < d.NC; ++kc) {
    const int t0 = kc * d.C, L = min(d.C, d.Tn - t0);
    const int64_t bt0 = int64_t(b) * d.Tn + t0;
    E* udc = ud + (head * d.Tn + t0) * d.dv + e0;
    load_rows<kStateThreads>(K, sk, Cp, dkp, k + bt0 * QK + qk_off, QK, L, dk, Unit{});
    load_rows<kStateThreads>(W, sk, Cp, dkp, w + (head * d.Tn + t0) * dk, dk, L, dk, Unit{});
    load_rows<kStateThreads>(X, sx, Cp, kStateCols, udc, d.dv, L, nv, Unit{});
    load_gates<kStateThreads>(gam, nullptr, Gam, dend, g, (const TG*)nullptr, bt0, d.Hv, hv, L);
    snapshot_state(Sb, chunk_states + (head * d.NC + kc) * d.dv * dk + int64_t(e0) * dk, S, sk, nv, dk);
    __syncthreads();
    smem_product<kStateThreads>(Cp, kStateCols, dkp, smem_op(W, sk), smem_op(Sb, sk), [&](int r, int e, float acc) {
      float x = 0.f;
      if (r < L && e < nv) {
        const float delta = to_f32(X[r * sx + e]) - acc;
        udc[int64_t(r) * d.dv + e] = from_f32<E>(delta);
        x = dend[r] * delta;
      }
      X[r * sx + e] = from_f32<E>(x);
    });
    __syncthreads();
    const float Gam_end = Gam[L - 1];
    smem_product<kStateThreads>(kStateCols, dkp, Cp, smem_op_t(X, sx), smem_op_t(K, sk),
                                [&](int e, int f, float acc) { S[e * sk + f] = Gam_end * S[e * sk + f] + acc; });
    __syncthreads();
  }
}

// ---- register state passes: helpers of the forward and backward kernels ----------------
// A warp holds 16 rows e of a state slice [e, f] as mma C fragments: n8 tile j holds columns
// f = 8 j .. 8 j + 7, a lane the values at rows gq, gq + 8 and columns 2 t, 2 t + 1 (gq = lane
// / 4, t = lane % 4).

// A register pass block's place: value columns e0 .. e0 + cols of value head hv, batch b; the
// warp's 16 columns from ew (nv of them inside dv, <= 0 for a warp past dv); head offsets.
struct StateRegsBlock {
  int e0, ew, hv, b, nv_block, nv;
  int64_t head, QK, qk_off;
  __device__ StateRegsBlock(const GdnDims& d, int cols) {
    e0 = int(blockIdx.x) * cols, ew = int(threadIdx.x) / kWarp * 16, hv = int(blockIdx.y), b = int(blockIdx.z);
    nv_block = min(cols, d.dv - e0), nv = min(16, d.dv - e0 - ew);
    head = int64_t(b) * d.Hv + hv, QK = int64_t(d.H) * d.dk, qk_off = int64_t(hv / (d.Hv / d.H)) * d.dk;
  }
};

// Chunk kc's gam (Cp floats, zero-padded, from the W/U or prepare kernel) into G by cp.async.
template <int Threads>
__device__ __forceinline__ void load_chunk_gam(float* G, const float* gam, int64_t head, const GdnDims& d, int kc,
                                               int Cp) {
  const float* src = gam + (head * d.NC + kc) * Cp;  // Cp floats per chunk: 16-byte aligned rows
  for (int i = int(threadIdx.x); i < Cp / 4; i += Threads) cp_async16(G + 4 * i, src + 4 * i, 16);
}

// The warp's rows e < nv, columns f < dk of the state, rounded to bf16, to dst (row stride dk).
template <int NF>
__device__ __forceinline__ void store_state_rows(bf16* dst, const float (&S)[NF][4], int nv, int dk) {
  const int lane = int(threadIdx.x) % kWarp, gq = lane / 4, t = lane % 4;
  if (nv == 16 && dk == 8 * NF) {  // whole rows (dk a multiple of 16): bf16 pairs, no tests
    bf16* p = dst + gq * dk + 2 * t;
#pragma unroll
    for (int j = 0; j < NF; ++j)
#pragma unroll
      for (int h = 0; h < 2; ++h)
        *reinterpret_cast<__nv_bfloat162*>(p + 8 * h * dk + 8 * j) =
            __floats2bfloat162_rn(S[j][2 * h], S[j][2 * h + 1]);
    return;
  }
#pragma unroll
  for (int j = 0; j < NF; ++j)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int e = gq + 8 * h, f = 8 * j + 2 * t;
      if (e >= nv || f >= dk) continue;
      if (f + 1 < dk && dk % 2 == 0) {
        *reinterpret_cast<__nv_bfloat162*>(dst + e * dk + f) = __floats2bfloat162_rn(S[j][2 * h], S[j][2 * h + 1]);
      } else {
        dst[e * dk + f] = from_f32<bf16>(S[j][2 * h]);
        if (f + 1 < dk) dst[e * dk + f + 1] = from_f32<bf16>(S[j][2 * h + 1]);
      }
    }
}

// X^T for rows r < Cp of a shared-memory tile X [r, e] (row stride ld, the warp's 16 columns
// from X): as C fragments with n8 tile j holding r = 8 j ...
template <int NR>
__device__ __forceinline__ void load_transposed(float (&D)[NR][4], const bf16* X, int ld, int Cp) {
  const int lane = int(threadIdx.x) % kWarp, gq = lane / 4, t = lane % 4;
#pragma unroll
  for (int j = 0; j < NR; ++j) {
    if (8 * j >= Cp) break;
    const int r = 8 * j + 2 * t;
    D[j][0] = to_f32(X[r * ld + gq]), D[j][1] = to_f32(X[(r + 1) * ld + gq]);
    D[j][2] = to_f32(X[r * ld + gq + 8]), D[j][3] = to_f32(X[(r + 1) * ld + gq + 8]);
  }
}

// The warp's 16 columns of L rows of a shared-memory tile (row stride ld) to global memory
// (row stride dst_ld); nv < 16 columns at the right edge of the value dimension.
__device__ __forceinline__ void store_warp_columns(bf16* dst, int64_t dst_ld, const bf16* src, int ld, int L, int nv) {
  const int lane = int(threadIdx.x) % kWarp;
  if (nv == 16 && dst_ld % 8 == 0 && aligned16(dst)) {
    for (int i = lane; i < 2 * L; i += kWarp) {
      const int r = i / 2, c = (i % 2) * 8;
      *reinterpret_cast<uint4*>(dst + int64_t(r) * dst_ld + c) = *reinterpret_cast<const uint4*>(src + r * ld + c);
    }
  } else {
    for (int i = lane; i < L * nv; i += kWarp) dst[int64_t(i / nv) * dst_ld + i % nv] = src[(i / nv) * ld + i % nv];
  }
}

// S += A B over k = rows r < Cp of B [r, f] in shared memory (row stride ld; its 16 NK
// columns), A [e, r] the warp's 16 rows given per k-tile of 16 rows by a(kr, fa).
template <int NK, class FA>
__device__ __forceinline__ void state_add_rows(float (&S)[2 * NK][4], const bf16* B, int ld, int Cp, FA a_tile) {
  constexpr int kMaxRowTiles = kMaxChunk / 16;
  const bf16* pb = fragment_base(smem_op_t(B, ld), 0);
#pragma unroll
  for (int kr = 0; kr < kMaxRowTiles; ++kr) {
    if (16 * kr >= Cp) break;
    uint32_t a[4];
    a_tile(kr, a);
#pragma unroll
    for (int n16 = 0; n16 < NK; ++n16) {
      uint32_t fb[4];
      ldmatrix_x4<true>(fb, pb + 16 * kr * ld + 16 * n16);
      mma_bf16(S[2 * n16], a, fb[0], fb[2]);
      mma_bf16(S[2 * n16 + 1], a, fb[1], fb[3]);
    }
  }
}

// D [e, r] += (Sign S) M^T for rows r < Cp of M [r, f] in shared memory (row stride ld): the
// state's fragments packed as A (bf16, the rounding of the saved state), M's rows as B.
template <int Sign, int NK, int NR>
__device__ __forceinline__ void state_times_rows(float (&D)[NR][4], const float (&S)[2 * NK][4], const bf16* M,
                                                 int ld, int Cp) {
  const bf16* pm = fragment_base(smem_op(M, ld), 0);
#pragma unroll
  for (int kk = 0; kk < NK; ++kk) {
    uint32_t a[4];
    a_fragment_from_c<Sign>(a, S[2 * kk], S[2 * kk + 1]);
#pragma unroll
    for (int n16 = 0; n16 < NR / 2; ++n16) {
      if (16 * n16 >= Cp) break;
      uint32_t fb[4];
      ldmatrix_x4<false>(fb, pm + 16 * n16 * ld + 16 * kk);
      mma_bf16(D[2 * n16], a, fb[0], fb[2]);
      mma_bf16(D[2 * n16 + 1], a, fb[1], fb[3]);
    }
  }
}

// The forward state pass for bf16 storage, with the state in registers. A block of
// kStateRegsWarps warps takes 16 value columns per warp; each warp holds its rows e of S [e, f]
// as mma C fragments (NK k-tiles of 16: 2 NK n8 tiles, 4 NK floats per lane) for the whole
// pass, and per chunk, with Cp <= 64 rows r:
//   Delta^T [e, r] = U^T - S W^T     (A = -S packed from the C fragments, B = rows of W; C = U^T)
//   S <- Gam_{L-1} S + (Delta^T diag(dend)) K   (A = the Delta^T fragments packed, B = K^T)
// so only K, W, U and gam (from the W/U kernel) pass through shared memory, in a ring of
// Stages buffers filled by cp.async Stages - 1 chunks ahead. The pass is a chain of NC
// dependent chunk steps, so its latency is its time: the shared-memory kernel above spends six
// block barriers and two trips of S through shared memory per chunk and waits for each
// chunk's loads. The arithmetic is that kernel's: S rounded to bf16 for the product (and the
// saved state), Delta = U - W S^T accumulated in fp32 and rounded once.
constexpr int kStateRegsWarps = 4;  // 4 measured faster than 1 or 2 (bench/RESULTS.md, 2026-12-06)
constexpr int kStateRegsStages = 2;  // 2 and 3 measured equal (the pass does not wait on its loads)
// Shared memory of the register state passes (byte offsets), Warps x 16 value columns per
// block: a ring of stages, each with K, W, the value tile U (forward: U; backward: dDelta's
// P^T dOs part) and gam, backward also Q and dO; then per-warp row vectors (forward: dend;
// backward: dend and scale Gam).
struct GdnStateRegsLayout {
  int cols, Cp, sk, su;
  size_t K, W, U, Q, dO, G, stage, vec, total;  // K .. G within a stage; stage s at s * stage
  __host__ __device__ GdnStateRegsLayout(int dk, int C, int stages, int warps, bool backward) {
    cols = 16 * warps, Cp = round16(C), sk = tile_stride(dk), su = tile_stride(cols);
    SmemCarve m;
    K = m.take<bf16>(Cp * sk), W = m.take<bf16>(Cp * sk), U = m.take<bf16>(Cp * su);
    Q = backward ? m.take<bf16>(Cp * sk) : 0, dO = backward ? m.take<bf16>(Cp * su) : 0;
    G = m.take<float>(Cp);
    stage = m.bytes;
    m.bytes = stages * stage;
    vec = m.take<float>((backward ? 2 : 1) * warps * kMaxChunk);
    total = m.bytes;
  }
};

template <int Stages, int NK>
__global__ void __launch_bounds__(kStateRegsWarps * kWarp)
    gdn_fwd_state_regs_kernel(bf16* __restrict__ chunk_states, bf16* __restrict__ ud, const bf16* __restrict__ k,
                              const bf16* __restrict__ w, const float* __restrict__ gam, GdnDims d) {
  constexpr int kThreadsPerBlock = kStateRegsWarps * kWarp, kNF = 2 * NK, kMaxRowTiles = kMaxChunk / 16;
  extern __shared__ __align__(128) unsigned char smem[];
  const GdnStateRegsLayout ly(d.dk, d.C, Stages, kStateRegsWarps, false);
  const int sk = ly.sk, su = ly.su, Cp = ly.Cp, dk = d.dk;
  const int warp = int(threadIdx.x) / kWarp, lane = int(threadIdx.x) % kWarp, gq = lane / 4, t = lane % 4;
  const StateRegsBlock blk(d, ly.cols);
  const int e0 = blk.e0, ew = blk.ew, b = blk.b, nv_block = blk.nv_block, nv = blk.nv;
  const int64_t head = blk.head, QK = blk.QK, qk_off = blk.qk_off;
  float* dend = reinterpret_cast<float*>(smem + ly.vec) + warp * kMaxChunk;
  const auto tile = [&](int s, size_t off) { return reinterpret_cast<bf16*>(smem + s * ly.stage + off); };

  // Chunk kc's K, W, U tiles and gam into stage kc % Stages (the caller closes the group).
  const auto issue_loads = [&](int kc) {
    const int s = kc % Stages, t0 = kc * d.C, L = min(d.C, d.Tn - t0);
    const int64_t bt0 = int64_t(b) * d.Tn + t0;
    // load_rows, not load_tile: at dk 96 load_tile's unrolled copies take this pass from 168 to
    // 238 registers (ptxas), two blocks per SM instead of three, and B4 H30's 360 blocks from one
    // wave to two (ncu: 639 -> 920 us). The backward pass keeps load_tile (it gained 210 us there).
    load_rows<kThreadsPerBlock>(tile(s, ly.K), sk, Cp, 16 * NK, k + bt0 * QK + qk_off, QK, L, dk, Unit{});
    load_rows<kThreadsPerBlock>(tile(s, ly.W), sk, Cp, 16 * NK, w + (head * d.Tn + t0) * dk, dk, L, dk, Unit{});
    load_rows<kThreadsPerBlock>(tile(s, ly.U), su, Cp, ly.cols, ud + (head * d.Tn + t0) * d.dv + e0, d.dv, L,
                                nv_block, Unit{});
    load_chunk_gam<kThreadsPerBlock>(reinterpret_cast<float*>(smem + s * ly.stage + ly.G), gam, head, d, kc, Cp);
  };

  float S[kNF][4] = {};  // S [e, f]: n8 tile j holds f = 8 j .., rows e = gq, gq + 8
  // Stages - 1 chunks in flight ahead of the one computed; one group per chunk (empty past
  // the end) so that cp_async_wait<Stages - 1> always means "this chunk's copies are in".
  for (int c = 0; c < Stages - 1; ++c) {
    if (c < d.NC) issue_loads(c);
    cp_async_commit();
  }
  for (int kc = 0; kc < d.NC; ++kc) {
    const int s = kc % Stages, t0 = kc * d.C, L = min(d.C, d.Tn - t0);
    if (kc + Stages - 1 < d.NC) issue_loads(kc + Stages - 1);
    cp_async_commit();

    // The state entering the chunk, as the product will read it (bf16), to chunk_states.
    if (nv > 0) store_state_rows(chunk_states + (head * d.NC + kc) * d.dv * dk + int64_t(e0 + ew) * dk, S, nv, dk);
    cp_async_wait<Stages - 1>();
    __syncthreads();
    const bf16 *Ks = tile(s, ly.K), *Ws = tile(s, ly.W);
    bf16* Us = tile(s, ly.U) + ew;  // this warp's columns
    const float* G = reinterpret_cast<const float*>(smem + s * ly.stage + ly.G);
    const float gam_end = G[L - 1], Gam_end = expf(gam_end);
    dend[lane] = lane < L ? expf(gam_end - G[lane]) : 0.f;  // dend = exp(gam_{L-1} - gam)
    dend[lane + kWarp] = lane + kWarp < L ? expf(gam_end - G[lane + kWarp]) : 0.f;
    __syncwarp();

    // Delta^T = U^T - S W^T: n8 tile j holds rows r = 8 j .. of the chunk.
    float D[2 * kMaxRowTiles][4];
    load_transposed(D, Us, su, Cp);
    state_times_rows<-1, NK>(D, S, Ws, sk, Cp);
    // Delta (bf16) over U in shared memory for the copy out; D <- Delta^T diag(dend) for the update.
#pragma unroll
    for (int j = 0; j < 2 * kMaxRowTiles; ++j) {
      if (8 * j >= Cp) break;
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int r = 8 * j + 2 * t + c % 2, e = gq + 8 * (c / 2);
        Us[r * su + e] = from_f32<bf16>(D[j][c]);
        D[j][c] *= dend[r];
      }
    }
    // S <- Gam_{L-1} S + (Delta^T diag(dend)) K.
#pragma unroll
    for (int j = 0; j < kNF; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c) S[j][c] *= Gam_end;
    state_add_rows<NK>(S, Ks, sk, Cp, [&](int kr, uint32_t(&a)[4]) { a_fragment_from_c(a, D[2 * kr], D[2 * kr + 1]); });
    // Delta to global memory over U: the warp's 16 columns of the chunk's rows.
    __syncwarp();
    if (nv > 0) store_warp_columns(ud + (head * d.Tn + t0) * d.dv + e0 + ew, d.dv, Us, su, L, nv);
    __syncthreads();  // stage s is refilled Stages - 1 iterations on
  }
}

// Shared memory of gdn_fwd_output_kernel (byte offsets).
template <class E>
struct GdnOutLayout {
  int Cp, sk, sc, sv;
  size_t Q, K, P, S, D, vec, total;
  __host__ __device__ GdnOutLayout(int dk, int bv, int C) {
    Cp = round16(C), sk = tile_stride(dk), sc = tile_stride(C), sv = tile_stride(bv);
    SmemCarve m;
    Q = m.take<E>(Cp * sk), K = m.take<E>(Cp * sk), P = m.take<E>(Cp * sc);
    S = m.take<E>(round16(bv) * sk), D = m.take<E>(Cp * sv);
    vec = m.take<float>(3 * Cp);
    total = m.bytes;
  }
};

// Per chunk, over value tiles: O = scale (diag(Gam) Q S^T + P Delta), P = Q K^T o decay (lower).
// The first value tile (all of dv where it fits: value_tile) is in flight with Q, K and the gates.
template <class E, class TG>
__global__ void __launch_bounds__(kChunkThreads)
    gdn_fwd_output_kernel(E* __restrict__ o, const E* __restrict__ q, const E* __restrict__ k,
                          const TG* __restrict__ g, const E* __restrict__ chunk_states,
                          const E* __restrict__ delta, GdnDims d, int bv, float scale) {
  extern __shared__ __align__(128) unsigned char smem[];
  const GdnOutLayout<E> ly(d.dk, bv, d.C);
  const int sk = ly.sk, sc = ly.sc, sv = ly.sv, Cp = ly.Cp;
  E* Q = reinterpret_cast<E*>(smem + ly.Q);
  E* K = reinterpret_cast<E*>(smem + ly.K);
  E* P = reinterpret_cast<E*>(smem + ly.P);
  E* S = reinterpret_cast<E*>(smem + ly.S);
  E* D = reinterpret_cast<E*>(smem + ly.D);
  float* gam = reinterpret_cast<float*>(smem + ly.vec);
  float *Gam = gam + Cp, *dend = Gam + Cp;

  const int kc = blockIdx.x, hv = blockIdx.y, b = blockIdx.z, dk = d.dk, dkp = round16(dk);
  const int t0 = kc * d.C, L = min(d.C, d.Tn - t0);
  const int64_t bt0 = int64_t(b) * d.Tn + t0, head = int64_t(b) * d.Hv + hv;
  const int64_t QK = int64_t(d.H) * dk, DV = int64_t(d.Hv) * d.dv, qk_off = int64_t(hv / (d.Hv / d.H)) * dk;
  const E* cs = chunk_states + (head * d.NC + kc) * d.dv * dk;
  const auto load_value_tile = [&](int e0) {
    const int nv = min(bv, d.dv - e0), nvp = round16(nv);
    load_rows<kChunkThreads>(S, sk, nvp, dkp, cs + int64_t(e0) * dk, dk, nv, dk, Unit{});
    load_rows<kChunkThreads>(D, sv, Cp, nvp, delta + (head * d.Tn + t0) * d.dv + e0, d.dv, L, nv, Unit{});
  };
  load_rows<kChunkThreads>(Q, sk, Cp, dkp, q + bt0 * QK + qk_off, QK, L, dk, Unit{});
  load_rows<kChunkThreads>(K, sk, Cp, dkp, k + bt0 * QK + qk_off, QK, L, dk, Unit{});
  load_value_tile(0);
  load_gates<kChunkThreads>(gam, nullptr, Gam, dend, g, (const TG*)nullptr, bt0, d.Hv, hv, L);
  smem_product<kChunkThreads>(Cp, Cp, dkp, smem_op(Q, sk), smem_op(K, sk), [&](int r, int c, float qk) {
    P[r * sc + c] = from_f32<E>(c <= r && r < L ? qk * expf(gam[r] - gam[c]) : 0.f);
  });
  __syncthreads();  // the product read Q: now Q <- diag(Gam) Q
  for_each_index<kChunkThreads>(L, dkp, [&](int r, int e) { Q[r * sk + e] = from_f32<E>(Gam[r] * to_f32(Q[r * sk + e])); });
  __syncthreads();
  for (int e0 = 0; e0 < d.dv; e0 += bv) {
    const int nv = min(bv, d.dv - e0);
    if (e0 > 0) load_value_tile(e0), publish();
    E* oc = o + bt0 * DV + int64_t(hv) * d.dv + e0;
    for_each_tile<kChunkThreads>(L, nv, [&](int m0, int n0) {
      float acc[2][4] = {};
      warp_tile_mma(acc, smem_op(Q, sk), m0, smem_op(S, sk), n0, dkp);
      warp_tile_mma(acc, smem_op(P, sc), m0, smem_op_t(D, sv), n0, Cp);
      store_tile_to(acc, m0, n0, L, nv, oc, DV, scale);
    });
    __syncthreads();
  }
}

// ---- core backward: three chunk-parallel kernels ------------------------------------
//
// The exact gradient of the chunked computation, as the CPU's gdn_chunk_backward (its comment
// lists the formulas), split where the chunks depend on each other (dS, the gradient w.r.t.
// the state leaving a chunk, flows from the last chunk to the first) so that everything else
// runs one block per chunk:
//   1. gdn_bwd_prepare_kernel (per chunk): with T = (I + A)^-1 from the forward (t_inv),
//      W = T diag(beta Gam) K, Delta = T diag(beta) V - W S^T (S from the forward's
//      chunk_states) and the chunk-local part of dDelta, P^T dOs (P = Q K^T o decay, lower;
//      dOs = scale dO): W, Delta and dDelta, and gam = cumsum(g) per chunk, to scratch.
//   2. the dS pass (per slice of value columns, chunks in reverse): completes
//      dDelta += diag(dend) K dS^T, saves dS, then dS <- Gam_{L-1} dS + (Gam dOs)^T Q - dDelta^T W
//      (fp32 across chunks; three small products per chunk): gdn_bwd_state_regs_kernel for
//      bf16 (dS in registers), gdn_bwd_state_kernel (shared memory) otherwise.
//   3. gdn_bwd_grads_kernel (per chunk, over value tiles): with S, dS, Delta, dDelta known,
//      dQ = diag(Gam) dOs S + dPd K, dK = diag(dend) Delta dS + dPd^T Q + diag(beta Gam) dRW
//      + (dKK + dKK^T) K, dV = diag(beta) dRU, dbeta, dgam, dg, where dRU = T^T dDelta,
//      dRW = -dRU S, and dA = -strictly_lower(dRU Delta^T) (= the CPU's
//      -strictly_lower(dRU U^T + dRW W^T), as U = Delta + W S^T and dRW = -dRU S).
// Operands live in shared memory in the storage type (bf16: ldmatrix + mma.sync m16n8k16;
// fp32: exact FMAs, smem_product); sums over the value dimension accumulate in fp32.
// Deterministic: every output element has one writer, sums run in a fixed order.

// Shared memory of gdn_bwd_prepare_kernel (byte offsets) for dk, value tiles of bv, chunk C.
// 8 warps and at most half an SM's shared memory: two blocks per SM, whose loads and
// barriers interleave (one 16-warp block per SM left it idle at each).
constexpr int kPrepThreads = 256;

template <class E>
struct GdnPrepLayout {
  int Cp, sk, sc, sv;
  size_t K, Q, Kb, W, Tb, P, Vb, dO, S, vec, total;
  __host__ __device__ GdnPrepLayout(int dk, int bv, int C) {
    Cp = round16(C), sk = tile_stride(dk), sc = tile_stride(C), sv = tile_stride(bv);
    SmemCarve m;
    K = m.take<E>(Cp * sk), Q = m.take<E>(Cp * sk), W = m.take<E>(Cp * sk);
    Tb = m.take<E>(Cp * sc), P = m.take<E>(Cp * sc);
    SmemCarve wy = m;  // chunk_w's scratch, dead once W is made: the value tiles reuse it
    Kb = wy.take<E>(Cp * sk);
    Vb = m.take<E>(Cp * sv), dO = m.take<E>(Cp * sv), S = m.take<E>(round16(bv) * sk);
    if (wy.bytes > m.bytes) m = wy;
    vec = m.take<float>(4 * Cp);
    total = m.bytes;
  }
};

template <class E, class TG>
__global__ void __launch_bounds__(kPrepThreads, 2)
    gdn_bwd_prepare_kernel(E* __restrict__ w_out, E* __restrict__ delta, E* __restrict__ d_delta,
                           float* __restrict__ gam_out, const E* __restrict__ t_inv, const E* __restrict__ q,
                           const E* __restrict__ k, const E* __restrict__ v, const TG* __restrict__ beta, const TG* __restrict__ g,
                           const E* __restrict__ d_o, const E* __restrict__ chunk_states, GdnDims d, int bv,
                           float scale) {
  extern __shared__ __align__(128) unsigned char smem[];
  const GdnPrepLayout<E> ly(d.dk, bv, d.C);
  const int sk = ly.sk, sc = ly.sc, sv = ly.sv, Cp = ly.Cp;
  E* K = reinterpret_cast<E*>(smem + ly.K);
  E* Q = reinterpret_cast<E*>(smem + ly.Q);
  E* Kb = reinterpret_cast<E*>(smem + ly.Kb);
  E* W = reinterpret_cast<E*>(smem + ly.W);
  E* Tb = reinterpret_cast<E*>(smem + ly.Tb);
  E* P = reinterpret_cast<E*>(smem + ly.P);
  E* Vb = reinterpret_cast<E*>(smem + ly.Vb);
  E* dO = reinterpret_cast<E*>(smem + ly.dO);
  E* S = reinterpret_cast<E*>(smem + ly.S);
  float* gam = reinterpret_cast<float*>(smem + ly.vec);
  float *bet = gam + Cp, *Gam = bet + Cp, *dend = Gam + Cp;

  const int kc = blockIdx.x, hv = blockIdx.y, b = blockIdx.z, dk = d.dk, dkp = round16(dk);
  const int t0 = kc * d.C, L = min(d.C, d.Tn - t0);
  const int64_t bt0 = int64_t(b) * d.Tn + t0, head = int64_t(b) * d.Hv + hv;
  const int64_t QK = int64_t(d.H) * dk, DV = int64_t(d.Hv) * d.dv, qk_off = int64_t(hv / (d.Hv / d.H)) * dk;
  load_rows<kPrepThreads>(K, sk, Cp, dkp, k + bt0 * QK + qk_off, QK, L, dk, Unit{});
  load_rows<kPrepThreads>(Q, sk, Cp, dkp, q + bt0 * QK + qk_off, QK, L, dk, Unit{});
  load_rows<kPrepThreads>(Tb, sc, Cp, Cp, t_inv + (head * d.NC + kc) * d.C * d.C, d.C, L, L, Unit{});
  load_gates<kPrepThreads>(gam, bet, Gam, dend, g, beta, bt0, d.Hv, hv, L);
  // gam per chunk (zero-padded to Cp) for the register state pass.
  for (int i = int(threadIdx.x); i < Cp; i += kPrepThreads) gam_out[(head * d.NC + kc) * Cp + i] = i < L ? gam[i] : 0.f;
  // P = Q K^T o decay (lower); W (the forward's, from its T) to scratch for the other kernels.
  smem_product<kPrepThreads>(Cp, Cp, dkp, smem_op(Q, sk), smem_op(K, sk), [&](int r, int c, float qk) {
    P[r * sc + c] = from_f32<E>(c <= r && r < L ? qk * expf(gam[r] - gam[c]) : 0.f);
  });
  chunk_w<kPrepThreads>(W, Kb, Tb, K, bet, Gam, L, dk, Cp, sk, sc);
  store_rows<kPrepThreads>(w_out + (head * d.Tn + t0) * dk, dk, W, sk, L, dk);
  // Per value tile: Delta = T diag(beta) V - W S^T and dDelta = P^T dOs.
  const E* cs = chunk_states + (head * d.NC + kc) * d.dv * dk;
  for (int e0 = 0; e0 < d.dv; e0 += bv) {
    const int nv = min(bv, d.dv - e0), nvp = round16(nv);
    const int64_t v_off = int64_t(hv) * d.dv + e0;
    load_rows<kPrepThreads>(Vb, sv, Cp, nvp, v + bt0 * DV + v_off, DV, L, nv, [&](int r) { return bet[r]; });
    load_rows<kPrepThreads>(dO, sv, Cp, nvp, d_o + bt0 * DV + v_off, DV, L, nv, [&](int) { return scale; });
    load_rows<kPrepThreads>(S, sk, nvp, dkp, cs + int64_t(e0) * dk, dk, nv, dk, Unit{});
    publish();
    E* dl = delta + (head * d.Tn + t0) * d.dv + e0;
    E* ddl = d_delta + (head * d.Tn + t0) * d.dv + e0;
    for_each_tile<kPrepThreads>(L, nv, [&](int m0, int n0) {
      float u[2][4] = {}, ws[2][4] = {};
      warp_tile_mma(u, smem_op(Tb, sc), m0, smem_op_t(Vb, sv), n0, Cp);
      warp_tile_mma(ws, smem_op(W, sk), m0, smem_op(S, sk), n0, dkp);
#pragma unroll
      for (int j = 0; j < 2; ++j)
#pragma unroll
        for (int r = 0; r < 4; ++r) u[j][r] -= ws[j][r];
      store_tile(u, m0, n0, L, nv, [&](int r, int e, float x) { dl[int64_t(r) * d.dv + e] = from_f32<E>(x); });
    });
    smem_product<kPrepThreads>(L, nv, Cp, smem_op_t(P, sc), smem_op_t(dO, sv), [&](int c, int e, float x) {
      ddl[int64_t(c) * d.dv + e] = from_f32<E>(x);
    });
    __syncthreads();
  }
}

template <class E, class TG>
__global__ void __launch_bounds__(kStateThreads)
    gdn_bwd_state_kernel(E* __restrict__ d_states, E* __restrict__ d_delta, const E* __restrict__ q,
                         const E* __restrict__ k, const E* __restrict__ w, const TG* __restrict__ g,
                         const E* __restrict__ d_o, GdnDims d, float scale) {
  extern __shared__ __align__(128) unsigned char smem[];
  const GdnStatePassLayout<E> ly(d.dk, d.C, 2);
  const int sk = ly.sk, sx = ly.sx, Cp = ly.Cp;
  float* dS = reinterpret_cast<float*>(smem + ly.S);
  E* dSb = reinterpret_cast<E*>(smem + ly.Sb);
  E* K = reinterpret_cast<E*>(smem + ly.K);
  E* QW = reinterpret_cast<E*>(smem + ly.M);  // Q rows [0, Cp), W rows [Cp, 2 Cp)
  E* X = reinterpret_cast<E*>(smem + ly.X);    // Gam dOs rows [0, Cp), -dDelta rows [Cp, 2 Cp)
  float* gam = reinterpret_cast<float*>(smem + ly.vec);
  float *Gam = gam + Cp, *dend = Gam + Cp;

  const int e0 = blockIdx.x * kStateCols, hv = blockIdx.y, b = blockIdx.z, dk = d.dk, dkp = round16(dk);
  const int nv = min(kStateCols, d.dv - e0);
  const int64_t head = int64_t(b) * d.Hv + hv, QK = int64_t(d.H) * dk, DV = int64_t(d.Hv) * d.dv;
  const int64_t qk_off = int64_t(hv / (d.Hv / d.H)) * dk, v_off = int64_t(hv) * d.dv + e0;
  for (int i = int(threadIdx.x); i < kStateCols * sk; i += kStateThreads) dS[i] = 0.f;

  for (int kc = d.NC - 1; kc >= 0; --kc) {
    const int t0 = kc * d.C, L = min(d.C, d.Tn - t0);
    const int64_t bt0 = int64_t(b) * d.Tn + t0;
    load_rows<kStateThreads>(K, sk, Cp, dkp, k + bt0 * QK + qk_off, QK, L, dk, Unit{});
    load_rows<kStateThreads>(QW, sk, Cp, dkp, q + bt0 * QK + qk_off, QK, L, dk, Unit{});
    load_rows<kStateThreads>(QW + Cp * sk, sk, Cp, dkp, w + (head * d.Tn + t0) * dk, dk, L, dk, Unit{});
    E* ddl = d_delta + (head * d.Tn + t0) * d.dv + e0;
    load_rows<kStateThreads>(X + Cp * sx, sx, Cp, kStateCols, ddl, d.dv, L, nv, Unit{});  // P^T dOs
    load_gates<kStateThreads>(gam, nullptr, Gam, dend, g, (const TG*)nullptr, bt0, d.Hv, hv, L);
    load_rows<kStateThreads>(X, sx, Cp, kStateCols, d_o + bt0 * DV + v_off, DV, L, nv,
                             [&](int r) { return scale * Gam[r]; });
    snapshot_state(dSb, d_states + (head * d.NC + kc) * d.dv * dk + int64_t(e0) * dk, dS, sk, nv, dk);
    publish();
    // dDelta = P^T dOs (from the prepare kernel) + diag(dend) K dS^T; -dDelta into X.
    smem_product<kStateThreads>(Cp, kStateCols, dkp, smem_op(K, sk), smem_op(dSb, sk), [&](int r, int e, float acc) {
      float x = 0.f;
      if (r < L && e < nv) {
        x = to_f32(X[(Cp + r) * sx + e]) + dend[r] * acc;
        ddl[int64_t(r) * d.dv + e] = from_f32<E>(x);
      }
      X[(Cp + r) * sx + e] = from_f32<E>(-x);
    });
    __syncthreads();
    // dS <- Gam_{L-1} dS + (Gam dOs)^T Q - dDelta^T W.
    const float Gam_end = Gam[L - 1];
    smem_product<kStateThreads>(kStateCols, dkp, 2 * Cp, smem_op_t(X, sx), smem_op_t(QW, sk),
                                [&](int e, int f, float acc) { dS[e * sk + f] = Gam_end * dS[e * sk + f] + acc; });
    __syncthreads();
  }
}

// The backward state pass for bf16 storage, with dS in registers: the forward register pass's
// structure over the chunks in reverse. Warps x 16 value columns per block, each warp its 16
// rows e of dS [e, f] as mma C fragments for the whole pass; per chunk, with Cp <= 64 rows r:
//   d_states <- dS (bf16; what the grads kernel reads for the chunk)
//   dDelta^T [e, r] = X^T + (dS K^T) diag(dend)   (A = dS packed, B = rows of K; X = P^T dOs
//                                                  from the prepare kernel, over which dDelta goes)
//   dS <- Gam_{L-1} dS + (dO diag(scale Gam))^T Q - dDelta^T W
//     (A = dO^T by transposed ldmatrix, scaled per row r; A = -dDelta^T packed; B = Q^T, W^T)
// K, Q, W, X, dO and gam (the prepare kernel's) pass through a ring of Stages buffers filled by
// cp.async. The arithmetic is gdn_bwd_state_kernel's: dS rounded to bf16 for the products (and
// d_states), dDelta accumulated in fp32 and rounded once, scale Gam dO rounded to bf16.
// Warps is chosen by launch_bwd_state_regs.
template <int Stages, int NK, int Warps>
__global__ void __launch_bounds__(Warps * kWarp)
    gdn_bwd_state_regs_kernel(bf16* __restrict__ d_states, bf16* __restrict__ d_delta, const bf16* __restrict__ q,
                              const bf16* __restrict__ k, const bf16* __restrict__ w, const float* __restrict__ gam,
                              const bf16* __restrict__ d_o, GdnDims d, float scale) {
  constexpr int kThreadsPerBlock = Warps * kWarp, kNF = 2 * NK, kMaxRowTiles = kMaxChunk / 16;
  extern __shared__ __align__(128) unsigned char smem[];
  const GdnStateRegsLayout ly(d.dk, d.C, Stages, Warps, true);
  const int sk = ly.sk, su = ly.su, Cp = ly.Cp, dk = d.dk;
  const int warp = int(threadIdx.x) / kWarp, lane = int(threadIdx.x) % kWarp, gq = lane / 4, t = lane % 4;
  const StateRegsBlock blk(d, ly.cols);
  const int e0 = blk.e0, ew = blk.ew, hv = blk.hv, b = blk.b, nv_block = blk.nv_block, nv = blk.nv;
  const int64_t head = blk.head, QK = blk.QK, qk_off = blk.qk_off;
  const int64_t DV = int64_t(d.Hv) * d.dv;
  float* dend = reinterpret_cast<float*>(smem + ly.vec) + warp * 2 * kMaxChunk;
  float* wq = dend + kMaxChunk;  // scale Gam per row
  const auto tile = [&](int s, size_t off) { return reinterpret_cast<bf16*>(smem + s * ly.stage + off); };

  // Chunk kc's K, Q, W, X, dO tiles and gam into stage kc % Stages (the caller closes the group).
  const auto issue_loads = [&](int kc) {
    const int s = kc % Stages, t0 = kc * d.C, L = min(d.C, d.Tn - t0);
    const int64_t bt0 = int64_t(b) * d.Tn + t0;
    constexpr int kCols = 16 * Warps;  // ly.cols
    load_tile<kThreadsPerBlock, 16 * NK, kMaxChunk>(tile(s, ly.K), sk, Cp, k + bt0 * QK + qk_off, QK, L, dk);
    load_tile<kThreadsPerBlock, 16 * NK, kMaxChunk>(tile(s, ly.Q), sk, Cp, q + bt0 * QK + qk_off, QK, L, dk);
    load_tile<kThreadsPerBlock, 16 * NK, kMaxChunk>(tile(s, ly.W), sk, Cp, w + (head * d.Tn + t0) * dk, dk, L, dk);
    load_tile<kThreadsPerBlock, kCols, kMaxChunk>(tile(s, ly.U), su, Cp, d_delta + (head * d.Tn + t0) * d.dv + e0,
                                                  d.dv, L, nv_block);
    load_tile<kThreadsPerBlock, kCols, kMaxChunk>(tile(s, ly.dO), su, Cp, d_o + bt0 * DV + int64_t(hv) * d.dv + e0,
                                                  DV, L, nv_block);
    load_chunk_gam<kThreadsPerBlock>(reinterpret_cast<float*>(smem + s * ly.stage + ly.G), gam, head, d, kc, Cp);
  };

  float dS[kNF][4] = {};  // dS [e, f]: n8 tile j holds f = 8 j .., rows e = gq, gq + 8
  for (int c = 0; c < Stages - 1; ++c) {  // chunk NC - 1 - c into stage c; one group each
    if (c < d.NC) issue_loads(d.NC - 1 - c);
    cp_async_commit();
  }
  for (int i = 0; i < d.NC; ++i) {
    const int kc = d.NC - 1 - i, s = kc % Stages, t0 = kc * d.C, L = min(d.C, d.Tn - t0);
    if (i + Stages - 1 < d.NC) issue_loads(kc - (Stages - 1));
    cp_async_commit();

    if (nv > 0) store_state_rows(d_states + (head * d.NC + kc) * d.dv * dk + int64_t(e0 + ew) * dk, dS, nv, dk);
    cp_async_wait<Stages - 1>();
    __syncthreads();
    const bf16 *Ks = tile(s, ly.K), *Qs = tile(s, ly.Q), *Ws = tile(s, ly.W), *dOs = tile(s, ly.dO) + ew;
    bf16* Xs = tile(s, ly.U) + ew;  // this warp's columns
    const float* G = reinterpret_cast<const float*>(smem + s * ly.stage + ly.G);
    const float gam_end = G[L - 1], Gam_end = expf(gam_end);
    for (int r = lane; r < 2 * kWarp; r += kWarp) {
      dend[r] = r < L ? expf(gam_end - G[r]) : 0.f;
      wq[r] = r < L ? scale * expf(G[r]) : 0.f;
    }
    __syncwarp();

    // dDelta^T = X^T + (dS K^T) diag(dend): n8 tile j holds rows r = 8 j .. of the chunk.
    float D[2 * kMaxRowTiles][4] = {};
    state_times_rows<1, NK>(D, dS, Ks, sk, Cp);
#pragma unroll
    for (int j = 0; j < 2 * kMaxRowTiles; ++j) {
      if (8 * j >= Cp) break;
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int r = 8 * j + 2 * t + c % 2, e = gq + 8 * (c / 2);
        D[j][c] = to_f32(Xs[r * su + e]) + dend[r] * D[j][c];
        Xs[r * su + e] = from_f32<bf16>(D[j][c]);
      }
    }
    // dS <- Gam_{L-1} dS + (dO diag(scale Gam))^T Q - dDelta^T W.
#pragma unroll
    for (int j = 0; j < kNF; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c) dS[j][c] *= Gam_end;
    state_add_rows<NK>(dS, Ws, sk, Cp,
                       [&](int kr, uint32_t(&a)[4]) { a_fragment_from_c<-1>(a, D[2 * kr], D[2 * kr + 1]); });
    const bf16* pdo = fragment_base(smem_op_t(dOs, su), 0);
    state_add_rows<NK>(dS, Qs, sk, Cp, [&](int kr, uint32_t(&a)[4]) {
      ldmatrix_x4<true>(a, pdo + 16 * kr * su);  // registers 0, 1 at rows r = 16 kr + 2 t, + 1; 2, 3 at + 8
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = 16 * kr + 2 * t + 8 * h;
        const float w0 = wq[r], w1 = wq[r + 1];
#pragma unroll
        for (int m = 0; m < 2; ++m) {
          const float2 x = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&a[2 * h + m]));
          a[2 * h + m] = pack_bf16(x.x * w0, x.y * w1);
        }
      }
    });
    // dDelta to global memory over X: the warp's 16 columns of the chunk's rows.
    __syncwarp();
    if (nv > 0) store_warp_columns(d_delta + (head * d.Tn + t0) * d.dv + e0 + ew, d.dv, Xs, su, L, nv);
    __syncthreads();  // stage s is refilled Stages - 1 iterations on
  }
}

// gdn_bwd_grads_kernel keeps its sums in registers: every 16 x 16 tile of dK and dQ ([Cp,
// dkp]; dQ's registers later hold dRW) and every lower tile of dP ([Cp, Cp]; later dA)
// belongs to one warp for the whole kernel, so the sums over the value tiles never touch
// shared memory and two blocks fit on an SM (one 172 KB block of 16 warps with fp32
// accumulators in shared memory left the SM idle at each load and barrier: 24% occupancy,
// an instruction issued every 3.2 cycles). Warp w holds the dK and dQ tiles w + 8q (q < NQ:
// a pair, which meets again in dK += diag(beta Gam) dRW) and the lower dP tiles w + 8p
// (p < NP). NQ and NP are template parameters: a slot whose kind is known at compile time
// inlines one product per phase; slots of any kind (a runtime switch per slot) inlined three
// and the kernel stalled on instruction fetch.
constexpr int kGradThreads = 256;
constexpr int kGradWarps = kGradThreads / kWarp;

// (dK/dQ pairs, dP tiles) per warp for dk and chunk C.
inline int grad_pairs(int dk, int C) { return int(ceil_div((round16(C) / 16) * (round16(dk) / 16), kGradWarps)); }
inline int grad_p_tiles(int C) {
  const int tc = round16(C) / 16;
  return int(ceil_div(tc * (tc + 1) / 2, kGradWarps));
}
constexpr int kMaxGradPairs = 5;  // the general instantiation: dk <= 160 at chunk 64 (3 serve dk <= 96)
constexpr int kGradPTiles = 2;    // lower tiles of a 64 x 64 dP over 8 warps

// The tile origin (m0, n0) packed in one register, or -1 where the warp has no tile.
__device__ __forceinline__ int pack_tile(int m0, int n0) { return m0 << 16 | n0; }
__device__ __forceinline__ int tile_m0(int t) { return t >> 16; }
__device__ __forceinline__ int tile_n0(int t) { return t & 0xffff; }
// Tile i of a [Cp, dkp] matrix, row by row; of the lower tiles of [Cp, Cp], row by row.
__device__ __forceinline__ int qk_tile(int i, int Cp, int dkp) {
  const int tn = dkp / 16;
  return i < (Cp / 16) * tn ? pack_tile((i / tn) * 16, (i % tn) * 16) : -1;
}
__device__ __forceinline__ int lower_tile(int i, int Cp) {
  int mi = 0;
  while ((mi + 1) * (mi + 2) / 2 <= i) ++mi;
  return mi < Cp / 16 ? pack_tile(mi * 16, (i - mi * (mi + 1) / 2) * 16) : -1;
}

// Shared memory of gdn_bwd_grads_kernel (byte offsets): K, Q; T; P / dPd, then dKK (PL);
// value tiles S, dS, Delta, dDelta, dOs (then dRU), V, whose region holds the fp32 G = dP o P,
// then dA o KKd, between the value loops; the per-tile row sums (of the dk tiles, and of dRU o
// V per value-tile column); the gate vectors.
template <class E>
struct GdnGradLayout {
  int Cp, sk, sc, sv, tn, nrc;  // nrc: value-tile columns, the width of ruv
  size_t K, Q, Tb, PL, S, dS, D, dD, dO, V, G, rows, ruv, vec, total;
  __host__ __device__ GdnGradLayout(int dk, int bv, int C) {
    Cp = round16(C), sk = tile_stride(dk), sc = tile_stride(C), sv = tile_stride(bv), tn = round16(dk) / 16;
    nrc = round16(bv) / 16;
    SmemCarve m;
    K = m.take<E>(Cp * sk), Q = m.take<E>(Cp * sk), Tb = m.take<E>(Cp * sc), PL = m.take<E>(Cp * sc);
    SmemCarve g = m;
    G = g.take<float>(Cp * sc);
    S = m.take<E>(round16(bv) * sk), dS = m.take<E>(round16(bv) * sk);
    D = m.take<E>(Cp * sv), dD = m.take<E>(Cp * sv), dO = m.take<E>(Cp * sv), V = m.take<E>(Cp * sv);
    if (g.bytes > m.bytes) m = g;
    rows = m.take<float>(Cp * 2 * tn);
    ruv = m.take<float>(Cp * nrc);
    vec = m.take<float>(7 * Cp + kGradWarps);
    total = m.bytes;
  }
};

template <class E, class TG, int NQ, int NP>
__global__ void __launch_bounds__(kGradThreads, 2)
    gdn_bwd_grads_kernel(E* __restrict__ dq, E* __restrict__ dk_out, float* __restrict__ dq_heads,
                         float* __restrict__ dk_heads, E* __restrict__ dv_out, TG* __restrict__ dbeta,
                         TG* __restrict__ dg, const E* __restrict__ q, const E* __restrict__ k,
                         const E* __restrict__ v, const TG* __restrict__ beta, const TG* __restrict__ g,
                         const E* __restrict__ d_o, const E* __restrict__ chunk_states, const E* __restrict__ t_inv,
                         const E* __restrict__ delta, const E* __restrict__ d_delta, const E* __restrict__ d_states,
                         GdnDims d, int bv, float scale) {
  extern __shared__ __align__(128) unsigned char smem[];
  const GdnGradLayout<E> ly(d.dk, bv, d.C);
  const int sk = ly.sk, sc = ly.sc, sv = ly.sv, Cp = ly.Cp, tn = ly.tn;
  E* K = reinterpret_cast<E*>(smem + ly.K);
  E* Q = reinterpret_cast<E*>(smem + ly.Q);
  E* Tb = reinterpret_cast<E*>(smem + ly.Tb);
  E* PL = reinterpret_cast<E*>(smem + ly.PL);
  E* S = reinterpret_cast<E*>(smem + ly.S);
  E* dS = reinterpret_cast<E*>(smem + ly.dS);
  E* D = reinterpret_cast<E*>(smem + ly.D);
  E* dD = reinterpret_cast<E*>(smem + ly.dD);
  E* dO = reinterpret_cast<E*>(smem + ly.dO);
  E* dRU = dO;
  E* V = reinterpret_cast<E*>(smem + ly.V);
  float* G = reinterpret_cast<float*>(smem + ly.G);
  float* rows = reinterpret_cast<float*>(smem + ly.rows);  // [Cp, 2 tn]: row sums per tile column
  float* ruv = reinterpret_cast<float*>(smem + ly.ruv);    // [Cp, ly.nrc]: rowsum(dRU o V) per tile column
  float* gam = reinterpret_cast<float*>(smem + ly.vec);
  float *bet = gam + Cp, *Gam = bet + Cp, *dend = Gam + Cp, *dgam = dend + Cp, *dbet = dgam + Cp, *gtmp = dbet + Cp;
  float* red = gtmp + Cp;

  const int kc = blockIdx.x, hv = blockIdx.y, b = blockIdx.z, dk = d.dk, dkp = round16(dk);
  const int tid = int(threadIdx.x), lane = tid % kWarp, warp = tid / kWarp;
  const int t0 = kc * d.C, L = min(d.C, d.Tn - t0);
  const int64_t bt0 = int64_t(b) * d.Tn + t0, head = int64_t(b) * d.Hv + hv;
  const int64_t QK = int64_t(d.H) * dk, DV = int64_t(d.Hv) * d.dv, qk_off = int64_t(hv / (d.Hv / d.H)) * dk;
  const E* cs = chunk_states + (head * d.NC + kc) * d.dv * dk;
  const E* dss = d_states + (head * d.NC + kc) * d.dv * dk;
  const E* dl = delta + (head * d.Tn + t0) * d.dv;
  const E* ddl = d_delta + (head * d.Tn + t0) * d.dv;
  load_rows<kGradThreads>(K, sk, Cp, dkp, k + bt0 * QK + qk_off, QK, L, dk, Unit{});
  load_rows<kGradThreads>(Q, sk, Cp, dkp, q + bt0 * QK + qk_off, QK, L, dk, Unit{});
  load_rows<kGradThreads>(Tb, sc, Cp, Cp, t_inv + (head * d.NC + kc) * d.C * d.C, d.C, L, L, Unit{});
  for (int i = tid; i < Cp * sc; i += kGradThreads) PL[i] = from_f32<E>(0.f);  // its upper tiles stay zero
  for (int i = tid; i < Cp; i += kGradThreads) dgam[i] = 0.f, dbet[i] = 0.f;
  for (int i = tid; i < Cp * ly.nrc; i += kGradThreads) ruv[i] = 0.f;
  load_gates<kGradThreads>(gam, bet, Gam, dend, g, beta, bt0, d.Hv, hv, L);

  // A finished dq / dk tile out: in fp32 per value head under GQA (summed over the group by
  // gdn_group_sum_kernel), else in place.
  const auto store_qk = [&](const float (&acc)[2][4], int m0, int n0, E* out, float* out_heads) {
    store_tile(acc, m0, n0, L, dk, [&](int r, int f, float x) {
      if (out_heads)
        out_heads[((bt0 + r) * d.Hv + hv) * dk + f] = x;
      else
        out[(bt0 + r) * QK + qk_off + f] = from_f32<E>(x);
    });
  };
  // This warp's tiles and their sums (dK, dQ then dRU S = -dRW, dP then dRU Delta^T = -dA).
  int tq[NQ], tp[NP];
  float ak[NQ][2][4], aq[NQ][2][4], ap[NP][2][4];
  const auto zero = [](int, int, float& x, float&) { x = 0.f; };
#pragma unroll
  for (int i = 0; i < NQ; ++i) {
    tq[i] = qk_tile(warp + kGradWarps * i, Cp, dkp);
    tile_zip(ak[i], ak[i], 0, 0, zero), tile_zip(aq[i], aq[i], 0, 0, zero);
  }
#pragma unroll
  for (int i = 0; i < NP; ++i) {
    tp[i] = lower_tile(warp + kGradWarps * i, Cp);
    tile_zip(ap[i], ap[i], 0, 0, zero);
  }

  // For each of this warp's lower tiles: the product X K^T (over dk) beside the tile's sum;
  // f(r, c, sum, product) -> (PL value, G value), into PL (storage type) and G (fp32).
  const auto lower_tiles_to_pl_g = [&](const E* X, auto f) {
#pragma unroll
    for (int i = 0; i < NP; ++i)
      if (tp[i] >= 0) {
        const int m0 = tile_m0(tp[i]), n0 = tile_n0(tp[i]);
        float prod[2][4] = {};
        warp_tile_mma(prod, smem_op(X, sk), m0, smem_op(K, sk), n0, dkp);
        tile_zip(ap[i], prod, m0, n0, [&](int r, int c, float& sum, float& x) {
          const float2 pg = f(r, c, sum, x);
          PL[r * sc + c] = from_f32<E>(pg.x);
          G[r * sc + c] = pg.y;
        });
      }
  };

  // Sums over the value tiles: dK = Delta dS, dQ = dOs S, dP = dOs Delta^T, <S, dS>.
  float ss = 0.f;
  for (int e0 = 0; e0 < d.dv; e0 += bv) {
    const int nv = min(bv, d.dv - e0), nvp = round16(nv);
    load_rows<kGradThreads>(S, sk, nvp, dkp, cs + int64_t(e0) * dk, dk, nv, dk, Unit{});
    load_rows<kGradThreads>(dS, sk, nvp, dkp, dss + int64_t(e0) * dk, dk, nv, dk, Unit{});
    load_rows<kGradThreads>(D, sv, Cp, nvp, dl + e0, d.dv, L, nv, Unit{});
    load_rows<kGradThreads>(dO, sv, Cp, nvp, d_o + bt0 * DV + int64_t(hv) * d.dv + e0, DV, L, nv,
                            [&](int) { return scale; });
    publish();
#pragma unroll
    for (int i = 0; i < NQ; ++i)
      if (tq[i] >= 0) {
        warp_tile_mma2(ak[i], smem_op(D, sv), smem_op_t(dS, sk), aq[i], smem_op(dO, sv), smem_op_t(S, sk),
                       tile_m0(tq[i]), tile_n0(tq[i]), nvp);
      }
#pragma unroll
    for (int i = 0; i < NP; ++i)
      if (tp[i] >= 0) warp_tile_mma(ap[i], smem_op(dO, sv), tile_m0(tp[i]), smem_op(D, sv), tile_n0(tp[i]), nvp);
    ss += dot_partial<kGradThreads>(S, dS, sk, nvp, dkp);  // both zero-padded (load_rows)
    __syncthreads();
  }
  ss = warp_sum(ss);
  if (lane == 0) red[warp] = ss;
  // dK = diag(dend) Delta dS and dQ = diag(Gam) dOs S with their row sums of K o dK, Q o dQ;
  // with P = Q K^T o decay: G = dP o P (in the value region, free now), dPd = dP o decay
  // (lower) into PL.
#pragma unroll
  for (int i = 0; i < NQ; ++i)
    if (tq[i] >= 0) {
      const int m0 = tile_m0(tq[i]), n0 = tile_n0(tq[i]);
      tile_zip(ak[i], aq[i], m0, n0, [&](int m, int, float& x, float& y) {
        x = m < L ? dend[m] * x : 0.f, y = m < L ? Gam[m] * y : 0.f;
      });
      tile_row_sums(ak[i], m0, n0, rows + n0 / 16, 2 * tn,
                    [&](int m, int n, float x) { return to_f32(K[m * sk + n]) * x; });
      tile_row_sums(aq[i], m0, n0, rows + tn + n0 / 16, 2 * tn,
                    [&](int m, int n, float x) { return to_f32(Q[m * sk + n]) * x; });
    }
  lower_tiles_to_pl_g(Q, [&](int r, int c, float dp, float qk) {
    float pd = 0.f, gg = 0.f;
    if (c <= r && r < L) pd = dp * expf(gam[r] - gam[c]), gg = pd * qk;
    return make_float2(pd, gg);
  });
  __syncthreads();
  // dgam += rowsum(Q o dQ) - rowsum(K o dK) + rowsum(G) - colsum(G);
  // dgam_{L-1} += Gam_{L-1} <S, dS> + sum_i rowsum(K o dK)_i.
  for (int i = warp; i < L; i += kGradWarps) {
    float gs = 0.f;
    for (int j = lane; j <= i; j += kWarp) gs += G[i * sc + j];
    for (int r = i + lane; r < L; r += kWarp) gs -= G[r * sc + i];
    gs = warp_sum(gs);
    if (lane == 0) {
      float ge = 0.f, gq = 0.f;
      for (int c = 0; c < tn; ++c) ge += rows[i * 2 * tn + c], gq += rows[i * 2 * tn + tn + c];
      gtmp[i] = ge, dgam[i] += gq + gs - ge;
    }
  }
  __syncthreads();
  if (tid == 0) {
    float s = 0.f, ge = 0.f;
    for (int w = 0; w < kGradWarps; ++w) s += red[w];
    for (int i = 0; i < L; ++i) ge += gtmp[i];
    dgam[L - 1] += Gam[L - 1] * s + ge;
  }
  // dQ += dPd K, dK += dPd^T Q; dq is complete: out. dQ's registers start dRU S, dP's dRU Delta^T.
#pragma unroll
  for (int i = 0; i < NQ; ++i)
    if (tq[i] >= 0) {
      const int m0 = tile_m0(tq[i]), n0 = tile_n0(tq[i]);
      warp_tile_mma2(ak[i], smem_op_t(PL, sc), smem_op_t(Q, sk), aq[i], smem_op(PL, sc), smem_op_t(K, sk), m0, n0, Cp);
      store_qk(aq[i], m0, n0, dq, dq_heads);
      tile_zip(aq[i], aq[i], 0, 0, zero);
    }
#pragma unroll
  for (int i = 0; i < NP; ++i) tile_zip(ap[i], ap[i], 0, 0, zero);
  __syncthreads();  // PL and G are read: the value region is free again

  const bool dv_pairs = d.dv % 2 == 0 && reinterpret_cast<uintptr_t>(dv_out) % 4 == 0;
  // Sums over the value tiles through dRU = T^T dDelta: dV = diag(beta) dRU, dRU S (= -dRW),
  // dRU Delta^T (= -dA before the mask), dbeta += rowsum(dRU o V).
  for (int e0 = 0; e0 < d.dv; e0 += bv) {
    const int nv = min(bv, d.dv - e0), nvp = round16(nv);
    const int64_t v_off = int64_t(hv) * d.dv + e0;
    load_rows<kGradThreads>(S, sk, nvp, dkp, cs + int64_t(e0) * dk, dk, nv, dk, Unit{});
    load_rows<kGradThreads>(D, sv, Cp, nvp, dl + e0, d.dv, L, nv, Unit{});
    load_rows<kGradThreads>(dD, sv, Cp, nvp, ddl + e0, d.dv, L, nv, Unit{});
    load_rows<kGradThreads>(V, sv, Cp, nvp, v + bt0 * DV + v_off, DV, L, nv, Unit{});
    publish();
    // dRU tile by tile, zero outside L x nv (T and dDelta are zero-padded), whole into dRU; dV
    // out; the tile's rows of dRU o V (dRU rounded, as the products use it) summed into its
    // column of ruv: one writer per entry in a pass, passes apart by barriers.
    for_each_tile<kGradThreads>(Cp, nvp, [&](int m0, int n0) {
      float acc[2][4] = {};
      warp_tile_mma(acc, smem_op_t(Tb, sc), m0, smem_op_t(dD, sv), n0, Cp);
      const int gq = lane / 4, t = lane % 4;
#pragma unroll
      for (int j = 0; j < 2; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int r = m0 + gq + 8 * h, e = n0 + 8 * j + 2 * t;
          const float x0 = acc[j][2 * h], x1 = acc[j][2 * h + 1];
          store_pair(dRU + r * sv + e, x0, x1, true, true);  // sv and e even
          if (r < L && e < nv)
            store_pair(dv_out + (bt0 + r) * DV + v_off + e, bet[r] * x0, bet[r] * x1, e + 1 < nv, dv_pairs);
        }
      tile_row_sums<true>(acc, m0, n0, ruv + n0 / 16, ly.nrc,
                          [&](int m, int n, float x) { return to_f32(from_f32<E>(x)) * to_f32(V[m * sv + n]); });
    });
    __syncthreads();
#pragma unroll
    for (int i = 0; i < NQ; ++i)
      if (tq[i] >= 0) warp_tile_mma(aq[i], smem_op(dRU, sv), tile_m0(tq[i]), smem_op_t(S, sk), tile_n0(tq[i]), nvp);
#pragma unroll
    for (int i = 0; i < NP; ++i)
      if (tp[i] >= 0) warp_tile_mma(ap[i], smem_op(dRU, sv), tile_m0(tp[i]), smem_op(D, sv), tile_n0(tp[i]), nvp);
    __syncthreads();
  }
  // dRW = -(dRU S): row sums of dRW o K; dK += diag(beta Gam) dRW. dA = -strictly_lower(dRU
  // Delta^T); with KKd = K K^T o decay: G = dA o KKd, dKK = diag(beta) (dA o decay) into PL.
#pragma unroll
  for (int i = 0; i < NQ; ++i)
    if (tq[i] >= 0) {
      const int m0 = tile_m0(tq[i]), n0 = tile_n0(tq[i]);
      tile_row_sums(aq[i], m0, n0, rows + n0 / 16, 2 * tn,
                    [&](int m, int n, float x) { return -x * to_f32(K[m * sk + n]); });
      tile_zip(ak[i], aq[i], m0, n0, [&](int m, int, float& x, float& ru_s) {
        if (m < L) x -= bet[m] * Gam[m] * ru_s;
      });
    }
  lower_tiles_to_pl_g(K, [&](int r, int c, float ru_d, float kk) {
    float dkk = 0.f, gg = 0.f;
    if (c < r && r < L) {
      const float da = -ru_d, dec = expf(gam[r] - gam[c]);
      dkk = bet[r] * da * dec, gg = da * kk * dec;
    }
    return make_float2(dkk, gg);
  });
  __syncthreads();
  // dbeta += Gam rowsum(dRW o K) + rowsum(G); dgam += beta Gam rowsum(dRW o K) + beta rowsum(G)
  // - colsum(diag(beta) G)   (A = strictly_lower(diag(beta) KKd)).
  for (int i = warp; i < L; i += kGradWarps) {
    float sb = 0.f, sc_ = 0.f;
    for (int j = lane; j < i; j += kWarp) sb += G[i * sc + j];
    for (int r = i + 1 + lane; r < L; r += kWarp) sc_ += bet[r] * G[r * sc + i];
    sb = warp_sum(sb), sc_ = warp_sum(sc_);
    if (lane == 0) {
      float tw = 0.f, tv = 0.f;  // rowsum(dRW o K), rowsum(dRU o V)
      for (int c = 0; c < tn; ++c) tw += rows[i * 2 * tn + c];
      for (int c = 0; c < ly.nrc; ++c) tv += ruv[i * ly.nrc + c];
      dbet[i] += Gam[i] * tw + sb + tv, dgam[i] += bet[i] * Gam[i] * tw + bet[i] * sb - sc_;
    }
  }
  // dK += (dKK + dKK^T) K; dk is complete: out.
#pragma unroll
  for (int i = 0; i < NQ; ++i)
    if (tq[i] >= 0) {
      const int m0 = tile_m0(tq[i]), n0 = tile_n0(tq[i]);
      warp_tile_mma2(ak[i], smem_op(PL, sc), smem_op_t(K, sk), ak[i], smem_op_t(PL, sc), smem_op_t(K, sk), m0, n0, Cp);
      store_qk(ak[i], m0, n0, dk_out, dk_heads);
    }
  __syncthreads();
  // dg = reverse cumulative sum of dgam over the chunk (gam = cumsum(g)).
  if (tid == 0) {
    float run = 0.f;
    for (int i = L - 1; i >= 0; --i) {
      dg[(bt0 + i) * d.Hv + hv] = from_f32<TG>(run += dgam[i]);
      dbeta[(bt0 + i) * d.Hv + hv] = from_f32<TG>(dbet[i]);
    }
  }
}

// GQA: dq, dk of q/k head h = sum of its value heads' (in order). n = B Tn H dk.
template <class T>
__global__ void gdn_group_sum_kernel(T* __restrict__ dq, T* __restrict__ dk, const float* __restrict__ dq_heads,
                                     const float* __restrict__ dk_heads, int64_t n, int H, int group, int dkd) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= n) return;
  const int c = int(idx % dkd);
  const int64_t row = idx / dkd, bt = row / H;
  const int h = int(row % H);
  float sq = 0.f, sk = 0.f;
  for (int j = 0; j < group; ++j) {
    const int64_t src = (bt * H * group + int64_t(h) * group + j) * dkd + c;
    sq += dq_heads[src], sk += dk_heads[src];
  }
  dq[idx] = from_f32<T>(sq), dk[idx] = from_f32<T>(sk);
}

GdnDims gdn_dims(const GdnConfig& c, int64_t Tn) {
  return GdnDims{int(Tn), int(c.n_heads), int(c.n_v_heads), int(c.d_head_k), int(c.d_head_v), int(c.chunk_size),
                 int(c.n_chunks(Tn))};
}

void check_core(const char* fn, const GdnConfig& c, int64_t B, int64_t Tn) {
  c.validate();
  if (c.chunk_size <= 0 || c.chunk_size > kMaxChunk)
    throw std::invalid_argument(std::string(fn) + " (CUDA): chunk_size = " + std::to_string(c.chunk_size) +
                                "; the device runs the chunked form with 1 <= chunk_size <= " +
                                std::to_string(kMaxChunk));
  if (Tn >= (int64_t(1) << 30) || B >= 65536 || c.n_v_heads >= 65536)
    throw std::invalid_argument(shape_str(std::string(fn) + ": too large; B, Tn, Hv", B, Tn, c.n_v_heads));
}

// Value-tile width of a per-chunk kernel: the widest of 64, 32, 16 columns whose shared
// memory fits `budget` (> 0: e.g. half an SM's, for two blocks per SM), else the widest that
// fits the device; throws naming the need when none does.
template <class Layout>
int value_tile(const GdnDims& d, int max_smem, const std::string& shapes, const char* kernel, int budget = 0,
               int widest = 64) {
  for (int limit : {budget, max_smem})
    for (int bv : {widest, 64, 32, 16}) {
      if (bv > widest) continue;
      const int w = std::min(bv, round16(d.dv));
      if (limit > 0 && Layout(d.dk, w, d.C).total <= size_t(limit)) return w;
    }
  throw std::invalid_argument(shapes + ": " + kernel + " needs " + std::to_string(Layout(d.dk, 16, d.C).total) +
                              " bytes of shared memory per block even at 16 value columns, more than the device's " +
                              std::to_string(max_smem));
}

// Opts kernel in to `bytes` of dynamic shared memory; throws naming the kernel if the device has less.
template <class Kernel>
void set_smem(Kernel kernel, size_t bytes, int max_smem, const std::string& shapes, const char* name) {
  if (bytes > size_t(max_smem))
    throw std::invalid_argument(shapes + ": " + name + " needs " + std::to_string(bytes) +
                                " bytes of shared memory per block, more than the device's " +
                                std::to_string(max_smem));
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)), shapes);
}

int max_smem_per_block(const Context& ctx, const std::string& shapes) {
  int max_smem = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, ctx.device), shapes);
  return max_smem;
}

// Shared memory per block with which two blocks fit on one SM (each block reserves 1 KB).
int half_sm_smem(const Context& ctx, const std::string& shapes) {
  int per_sm = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, ctx.device), shapes);
  return per_sm / 2 - 1024;
}

// The state passes over chunks: for bf16 storage and dk <= 128 the register kernels, else the
// shared-memory kernels (fp32 storage keeps exact FMAs; a wider state would not fit a warp's
// registers). with_state_k_tiles calls launch with NK = round16(dk) / 16 as a compile-time
// count (std::integral_constant), so that the state's fragments stay in registers.
constexpr int kStateRegsMaxK = 8;
template <class T>
bool state_in_registers(const GdnDims& d) {
  return std::is_same_v<T, bf16> && round16(d.dk) <= 16 * kStateRegsMaxK;
}
template <int NK = 1, class Launch>
void with_state_k_tiles(int dk, const Launch& launch) {
  if constexpr (NK < kStateRegsMaxK) {
    if (round16(dk) / 16 != NK) return with_state_k_tiles<NK + 1>(dk, launch);
  }
  launch(std::integral_constant<int, NK>{});
}

void launch_fwd_state_regs(Context& ctx, bf16* chunk_states, bf16* ud, const bf16* k, const bf16* w, const float* gam,
                           const GdnDims& d, int B, int max_smem, const std::string& shapes) {
  with_state_k_tiles(d.dk, [&](auto nk) {
    const auto kernel = gdn_fwd_state_regs_kernel<kStateRegsStages, decltype(nk)::value>;
    const GdnStateRegsLayout ly(d.dk, d.C, kStateRegsStages, kStateRegsWarps, false);
    set_smem(kernel, ly.total, max_smem, shapes, "gdn_fwd_state_regs_kernel");
    const dim3 grid(unsigned(ceil_div(d.dv, ly.cols)), unsigned(d.Hv), unsigned(B));
    kernel<<<grid, kStateRegsWarps * kWarp, ly.total, ctx.stream>>>(chunk_states, ud, k, w, gam, d);
    CUDA_CHECK_LAUNCH("gdn_fwd_state_regs_kernel", shapes);
  });
}

// The backward register pass takes 4 warps per block, or 3 where that lets two blocks share
// an SM and 4 does not (dk 96 at chunk 64: 117 KB of shared memory at 4 warps, 110 KB at 3):
// the pass is a chain of dependent chunk steps, and a second block hides its latencies
// (H100, B4 T4096 H16: backward 4.42 ms at 3 warps, 4.80 ms at 4; bench/RESULTS.md).
void launch_bwd_state_regs(Context& ctx, bf16* d_states, bf16* d_delta, const bf16* q, const bf16* k, const bf16* w,
                           const float* gam, const bf16* d_o, const GdnDims& d, int B, float scale, int max_smem,
                           int half_sm, const std::string& shapes) {
  const auto layout = [&](int warps) { return GdnStateRegsLayout(d.dk, d.C, kStateRegsStages, warps, true); };
  const int warps = layout(4).total > size_t(half_sm) && layout(3).total <= size_t(half_sm) ? 3 : 4;
  with_state_k_tiles(d.dk, [&](auto nk) {
    const auto run = [&](auto kernel, int nwarps) {
      const GdnStateRegsLayout ly = layout(nwarps);
      set_smem(kernel, ly.total, max_smem, shapes, "gdn_bwd_state_regs_kernel");
      const dim3 grid(unsigned(ceil_div(d.dv, ly.cols)), unsigned(d.Hv), unsigned(B));
      kernel<<<grid, nwarps * kWarp, ly.total, ctx.stream>>>(d_states, d_delta, q, k, w, gam, d_o, d, scale);
      CUDA_CHECK_LAUNCH("gdn_bwd_state_regs_kernel", shapes);
    };
    constexpr int NK = decltype(nk)::value;
    if (warps == 3) run(gdn_bwd_state_regs_kernel<kStateRegsStages, NK, 3>, 3);
    else run(gdn_bwd_state_regs_kernel<kStateRegsStages, NK, 4>, 4);
  });
}

template <class T, class TG>
void chunk_forward(Context& ctx, const GdnConfig& c, T* o, T* chunk_states, T* t_inv, const T* q, const T* k,
                   const T* v, const TG* beta, const TG* g, int64_t B, int64_t Tn) {
  check_core("gdn_chunk_forward", c, B, Tn);
  if (B <= 0 || Tn <= 0) return;
  const GdnDims d = gdn_dims(c, Tn);
  const std::string shapes = shape_str("gdn_chunk_forward B, Tn, H, Hv, dk, dv, chunk", B, Tn, c.n_heads,
                                       c.n_v_heads, c.d_head_k, c.d_head_v, c.chunk_size);
  const int max_smem = max_smem_per_block(ctx, shapes);
  // All value columns in one tile where two blocks per SM still fit (one wait for global
  // memory per chunk), else the widest tile that does.
  const int budget = half_sm_smem(ctx, shapes), widest = round16(d.dv);
  const int bv_wy = value_tile<GdnWyLayout<T>>(d, max_smem, shapes, "gdn_fwd_wy_kernel", budget, widest);
  const int bv_out = value_tile<GdnOutLayout<T>>(d, max_smem, shapes, "gdn_fwd_output_kernel", budget, widest);
  const size_t smem_wy = GdnWyLayout<T>(d.dk, bv_wy, d.C).total, smem_state = GdnStatePassLayout<T>(d.dk, d.C, 1).total,
               smem_out = GdnOutLayout<T>(d.dk, bv_out, d.C).total;
  set_smem(gdn_fwd_wy_kernel<T, TG>, smem_wy, max_smem, shapes, "gdn_fwd_wy_kernel");
  set_smem(gdn_fwd_state_kernel<T, TG>, smem_state, max_smem, shapes, "gdn_fwd_state_kernel");
  set_smem(gdn_fwd_output_kernel<T, TG>, smem_out, max_smem, shapes, "gdn_fwd_output_kernel");

  ArenaScope scope(ctx.scratch);
  const int64_t heads = B * c.n_v_heads;
  T* w = ctx.scratch.alloc<T>(heads * Tn * d.dk, "gdn forward W");
  T* ud = ctx.scratch.alloc<T>(heads * Tn * d.dv, "gdn forward U, then Delta");
  float* gam = ctx.scratch.alloc<float>(heads * d.NC * round16(d.C), "gdn forward gam = cumsum(g) per chunk");
  const float scale = float(1.0 / std::sqrt(double(c.d_head_k)));
  const dim3 per_chunk(unsigned(d.NC), unsigned(c.n_v_heads), unsigned(B));
  gdn_fwd_wy_kernel<T, TG><<<per_chunk, kChunkThreads, smem_wy, ctx.stream>>>(t_inv, w, ud, gam, k, v, beta, g, d,
                                                                                  bv_wy);
  CUDA_CHECK_LAUNCH("gdn_fwd_wy_kernel", shapes);
  if constexpr (std::is_same_v<T, bf16>) {
    if (state_in_registers<T>(d)) launch_fwd_state_regs(ctx, chunk_states, ud, k, w, gam, d, int(B), max_smem, shapes);
  }
  if (!state_in_registers<T>(d)) {
    gdn_fwd_state_kernel<T, TG>
        <<<dim3(unsigned(ceil_div(d.dv, kStateCols)), unsigned(c.n_v_heads), unsigned(B)), kStateThreads, smem_state,
           ctx.stream>>>(chunk_states, ud, k, w, g, d);
    CUDA_CHECK_LAUNCH("gdn_fwd_state_kernel", shapes);
  }
  gdn_fwd_output_kernel<T, TG><<<per_chunk, kChunkThreads, smem_out, ctx.stream>>>(o, q, k, g, chunk_states, ud, d,
                                                                                     bv_out, scale);
  CUDA_CHECK_LAUNCH("gdn_fwd_output_kernel", shapes);
}

template <class T, class TG>
void chunk_backward(Context& ctx, const GdnConfig& c, T* dq, T* dk, T* dv, TG* dbeta, TG* dg, const T* d_o,
                    const T* q, const T* k, const T* v, const TG* beta, const TG* g, const T* chunk_states,
                    const T* t_inv, int64_t B, int64_t Tn) {
  check_core("gdn_chunk_backward", c, B, Tn);
  if (B <= 0 || Tn <= 0) return;
  const GdnDims d = gdn_dims(c, Tn);
  const std::string shapes = shape_str("gdn_chunk_backward B, Tn, H, Hv, dk, dv, chunk", B, Tn, c.n_heads,
                                       c.n_v_heads, c.d_head_k, c.d_head_v, c.chunk_size);
  const int max_smem = max_smem_per_block(ctx, shapes);
  const int bv_prep = value_tile<GdnPrepLayout<T>>(d, max_smem, shapes, "gdn_bwd_prepare_kernel",
                                                   half_sm_smem(ctx, shapes));
  const int pairs = grad_pairs(d.dk, d.C);
  if (pairs > kMaxGradPairs || grad_p_tiles(d.C) > kGradPTiles)
    throw std::invalid_argument(shapes + ": gdn_bwd_grads_kernel holds dK and dQ in " +
                                std::to_string(kMaxGradPairs) + " register tile pairs per warp at most (d_head_k <= " +
                                "160 at chunk 64); this d_head_k and chunk_size need " + std::to_string(pairs));
  const int bv_grad = value_tile<GdnGradLayout<T>>(d, max_smem, shapes, "gdn_bwd_grads_kernel",
                                                   half_sm_smem(ctx, shapes));
  const size_t smem_prep = GdnPrepLayout<T>(d.dk, bv_prep, d.C).total;
  const size_t smem_state = GdnStatePassLayout<T>(d.dk, d.C, 2).total;
  const size_t smem_grad = GdnGradLayout<T>(d.dk, bv_grad, d.C).total;
  set_smem(gdn_bwd_prepare_kernel<T, TG>, smem_prep, max_smem, shapes, "gdn_bwd_prepare_kernel");
  set_smem(gdn_bwd_state_kernel<T, TG>, smem_state, max_smem, shapes, "gdn_bwd_state_kernel");
  auto grads_kernel = pairs <= 3 ? gdn_bwd_grads_kernel<T, TG, 3, kGradPTiles>
                                 : gdn_bwd_grads_kernel<T, TG, kMaxGradPairs, kGradPTiles>;
  set_smem(grads_kernel, smem_grad, max_smem, shapes, "gdn_bwd_grads_kernel");

  ArenaScope scope(ctx.scratch);
  const int64_t heads = B * c.n_v_heads, NC = d.NC;
  T* w = ctx.scratch.alloc<T>(heads * Tn * d.dk, "gdn backward W");
  T* delta = ctx.scratch.alloc<T>(heads * Tn * d.dv, "gdn backward Delta");
  T* d_delta = ctx.scratch.alloc<T>(heads * Tn * d.dv, "gdn backward dDelta");
  T* d_states = ctx.scratch.alloc<T>(heads * NC * d.dv * d.dk, "gdn backward dS per chunk");
  float* gam = ctx.scratch.alloc<float>(heads * NC * round16(d.C), "gdn backward gam = cumsum(g) per chunk");
  const int64_t group = c.n_v_heads / c.n_heads, per_heads = B * Tn * c.n_v_heads * c.d_head_k;
  float* dq_heads = group > 1 ? ctx.scratch.alloc<float>(per_heads, "gdn backward dq per value head") : nullptr;
  float* dk_heads = group > 1 ? ctx.scratch.alloc<float>(per_heads, "gdn backward dk per value head") : nullptr;

  const float scale = float(1.0 / std::sqrt(double(c.d_head_k)));
  const dim3 per_chunk(unsigned(NC), unsigned(c.n_v_heads), unsigned(B));
  gdn_bwd_prepare_kernel<T, TG><<<per_chunk, kPrepThreads, smem_prep, ctx.stream>>>(
      w, delta, d_delta, gam, t_inv, q, k, v, beta, g, d_o, chunk_states, d, bv_prep, scale);
  CUDA_CHECK_LAUNCH("gdn_bwd_prepare_kernel", shapes);
  const bool regs = state_in_registers<T>(d);
  if constexpr (std::is_same_v<T, bf16>) {
    if (regs)
      launch_bwd_state_regs(ctx, d_states, d_delta, q, k, w, gam, d_o, d, int(B), scale, max_smem,
                            half_sm_smem(ctx, shapes), shapes);
  }
  if (!regs) {
    gdn_bwd_state_kernel<T, TG>
        <<<dim3(unsigned(ceil_div(d.dv, kStateCols)), unsigned(c.n_v_heads), unsigned(B)), kStateThreads, smem_state,
           ctx.stream>>>(d_states, d_delta, q, k, w, g, d_o, d, scale);
    CUDA_CHECK_LAUNCH("gdn_bwd_state_kernel", shapes);
  }
  grads_kernel<<<per_chunk, kGradThreads, smem_grad, ctx.stream>>>(
      dq, dk, dq_heads, dk_heads, dv, dbeta, dg, q, k, v, beta, g, d_o, chunk_states, t_inv, delta, d_delta, d_states,
      d, bv_grad, scale);
  CUDA_CHECK_LAUNCH("gdn_bwd_grads_kernel", shapes);
  if (group > 1) {
    const int64_t n = B * Tn * c.n_heads * c.d_head_k;
    gdn_group_sum_kernel<T><<<unsigned(ceil_div(n, 256)), 256, 0, ctx.stream>>>(
        dq, dk, dq_heads, dk_heads, n, int(c.n_heads), int(group), int(c.d_head_k));
    CUDA_CHECK_LAUNCH("gdn_group_sum_kernel", shapes);
  }
}

}  // namespace

// Scratch of gdn_chunk_forward: W and U (then Delta) in the storage type (plus the arena's alignment).
size_t gdn_chunk_forward_scratch_bytes(const GdnConfig& c, int64_t B, int64_t Tn, size_t storage_bytes) {
  const size_t heads = size_t(B * c.n_v_heads), gam = sizeof(float) * heads * size_t(c.n_chunks(Tn) * round16(int(c.chunk_size)));
  return storage_bytes * heads * size_t(Tn * (c.d_head_k + c.d_head_v)) + gam + 3 * DeviceArena::round_up(1);
}

// Scratch of gdn_chunk_backward: W, Delta, dDelta, dS per chunk in the storage type, fp32 gam
// per chunk, and per-value-head fp32 dq, dk under GQA (plus the arena's alignment).
size_t gdn_chunk_backward_scratch_bytes(const GdnConfig& c, int64_t B, int64_t Tn, size_t storage_bytes) {
  const int64_t heads = B * c.n_v_heads, NC = c.n_chunks(Tn), C = c.chunk_size;
  size_t n = storage_bytes * size_t(heads * (Tn * (c.d_head_k + 2 * c.d_head_v) + NC * c.d_head_v * c.d_head_k));
  n += sizeof(float) * size_t(heads * NC * round16(int(C)));  // gam per chunk
  if (c.n_v_heads > c.n_heads) n += 2 * sizeof(float) * size_t(heads * Tn * c.d_head_k);
  return n + 7 * DeviceArena::round_up(1);
}

template <class T>
void gdn_chunk_forward(Context& ctx, const GdnConfig& c, T* o, T* chunk_states, T* t_inv, const T* q, const T* k,
                       const T* v, const T* beta, const T* g, int64_t B, int64_t Tn) {
  chunk_forward<T, T>(ctx, c, o, chunk_states, t_inv, q, k, v, beta, g, B, Tn);
}

template <class T>
void gdn_chunk_backward(Context& ctx, const GdnConfig& c, T* dq, T* dk, T* dv, T* dbeta, T* dg, const T* d_o,
                        const T* q, const T* k, const T* v, const T* beta, const T* g, const T* chunk_states,
                        const T* t_inv, int64_t B, int64_t Tn) {
  chunk_backward<T, T>(ctx, c, dq, dk, dv, dbeta, dg, d_o, q, k, v, beta, g, chunk_states, t_inv, B, Tn);
}

// ---- the full layer -------------------------------------------------------------------

namespace {

constexpr int kRowsPerBlock = 8;  // row kernels: one warp per (token, head) row

// In place: x[n, :] *= r = 1 / sqrt(sum x[n, :]^2 + eps) for rows of d elements (fla's
// l2norm, per q/k head); r saved in fp32.
__global__ void l2norm_forward_kernel(bf16* __restrict__ x, float* __restrict__ rstd, int64_t rows, int d, float eps) {
  const int lane = threadIdx.x % kWarp;
  const int64_t n = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  if (n >= rows) return;
  bf16* xr = x + n * d;
  float ss = 0.f;
  for (int i = lane; i < d; i += kWarp) ss += to_f32(xr[i]) * to_f32(xr[i]);
  const float r = 1.f / sqrtf(warp_sum(ss) + eps);
  if (lane == 0) rstd[n] = r;
  for (int i = lane; i < d; i += kWarp) xr[i] = from_f32<bf16>(to_f32(xr[i]) * r);
}

// In place: dxn (gradient w.r.t. xn = x r) -> dx = r (dxn - xn (xn . dxn)).
__global__ void l2norm_backward_kernel(bf16* __restrict__ dx, const bf16* __restrict__ xn,
                                       const float* __restrict__ rstd, int64_t rows, int d) {
  const int lane = threadIdx.x % kWarp;
  const int64_t n = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  if (n >= rows) return;
  bf16* dr = dx + n * d;
  const bf16* xr = xn + n * d;
  float m = 0.f;
  for (int i = lane; i < d; i += kWarp) m += to_f32(xr[i]) * to_f32(dr[i]);
  m = warp_sum(m);
  const float r = rstd[n];
  for (int i = lane; i < d; i += kWarp) dr[i] = from_f32<bf16>(r * (to_f32(dr[i]) - to_f32(xr[i]) * m));
}

// In place on the projections' fp32 outputs: beta = s sigmoid(beta) (s = 2 with negative
// eigenvalues); g = -exp(A_log) softplus(a_in + dt_bias) (softplus as core/cpu/math.h).
__global__ void beta_decay_forward_kernel(float* __restrict__ beta, float* __restrict__ g,
                                          const float* __restrict__ a_in, const bf16* __restrict__ A_log,
                                          const bf16* __restrict__ dt_bias, int64_t n, int Hv, float beta_scale) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int h = int(i % Hv);
  beta[i] = beta_scale * sigmoid_f32(beta[i]);
  const float u = a_in[i] + to_f32(dt_bias[h]);
  g[i] = -expf(to_f32(A_log[h])) * (u > 20.f ? u : log1pf(expf(u)));
}

// Per value head h (one block each, tokens in a fixed order, then a fixed tree): the inputs'
// gradients of the b and a projections, d_b = dbeta beta (1 - beta / s) and
// d_a = -dg exp(A_log) sigmoid(a_in + dt_bias) (bf16, for the GEMMs), and
// A_log += sum dg g, dt_bias += sum d_a (fp32).
__global__ void beta_decay_backward_kernel(bf16* __restrict__ d_b, bf16* __restrict__ d_a,
                                           float* __restrict__ grad_A_log, float* __restrict__ grad_dt_bias,
                                           const float* __restrict__ dbeta, const float* __restrict__ dg,
                                           const float* __restrict__ beta, const float* __restrict__ g,
                                           const float* __restrict__ a_in, const bf16* __restrict__ A_log,
                                           const bf16* __restrict__ dt_bias, int64_t BT, int Hv, float beta_scale) {
  __shared__ float red[2][kThreads / kWarp];
  const int h = blockIdx.x, tid = threadIdx.x;
  const float A = expf(to_f32(A_log[h])), dt = to_f32(dt_bias[h]);
  float s_alog = 0.f, s_dt = 0.f;
  for (int64_t bt = tid; bt < BT; bt += kThreads) {
    const int64_t i = bt * Hv + h;
    const float bb = beta[i], da = -dg[i] * A * sigmoid_f32(a_in[i] + dt);
    d_b[i] = from_f32<bf16>(dbeta[i] * bb * (1.f - bb / beta_scale));
    d_a[i] = from_f32<bf16>(da);
    s_alog += dg[i] * g[i], s_dt += da;
  }
  s_alog = warp_sum(s_alog), s_dt = warp_sum(s_dt);
  if (tid % kWarp == 0) red[0][tid / kWarp] = s_alog, red[1][tid / kWarp] = s_dt;
  __syncthreads();
  if (tid == 0) {
    float a = 0.f, t = 0.f;
    for (int w = 0; w < kThreads / kWarp; ++w) a += red[0][w], t += red[1][w];
    grad_A_log[h] += a, grad_dt_bias[h] += t;
  }
}

// Gated RMSNorm per (token, value head) row of dv: o' = o r w silu(gate), r = 1 / sqrt(mean(o^2) + eps).
// A warp per row, each lane W consecutive values at a time (W = 8: 16-byte accesses, where
// dv and the arrays allow; two-byte loads left it at half the memory bandwidth).
template <int W>
__global__ void gated_rmsnorm_forward_kernel(bf16* __restrict__ o_gated, float* __restrict__ rstd,
                                             const bf16* __restrict__ o, const bf16* __restrict__ gate,
                                             const bf16* __restrict__ w, int64_t rows, int dv, float eps) {
  const int lane = threadIdx.x % kWarp;
  const int64_t n = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  if (n >= rows) return;
  const bf16 *orow = o + n * dv, *grow = gate + n * dv;
  float ss = 0.f;
  for (int j = lane * W; j < dv; j += kWarp * W) {
    float x[W];
    load_w<W>(orow + j, x);
#pragma unroll
    for (int u = 0; u < W; ++u) ss += x[u] * x[u];
  }
  const float r = 1.f / sqrtf(warp_sum(ss) / float(dv) + eps);
  if (lane == 0) rstd[n] = r;
  for (int j = lane * W; j < dv; j += kWarp * W) {
    float x[W], gt[W], wj[W], y[W];
    load_w<W>(orow + j, x), load_w<W>(grow + j, gt), load_w<W>(w + j, wj);
#pragma unroll
    for (int u = 0; u < W; ++u) y[u] = x[u] * r * wj[u] * silu_f32(gt[u]);
    store_w<W>(o_gated + n * dv + j, y);
  }
}

// Its backward with n = o r, z = silu(gate): d_gate = do' n w silu'(gate); dn = do' w z;
// d_o = r (dn - n mean(dn n)). d_og is overwritten with do' z, so that the o_norm gradient
// sum(do' z n) is rmsnorm_backward's dw of (dout = do' z, x = o, rstd = r).
template <int W>
__global__ void gated_rmsnorm_backward_kernel(bf16* __restrict__ d_o, bf16* __restrict__ d_gate,
                                              bf16* __restrict__ d_og, const bf16* __restrict__ o,
                                              const bf16* __restrict__ gate, const bf16* __restrict__ w,
                                              const float* __restrict__ rstd, int64_t rows, int dv) {
  const int lane = threadIdx.x % kWarp;
  const int64_t n = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  if (n >= rows) return;
  const float r = rstd[n];
  const int64_t row = n * dv;
  float m = 0.f;
  for (int j = lane * W; j < dv; j += kWarp * W) {
    float dog[W], gt[W], wj[W], x[W];
    load_w<W>(d_og + row + j, dog), load_w<W>(gate + row + j, gt), load_w<W>(w + j, wj), load_w<W>(o + row + j, x);
#pragma unroll
    for (int u = 0; u < W; ++u) m += dog[u] * wj[u] * silu_f32(gt[u]) * x[u] * r;
  }
  m = warp_sum(m) / float(dv);
  for (int j = lane * W; j < dv; j += kWarp * W) {
    float dog[W], gt[W], wj[W], x[W], dgate[W], dx[W], dz[W];
    load_w<W>(d_og + row + j, dog), load_w<W>(gate + row + j, gt), load_w<W>(w + j, wj), load_w<W>(o + row + j, x);
#pragma unroll
    for (int u = 0; u < W; ++u) {
      const float nn = x[u] * r, z = silu_f32(gt[u]);
      dgate[u] = dog[u] * nn * wj[u] * silu_grad_f32(gt[u]);
      dx[u] = r * (dog[u] * wj[u] * z - nn * m);
      dz[u] = dog[u] * z;
    }
    store_w<W>(d_gate + row + j, dgate), store_w<W>(d_o + row + j, dx), store_w<W>(d_og + row + j, dz);
  }
}

unsigned row_blocks(int64_t rows) { return unsigned(ceil_div(rows, kRowsPerBlock)); }

}  // namespace

void gdn_forward(Context& ctx, const GdnConfig& c, const GdnParams<bf16>& p, const GdnActsCuda& a, bf16* y,
                 const bf16* x, int64_t B, int64_t Tn) {
  check_core("gdn_forward", c, B, Tn);
  const int64_t BT = B * Tn, D = c.d_model, QK = c.d_qk(), DV = c.d_v(), H = c.n_heads, Hv = c.n_v_heads;
  const int64_t dk = c.d_head_k, dv = c.d_head_v, K = c.conv_size;
  if (BT <= 0) return;
  const std::string shapes = shape_str("gdn_forward B, Tn, D, H, Hv, dk, dv", B, Tn, D, H, Hv, dk, dv);
  linear_forward<bf16, bf16>(ctx, a.q_in, x, p.q_proj, BT, D, QK);
  linear_forward<bf16, bf16>(ctx, a.k_in, x, p.k_proj, BT, D, QK);
  linear_forward<bf16, bf16>(ctx, a.v_in, x, p.v_proj, BT, D, DV);
  short_conv_forward<bf16>(ctx, a.q, a.q_pre, a.q_in, p.q_conv1d, nullptr, B, Tn, QK, K, true);
  short_conv_forward<bf16>(ctx, a.k, a.k_pre, a.k_in, p.k_conv1d, nullptr, B, Tn, QK, K, true);
  short_conv_forward<bf16>(ctx, a.v, a.v_pre, a.v_in, p.v_conv1d, nullptr, B, Tn, DV, K, true);
  l2norm_forward_kernel<<<row_blocks(BT * H), kRowsPerBlock * kWarp, 0, ctx.stream>>>(a.q, a.q_rstd, BT * H, int(dk),
                                                                                      float(c.l2_eps));
  CUDA_CHECK_LAUNCH("l2norm_forward_kernel (q)", shapes);
  l2norm_forward_kernel<<<row_blocks(BT * H), kRowsPerBlock * kWarp, 0, ctx.stream>>>(a.k, a.k_rstd, BT * H, int(dk),
                                                                                      float(c.l2_eps));
  CUDA_CHECK_LAUNCH("l2norm_forward_kernel (k)", shapes);

  // beta and g from fp32 projection outputs (see GdnActsCuda).
  linear_forward<bf16, float>(ctx, a.beta, x, p.b_proj, BT, D, Hv);
  linear_forward<bf16, float>(ctx, a.a_in, x, p.a_proj, BT, D, Hv);
  const float beta_scale = c.allow_neg_eigval ? 2.f : 1.f;
  beta_decay_forward_kernel<<<unsigned(ceil_div(BT * Hv, 256)), 256, 0, ctx.stream>>>(
      a.beta, a.g, a.a_in, p.A_log, p.dt_bias, BT * Hv, int(Hv), beta_scale);
  CUDA_CHECK_LAUNCH("beta_decay_forward_kernel", shapes);

  chunk_forward<bf16, float>(ctx, c, a.o, a.chunk_states, a.t_inv, a.q, a.k, a.v, a.beta, a.g, B, Tn);

  linear_forward<bf16, bf16>(ctx, a.gate, x, p.g_proj, BT, D, DV);
  const auto gated_norm_forward = dv % 8 == 0 && aligned16(a.o_gated, a.o, a.gate, p.o_norm)
                                      ? gated_rmsnorm_forward_kernel<8>
                                      : gated_rmsnorm_forward_kernel<1>;
  gated_norm_forward<<<row_blocks(BT * Hv), kRowsPerBlock * kWarp, 0, ctx.stream>>>(
      a.o_gated, a.o_rstd, a.o, a.gate, p.o_norm, BT * Hv, int(dv), float(c.norm_eps));
  CUDA_CHECK_LAUNCH("gated_rmsnorm_forward_kernel", shapes);
  linear_forward<bf16, bf16>(ctx, y, a.o_gated, p.o_proj, BT, DV, D);
}

// The layer backward's scratch: its bf16 / fp32 intermediates (as allocated below) and the core's.
size_t gdn_backward_scratch_bytes(const GdnConfig& c, int64_t B, int64_t Tn) {
  const size_t BT = size_t(B * Tn), QK = size_t(c.d_qk()), DV = size_t(c.d_v()), Hv = size_t(c.n_v_heads);
  const size_t bytes = sizeof(bf16) * BT * (4 * DV + 2 * QK + std::max(QK, DV) + 2 * Hv) + sizeof(float) * BT * 2 * Hv;
  return bytes + 11 * DeviceArena::round_up(1) + gdn_chunk_backward_scratch_bytes(c, B, Tn, sizeof(bf16));
}

void gdn_backward(Context& ctx, const GdnConfig& c, const GdnParams<bf16>& p, const GdnParams<float>& grad,
                  const GdnActsCuda& a, bf16* dx, const bf16* dy, const bf16* x, int64_t B, int64_t Tn) {
  check_core("gdn_backward", c, B, Tn);
  const int64_t BT = B * Tn, D = c.d_model, QK = c.d_qk(), DV = c.d_v(), H = c.n_heads, Hv = c.n_v_heads;
  const int64_t dk = c.d_head_k, dv = c.d_head_v, K = c.conv_size;
  if (BT <= 0) return;
  const std::string shapes = shape_str("gdn_backward B, Tn, D, H, Hv, dk, dv", B, Tn, D, H, Hv, dk, dv);
  ArenaScope scope(ctx.scratch);
  bf16* d_og = ctx.scratch.alloc<bf16>(BT * DV, "gdn d_o_gated");
  bf16* d_o = ctx.scratch.alloc<bf16>(BT * DV, "gdn d_o");
  bf16* d_gate = ctx.scratch.alloc<bf16>(BT * DV, "gdn d_gate");
  bf16* d_q = ctx.scratch.alloc<bf16>(BT * QK, "gdn d_q");
  bf16* d_k = ctx.scratch.alloc<bf16>(BT * QK, "gdn d_k");
  bf16* d_v = ctx.scratch.alloc<bf16>(BT * DV, "gdn d_v");
  bf16* d_in = ctx.scratch.alloc<bf16>(BT * std::max(QK, DV), "gdn d_in (conv input gradient)");
  float* d_beta = ctx.scratch.alloc<float>(BT * Hv, "gdn d_beta");
  float* d_g = ctx.scratch.alloc<float>(BT * Hv, "gdn d_g");
  bf16* d_b = ctx.scratch.alloc<bf16>(BT * Hv, "gdn d_b (b_proj output gradient)");
  bf16* d_a = ctx.scratch.alloc<bf16>(BT * Hv, "gdn d_a (a_proj output gradient)");

  linear_backward<bf16, bf16>(ctx, d_og, grad.o_proj, dy, a.o_gated, p.o_proj, BT, DV, D);
  const auto gated_norm_backward = dv % 8 == 0 && aligned16(d_o, d_gate, d_og, a.o, a.gate, p.o_norm)
                                       ? gated_rmsnorm_backward_kernel<8>
                                       : gated_rmsnorm_backward_kernel<1>;
  gated_norm_backward<<<row_blocks(BT * Hv), kRowsPerBlock * kWarp, 0, ctx.stream>>>(
      d_o, d_gate, d_og, a.o, a.gate, p.o_norm, a.o_rstd, BT * Hv, int(dv));
  CUDA_CHECK_LAUNCH("gated_rmsnorm_backward_kernel", shapes);
  rmsnorm_backward<bf16>(ctx, nullptr, grad.o_norm, d_og, a.o, p.o_norm, a.o_rstd, BT * Hv, dv);
  linear_backward<bf16, bf16>(ctx, dx, grad.g_proj, d_gate, x, p.g_proj, BT, D, DV);

  chunk_backward<bf16, float>(ctx, c, d_q, d_k, d_v, d_beta, d_g, d_o, a.q, a.k, a.v, a.beta, a.g, a.chunk_states,
                              a.t_inv, B, Tn);

  const float beta_scale = c.allow_neg_eigval ? 2.f : 1.f;
  beta_decay_backward_kernel<<<unsigned(Hv), kThreads, 0, ctx.stream>>>(d_b, d_a, grad.A_log, grad.dt_bias, d_beta,
                                                                        d_g, a.beta, a.g, a.a_in, p.A_log, p.dt_bias,
                                                                        BT, int(Hv), beta_scale);
  CUDA_CHECK_LAUNCH("beta_decay_backward_kernel", shapes);
  linear_backward<bf16, bf16>(ctx, dx, grad.b_proj, d_b, x, p.b_proj, BT, D, Hv, /*accumulate_dx=*/true);
  linear_backward<bf16, bf16>(ctx, dx, grad.a_proj, d_a, x, p.a_proj, BT, D, Hv, /*accumulate_dx=*/true);

  // q, k: L2 norm, then conv + SiLU, then projection; v: conv + SiLU, projection.
  l2norm_backward_kernel<<<row_blocks(BT * H), kRowsPerBlock * kWarp, 0, ctx.stream>>>(d_q, a.q, a.q_rstd, BT * H,
                                                                                       int(dk));
  CUDA_CHECK_LAUNCH("l2norm_backward_kernel (q)", shapes);
  l2norm_backward_kernel<<<row_blocks(BT * H), kRowsPerBlock * kWarp, 0, ctx.stream>>>(d_k, a.k, a.k_rstd, BT * H,
                                                                                       int(dk));
  CUDA_CHECK_LAUNCH("l2norm_backward_kernel (k)", shapes);
  short_conv_backward<bf16>(ctx, d_in, grad.q_conv1d, nullptr, d_q, a.q_in, a.q_pre, p.q_conv1d, B, Tn, QK, K, true);
  linear_backward<bf16, bf16>(ctx, dx, grad.q_proj, d_in, x, p.q_proj, BT, D, QK, true);
  short_conv_backward<bf16>(ctx, d_in, grad.k_conv1d, nullptr, d_k, a.k_in, a.k_pre, p.k_conv1d, B, Tn, QK, K, true);
  linear_backward<bf16, bf16>(ctx, dx, grad.k_proj, d_in, x, p.k_proj, BT, D, QK, true);
  short_conv_backward<bf16>(ctx, d_in, grad.v_conv1d, nullptr, d_v, a.v_in, a.v_pre, p.v_conv1d, B, Tn, DV, K, true);
  linear_backward<bf16, bf16>(ctx, dx, grad.v_proj, d_in, x, p.v_proj, BT, D, DV, true);
}

#define INSTANTIATE(T)                                                                                           \
  template void gdn_chunk_forward<T>(Context&, const GdnConfig&, T*, T*, T*, const T*, const T*, const T*,        \
                                     const T*, const T*, int64_t, int64_t);                                       \
  template void gdn_chunk_backward<T>(Context&, const GdnConfig&, T*, T*, T*, T*, T*, const T*, const T*, const T*, \
                                      const T*, const T*, const T*, const T*, const T*, int64_t, int64_t);
INSTANTIATE(float)
INSTANTIATE(bf16)

}  // namespace hysim::cuda
