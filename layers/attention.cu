// Attention on the GPU: RoPE, the causal / sliding-window attention core (GQA, head dims
// 64 and 128) and the full layer around it (projections, QK-norm), forward and backward,
// bf16 storage with fp32 accumulation. Math and layouts
// as layers/attention.cpp (see layers/attention.h):
//   o_h = softmax(q_h k_g^T / sqrt(dh) + mask) v_g,  g = h / (H / Hkv);  lse per query row
//   query t keeps keys t-w+1 .. t (window w > 0) or 0 .. t (full causal)
//
// Flash-attention-2 structure on the tensor cores (mma.sync m16n8k16, bf16 in, fp32
// accumulate), tiles of 64 queries x 64 keys, 4 warps of 16 rows, operands staged in
// shared memory, scores / probabilities / accumulators in registers:
//  * forward: a block owns 64 query rows of one head and walks the key tiles that hold any
//    kept key (tiles wholly before the window or after the diagonal are never touched),
//    with the online softmax (running max and sum per row); only lse is saved. Nothing
//    T x T exists.
//  * backward, deterministic (no atomics), recomputing P from lse:
//      D = rowsum(dO o O);  dS = P o (dO V^T - D) / sqrt(dh)
//      dK/dV kernel: a block owns 64 keys of one kv head and loops over the query tiles of
//        every query head of its group: dV += P^T dO, dK += dS^T Q.
//      dQ kernel: a block owns 64 queries of one head and loops over key tiles: dQ += dS K.
//    S and dO V^T are computed in both kernels (7 tile products instead of FA2's 5) so that
//    each output has one owner and is summed in a fixed order.
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/cuda/device_util.cuh"
#include "core/cuda/gemm.h"
#include "core/cuda/layers.h"

namespace hysim::cuda {

namespace {

constexpr int kTile = 64;  // query and key rows per tile
constexpr int kWarps = 4;  // each warp owns 16 rows of a tile
constexpr int kThreads = kWarps * kWarp;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Shared-memory row length (elements) of the bf16 [64, DH] tiles (Q, K, V, dO): padded by
// 16 bytes so that the 32-bit fragment loads of 8 rows x 4 lanes hit 32 different banks
// and ldmatrix's 16-byte rows stay aligned.
template <int DH> struct Ld {
  static constexpr int bf = DH + 8;
  static constexpr size_t bf_bytes = size_t(kTile) * bf * 2;
};

__device__ __forceinline__ bool kept(int qi, int kj, int Tn, int window) {
  return qi < Tn && kj <= qi && (window <= 0 || kj > qi - window);
}

// rows [0, valid) of a [64, DH] tile from global (row stride `stride` elements) into shared
// memory, 16 bytes per access; rows past the sequence are zero.
template <int DH> __device__ void load_tile(bf16* s, const bf16* __restrict__ g, int64_t stride, int valid) {
  constexpr int kChunks = DH / 8;
  for (int i = threadIdx.x; i < kTile * kChunks; i += kThreads) {
    const int r = i / kChunks, c = (i % kChunks) * 8;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (r < valid) v = *reinterpret_cast<const uint4*>(g + r * stride + c);
    *reinterpret_cast<uint4*>(s + r * Ld<DH>::bf + c) = v;
  }
}

// The same tile by cp.async (16 bytes per copy, no registers on the way): the copies run
// while the warps compute on the other buffer. Rows past the sequence are zero-filled (a
// source size of 0; the address stays in bounds). cp_async16 and cp_async_wait<n>(): core/cuda/device_util.cuh.
template <int DH> __device__ void load_tile_async(bf16* s, const bf16* __restrict__ g, int64_t stride, int valid) {
  constexpr int kChunks = DH / 8;
  for (int i = threadIdx.x; i < kTile * kChunks; i += kThreads) {
    const int r = i / kChunks, c = (i % kChunks) * 8;
    cp_async16(s + r * Ld<DH>::bf + c, g + (r < valid ? r * stride : 0) + c, r < valid ? 16 : 0);
  }
}

// ---- forward: register-level tiles (mma.sync m16n8k16) ------------------------------------
// Fragment layouts of mma.m16n8k16 (g = lane / 4, t = lane % 4; a register holds 2 bf16):
//   A 16x16: a0 (g, 2t..2t+1), a1 (g+8, 2t..), a2 (g, 2t+8..), a3 (g+8, 2t+8..)
//   B 16x8:  b0 (k 2t..2t+1, n g), b1 (k 2t+8.., n g)
//   C 16x8:  c0, c1 (g, 2t..2t+1), c2, c3 (g+8, 2t..2t+1)
// A C tile pair of S (keys 16j .. 16j+15) is exactly the A fragment of P for P V once
// packed to bf16, so scores, probabilities and the output stay in registers; only K and V
// tiles pass through shared memory. (mma_bf16: core/cuda/device_util.cuh.)
// ldmatrix_x4<Trans> (core/cuda/device_util.cuh): four 8x8 bf16 matrices, lane l getting row
// l / 4, columns 2 (l % 4) .. + 1 of each (the A and B fragment layouts above for row-major A
// and for B = rows of K); <true> delivers each transposed.
__device__ __forceinline__ uint32_t lds32(const bf16* p) { return *reinterpret_cast<const uint32_t*>(p); }

template <int DH> constexpr size_t fwd_smem() { return 5 * Ld<DH>::bf_bytes; }  // Q, 2 x (K, V)

template <int DH>
__global__ void __launch_bounds__(kThreads)
    attention_forward_kernel(bf16* __restrict__ o, float* __restrict__ lse, const bf16* __restrict__ q,
                             const bf16* __restrict__ k, const bf16* __restrict__ v, int Tn, int H, int Hkv,
                             int window, float scale_log2) {
  extern __shared__ __align__(128) unsigned char smem[];
  constexpr int LD = Ld<DH>::bf;
  bf16* sQ = reinterpret_cast<bf16*>(smem);
  bf16* sKV = sQ + kTile * LD;  // buffer i: K at sKV + 2 i tile, V after it

  const int q0 = (gridDim.x - 1 - blockIdx.x) * kTile;  // longest rows (most key tiles) first
  const int h = blockIdx.y, b = blockIdx.z, g = h / (H / Hkv);
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, lg = lane / 4, lt = lane % 4;
  const int64_t qs = int64_t(H) * DH, ks = int64_t(Hkv) * DH;
  const bf16* kb = k + int64_t(b) * Tn * ks + int64_t(g) * DH;
  const bf16* vb = v + int64_t(b) * Tn * ks + int64_t(g) * DH;
  const int k_lo = window > 0 ? max(0, q0 - window + 1) / kTile * kTile : 0;
  const int k_hi = min(Tn, q0 + kTile);
  auto load_kv = [&](int k0, int buf) {
    load_tile_async<DH>(sKV + 2 * buf * kTile * LD, kb + int64_t(k0) * ks, ks, min(kTile, Tn - k0));
    load_tile_async<DH>(sKV + (2 * buf + 1) * kTile * LD, vb + int64_t(k0) * ks, ks, min(kTile, Tn - k0));
    cp_async_commit();
  };
  load_tile_async<DH>(sQ, q + (int64_t(b) * Tn + q0) * qs + int64_t(h) * DH, qs, min(kTile, Tn - q0));
  load_kv(k_lo, 0);  // one group: Q and the first K, V
  cp_async_wait<0>();
  __syncthreads();
  // This warp's 16 query rows as A fragments, for all DH / 16 steps of the reduction.
  uint32_t qa[DH / 16][4];
  const bf16* qw = sQ + warp * 16 * LD;
#pragma unroll
  for (int kk = 0; kk < DH / 16; ++kk) {
    qa[kk][0] = lds32(qw + lg * LD + kk * 16 + 2 * lt);
    qa[kk][1] = lds32(qw + (lg + 8) * LD + kk * 16 + 2 * lt);
    qa[kk][2] = lds32(qw + lg * LD + kk * 16 + 8 + 2 * lt);
    qa[kk][3] = lds32(qw + (lg + 8) * LD + kk * 16 + 8 + 2 * lt);
  }
  float oacc[DH / 8][4];
#pragma unroll
  for (int n = 0; n < DH / 8; ++n) oacc[n][0] = oacc[n][1] = oacc[n][2] = oacc[n][3] = 0.f;
  // Rows lg and lg + 8 of the warp's 16: running max (log2 domain) and sum; the 4 lanes of a
  // quad share the rows and hold equal copies.
  const int qi0 = q0 + warp * 16 + lg, qi1 = qi0 + 8;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};

  for (int k0 = k_lo, buf = 0; k0 < k_hi; k0 += kTile, buf ^= 1) {
    // Prefetch the next tile into the other buffer (its last readers finished before the
    // barrier that ended the previous iteration), then wait for this one.
    if (k0 + kTile < k_hi) {
      load_kv(k0 + kTile, buf ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const bf16* sK = sKV + 2 * buf * kTile * LD;
    const bf16* sV = sK + kTile * LD;
    // S [16, 64] = Q K^T: 8 n-tiles of 8 keys; b0/b1 are consecutive pairs of one K row.
    float sacc[kTile / 8][4];
#pragma unroll
    for (int n = 0; n < kTile / 8; ++n) sacc[n][0] = sacc[n][1] = sacc[n][2] = sacc[n][3] = 0.f;
    // K's B fragments for two n-tiles per ldmatrix: matrices (keys +0, d +0), (keys +0,
    // d +8), (keys +8, d +0), (keys +8, d +8).
    const bf16* kmat = sK + ((lane / 16) * 8 + lane % 8) * LD + ((lane / 8) & 1) * 8;
#pragma unroll
    for (int n = 0; n < kTile / 8; n += 2)
#pragma unroll
      for (int kk = 0; kk < DH / 16; ++kk) {
        uint32_t kb4[4];
        ldmatrix_x4<false>(kb4, kmat + n * 8 * LD + kk * 16);
        mma_bf16(sacc[n], qa[kk], kb4[0], kb4[1]);
        mma_bf16(sacc[n + 1], qa[kk], kb4[2], kb4[3]);
      }
    // Mask only where the tile crosses the diagonal or the window's start (or the sequence end).
    const bool need_mask = k0 + kTile > q0 + 1 || k0 + kTile > Tn || (window > 0 && k0 <= q0 + kTile - 1 - window + 1);
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int n = 0; n < kTile / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int qi = e < 2 ? qi0 : qi1, kj = k0 + n * 8 + 2 * lt + (e & 1);
        float x = sacc[n][e] * scale_log2;
        if (need_mask && !kept(qi, kj, Tn, window)) x = -INFINITY;
        sacc[n][e] = x;
        mx[e / 2] = fmaxf(mx[e / 2], x);
      }
    float alpha[2], m_use[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      const float m_new = fmaxf(m_run[r], mx[r]);
      m_use[r] = m_new == -INFINITY ? 0.f : m_new;  // nothing kept yet in this row: all p = 0
      alpha[r] = exp2f(m_run[r] - m_use[r]);
      m_run[r] = m_new;
    }
    float sum[2] = {0.f, 0.f};
#pragma unroll
    for (int n = 0; n < kTile / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float p = exp2f(sacc[n][e] - m_use[e / 2]);
        sacc[n][e] = p;
        sum[e / 2] += p;
      }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      sum[r] += __shfl_xor_sync(0xffffffffu, sum[r], 1);
      sum[r] += __shfl_xor_sync(0xffffffffu, sum[r], 2);
      l_run[r] = l_run[r] * alpha[r] + sum[r];
    }
#pragma unroll
    for (int n = 0; n < DH / 8; ++n) {
      oacc[n][0] *= alpha[0], oacc[n][1] *= alpha[0];
      oacc[n][2] *= alpha[1], oacc[n][3] *= alpha[1];
    }
    // O += P V over 4 steps of 16 keys; V's B fragments by transposed ldmatrix: matrices
    // (keys +0, d +0), (keys +8, d +0), (keys +0, d +8), (keys +8, d +8).
#pragma unroll
    for (int kk = 0; kk < kTile / 16; ++kk) {
      uint32_t pa[4];
      a_fragment_from_c(pa, sacc[2 * kk], sacc[2 * kk + 1]);
      const int mat = lane / 8;
      const bf16* vrow = sV + (kk * 16 + (mat & 1) * 8 + lane % 8) * LD + (mat >> 1) * 8;
#pragma unroll
      for (int n = 0; n < DH / 8; n += 2) {
        uint32_t vb4[4];
        ldmatrix_x4<true>(vb4, vrow + n * 8);
        mma_bf16(oacc[n], pa, vb4[0], vb4[1]);
        mma_bf16(oacc[n + 1], pa, vb4[2], vb4[3]);
      }
    }
    __syncthreads();  // this buffer is the next prefetch's target
  }
  // Normalise and store: rows qi0 (c0, c1) and qi1 (c2, c3), columns n*8 + 2 lt.
  const float inv0 = 1.f / l_run[0], inv1 = 1.f / l_run[1];
  bf16* ob = o + int64_t(b) * Tn * qs + int64_t(h) * DH + 2 * lt;
#pragma unroll
  for (int n = 0; n < DH / 8; ++n) {
    if (qi0 < Tn)
      *reinterpret_cast<__nv_bfloat162*>(ob + int64_t(qi0) * qs + n * 8) =
          __floats2bfloat162_rn(oacc[n][0] * inv0, oacc[n][1] * inv0);
    if (qi1 < Tn)
      *reinterpret_cast<__nv_bfloat162*>(ob + int64_t(qi1) * qs + n * 8) =
          __floats2bfloat162_rn(oacc[n][2] * inv1, oacc[n][3] * inv1);
  }
  if (lt == 0) {  // natural log of the row sum of exp(scaled scores)
    float* lb = lse + (int64_t(b) * H + h) * Tn;
    if (qi0 < Tn) lb[qi0] = (m_run[0] + log2f(l_run[0])) * kLn2;
    if (qi1 < Tn) lb[qi1] = (m_run[1] + log2f(l_run[1])) * kLn2;
  }
}

// D[b, h, t] = sum_i dO[b, t, h, i] O[b, t, h, i]; one warp per row.
__global__ void attention_rowdot_kernel(float* __restrict__ D, const bf16* __restrict__ dout,
                                        const bf16* __restrict__ o, int64_t rows, int Tn, int H, int dh) {
  const int64_t row = int64_t(blockIdx.x) * kWarps + threadIdx.x / kWarp;  // row = (b Tn + t) H + h
  if (row >= rows) return;
  const int lane = threadIdx.x % kWarp;
  float s = 0.f;
  for (int i = lane; i < dh; i += kWarp) s += to_f32(dout[row * dh + i]) * to_f32(o[row * dh + i]);
  s = warp_sum(s);
  const int64_t bt = row / H, h = row % H, b = bt / Tn, t = bt % Tn;
  if (lane == 0) D[(b * H + h) * Tn + t] = s;
}

// ---- backward: register-level tiles, deterministic ------------------------------------------
// dst[16, 64] = A[16 rows, DH] B[64 rows, DH]^T for this warp, both row-major in shared
// memory; fragments by ldmatrix (conflict-free with the padded row length).
template <int DH> __device__ __forceinline__ void warp_abt(float (&dst)[kTile / 8][4], const bf16* a, const bf16* b) {
  constexpr int LD = Ld<DH>::bf;
  const int lane = threadIdx.x % kWarp;
#pragma unroll
  for (int n = 0; n < kTile / 8; ++n) dst[n][0] = dst[n][1] = dst[n][2] = dst[n][3] = 0.f;
  // ldmatrix: A as matrices (rows +0, k +0), (rows +8, k +0), (rows +0, k +8), (rows +8,
  // k +8); B (rows of b) for two n-tiles as (rows +0, k +0), (+0, +8), (+8, +0), (+8, +8).
  const bf16* amat = a + (((lane / 8) & 1) * 8 + lane % 8) * LD + (lane / 16) * 8;
  const bf16* bmat = b + ((lane / 16) * 8 + lane % 8) * LD + ((lane / 8) & 1) * 8;
#pragma unroll
  for (int kk = 0; kk < DH / 16; ++kk) {
    uint32_t af[4];
    ldmatrix_x4<false>(af, amat + kk * 16);
#pragma unroll
    for (int n = 0; n < kTile / 8; n += 2) {
      uint32_t bb[4];
      ldmatrix_x4<false>(bb, bmat + n * 8 * LD + kk * 16);
      mma_bf16(dst[n], af, bb[0], bb[1]);
      mma_bf16(dst[n + 1], af, bb[2], bb[3]);
    }
  }
}

// acc[16, DH] += P[16, 64] V[64, DH]: P from this warp's registers (C layout, packed to bf16
// A fragments), V row-major in shared memory (B fragments by transposed ldmatrix).
template <int DH>
__device__ __forceinline__ void warp_acc_pv(float (&acc)[DH / 8][4], const float (&p)[kTile / 8][4], const bf16* v) {
  constexpr int LD = Ld<DH>::bf;
  const int lane = threadIdx.x % kWarp, mat = lane / 8;
#pragma unroll
  for (int kk = 0; kk < kTile / 16; ++kk) {
    uint32_t pa[4];
    a_fragment_from_c(pa, p[2 * kk], p[2 * kk + 1]);
    const bf16* vrow = v + (kk * 16 + (mat & 1) * 8 + lane % 8) * LD + (mat >> 1) * 8;
#pragma unroll
    for (int n = 0; n < DH / 8; n += 2) {
      uint32_t vb4[4];
      ldmatrix_x4<true>(vb4, vrow + n * 8);
      mma_bf16(acc[n], pa, vb4[0], vb4[1]);
      mma_bf16(acc[n + 1], pa, vb4[2], vb4[3]);
    }
  }
}

// Whether a (64 queries from q0, 64 keys from k0) tile pair has any masked pair.
__device__ __forceinline__ bool tile_needs_mask(int q0, int k0, int Tn, int window) {
  return q0 < k0 + kTile - 1 || q0 + kTile > Tn || k0 + kTile > Tn || (window > 0 && q0 + kTile - 1 - k0 >= window);
}

// Rows r0, r0 + 8 (this lane's) of a [16, DH] register accumulator to global bf16.
template <int DH>
__device__ __forceinline__ void store_acc(bf16* __restrict__ base, int64_t stride, const float (&acc)[DH / 8][4],
                                          int row0, int Tn, float scale) {
  const int lane = threadIdx.x % kWarp, lg = lane / 4, lt = lane % 4;
  const int r0 = row0 + lg, r1 = r0 + 8;
#pragma unroll
  for (int n = 0; n < DH / 8; ++n) {
    if (r0 < Tn)
      *reinterpret_cast<__nv_bfloat162*>(base + int64_t(r0) * stride + n * 8 + 2 * lt) =
          __floats2bfloat162_rn(acc[n][0] * scale, acc[n][1] * scale);
    if (r1 < Tn)
      *reinterpret_cast<__nv_bfloat162*>(base + int64_t(r1) * stride + n * 8 + 2 * lt) =
          __floats2bfloat162_rn(acc[n][2] * scale, acc[n][3] * scale);
  }
}

template <int DH> constexpr size_t bwd_smem() { return 6 * Ld<DH>::bf_bytes + 4 * kTile * sizeof(float); }  // 2 fixed + 2 x 2 streamed tiles

// dK, dV for 64 keys of one kv head: each warp owns 16 keys and works on transposed tiles
// S^T = K Q^T and dP^T = V dO^T, so that P^T and dS^T are A fragments in its registers:
//   dV += P^T dO,  dK += dS^T Q  (scale folded into dS).
template <int DH>
__global__ void __launch_bounds__(kThreads, 1)
    attention_backward_dkv_kernel(bf16* __restrict__ dk, bf16* __restrict__ dv, const bf16* __restrict__ dout,
                                  const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v,
                                  const float* __restrict__ lse, const float* __restrict__ D, int Tn, int H, int Hkv,
                                  int window, float scale_log2, float scale) {
  extern __shared__ __align__(128) unsigned char smem[];
  constexpr int LD = Ld<DH>::bf;
  bf16* sK = reinterpret_cast<bf16*>(smem);
  bf16* sV = sK + kTile * LD;
  bf16* sQdO = sV + kTile * LD;  // buffer i: Q at sQdO + 2 i tile, dO after it
  float* sLD = reinterpret_cast<float*>(sQdO + 4 * kTile * LD);  // buffer i: lse, D at 2 i tile

  const int k0 = blockIdx.x * kTile, g = blockIdx.y, b = blockIdx.z, group = H / Hkv;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, lg = lane / 4, lt = lane % 4;
  const int64_t qs = int64_t(H) * DH, ks = int64_t(Hkv) * DH;
  const int kvalid = min(kTile, Tn - k0);
  load_tile<DH>(sK, k + (int64_t(b) * Tn + k0) * ks + int64_t(g) * DH, ks, kvalid);
  load_tile<DH>(sV, v + (int64_t(b) * Tn + k0) * ks + int64_t(g) * DH, ks, kvalid);
  float dk_acc[DH / 8][4], dv_acc[DH / 8][4];
#pragma unroll
  for (int n = 0; n < DH / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk_acc[n][e] = dv_acc[n][e] = 0.f;
  const int kj0 = k0 + warp * 16 + lg, kj1 = kj0 + 8;  // this lane's key rows
  // Queries that keep any of keys k0 .. k0+63: k0 <= t < k0 + 63 + window.
  const int q_hi = window > 0 ? min(Tn, k0 + kTile - 1 + window) : Tn;
  // Steps (query head of the group, query tile) in a fixed order, the next one's Q, dO,
  // lse, D prefetched into the other buffer while this one is computed.
  const int n_qt = (q_hi - k0 + kTile - 1) / kTile, steps = group * n_qt;
  auto load_step = [&](int step, int buf) {
    const int h = g * group + step / n_qt, q0 = k0 + (step % n_qt) * kTile, qvalid = min(kTile, Tn - q0);
    load_tile_async<DH>(sQdO + 2 * buf * kTile * LD, q + (int64_t(b) * Tn + q0) * qs + int64_t(h) * DH, qs, qvalid);
    load_tile_async<DH>(sQdO + (2 * buf + 1) * kTile * LD, dout + (int64_t(b) * Tn + q0) * qs + int64_t(h) * DH, qs,
                        qvalid);
    cp_async_commit();
    if (threadIdx.x < kTile) {
      const int64_t i = (int64_t(b) * H + h) * Tn + q0 + threadIdx.x;
      sLD[2 * buf * kTile + threadIdx.x] = threadIdx.x < qvalid ? lse[i] * kLog2e : 0.f;
      sLD[(2 * buf + 1) * kTile + threadIdx.x] = threadIdx.x < qvalid ? D[i] : 0.f;
    }
  };
  load_step(0, 0);
  for (int step = 0, buf = 0; step < steps; ++step, buf ^= 1) {
    {
      if (step + 1 < steps) {
        load_step(step + 1, buf ^ 1);
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      __syncthreads();
      const int q0 = k0 + (step % n_qt) * kTile;
      const bf16* sQ = sQdO + 2 * buf * kTile * LD;
      const bf16* sdO = sQ + kTile * LD;
      const float* sL = sLD + 2 * buf * kTile;
      const float* sD = sL + kTile;
      const bool need_mask = tile_needs_mask(q0, k0, Tn, window);
      float pt[kTile / 8][4];  // S^T, then P^T
      warp_abt<DH>(pt, sK + warp * 16 * LD, sQ);
#pragma unroll
      for (int n = 0; n < kTile / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int col = n * 8 + 2 * lt + (e & 1), qi = q0 + col, kj = e < 2 ? kj0 : kj1;
          const bool keep = !need_mask || kept(qi, kj, Tn, window);
          pt[n][e] = keep ? exp2f(pt[n][e] * scale_log2 - sL[col]) : 0.f;
        }
      warp_acc_pv<DH>(dv_acc, pt, sdO);
      float dst[kTile / 8][4];  // dP^T, then dS^T
      warp_abt<DH>(dst, sV + warp * 16 * LD, sdO);
#pragma unroll
      for (int n = 0; n < kTile / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int col = n * 8 + 2 * lt + (e & 1);
          dst[n][e] = pt[n][e] * (dst[n][e] - sD[col]) * scale;
        }
      warp_acc_pv<DH>(dk_acc, dst, sQ);
      __syncthreads();  // this buffer is the next prefetch's target
    }
  }
  store_acc<DH>(dk + int64_t(b) * Tn * ks + int64_t(g) * DH, ks, dk_acc, k0 + warp * 16, Tn, 1.f);
  store_acc<DH>(dv + int64_t(b) * Tn * ks + int64_t(g) * DH, ks, dv_acc, k0 + warp * 16, Tn, 1.f);
}

// dQ for 64 queries of one head: each warp owns 16 queries; S = Q K^T, dP = dO V^T,
// dS = P o (dP - D) scale in registers, dQ += dS K.
template <int DH>
__global__ void __launch_bounds__(kThreads, 1)
    attention_backward_dq_kernel(bf16* __restrict__ dq, const bf16* __restrict__ dout, const bf16* __restrict__ q,
                                 const bf16* __restrict__ k, const bf16* __restrict__ v,
                                 const float* __restrict__ lse, const float* __restrict__ D, int Tn, int H, int Hkv,
                                 int window, float scale_log2, float scale) {
  extern __shared__ __align__(128) unsigned char smem[];
  constexpr int LD = Ld<DH>::bf;
  bf16* sQ = reinterpret_cast<bf16*>(smem);
  bf16* sdO = sQ + kTile * LD;
  bf16* sKV = sdO + kTile * LD;  // buffer i: K at sKV + 2 i tile, V after it
  float* sL = reinterpret_cast<float*>(sKV + 4 * kTile * LD);
  float* sD = sL + kTile;

  const int q0 = (gridDim.x - 1 - blockIdx.x) * kTile;
  const int h = blockIdx.y, b = blockIdx.z, g = h / (H / Hkv);
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, lg = lane / 4, lt = lane % 4;
  const int64_t qs = int64_t(H) * DH, ks = int64_t(Hkv) * DH;
  const int qvalid = min(kTile, Tn - q0);
  load_tile<DH>(sQ, q + (int64_t(b) * Tn + q0) * qs + int64_t(h) * DH, qs, qvalid);
  load_tile<DH>(sdO, dout + (int64_t(b) * Tn + q0) * qs + int64_t(h) * DH, qs, qvalid);
  if (threadIdx.x < kTile) {
    const int64_t i = (int64_t(b) * H + h) * Tn + q0 + threadIdx.x;
    sL[threadIdx.x] = threadIdx.x < qvalid ? lse[i] * kLog2e : 0.f;
    sD[threadIdx.x] = threadIdx.x < qvalid ? D[i] : 0.f;
  }
  float dq_acc[DH / 8][4];
#pragma unroll
  for (int n = 0; n < DH / 8; ++n) dq_acc[n][0] = dq_acc[n][1] = dq_acc[n][2] = dq_acc[n][3] = 0.f;
  const int r0 = warp * 16 + lg, qi0 = q0 + r0, qi1 = qi0 + 8;
  const bf16* kb = k + int64_t(b) * Tn * ks + int64_t(g) * DH;
  const bf16* vb = v + int64_t(b) * Tn * ks + int64_t(g) * DH;
  const int k_lo = window > 0 ? max(0, q0 - window + 1) / kTile * kTile : 0;
  const int k_hi = min(Tn, q0 + kTile);
  auto load_kv = [&](int k0, int buf) {
    load_tile_async<DH>(sKV + 2 * buf * kTile * LD, kb + int64_t(k0) * ks, ks, min(kTile, Tn - k0));
    load_tile_async<DH>(sKV + (2 * buf + 1) * kTile * LD, vb + int64_t(k0) * ks, ks, min(kTile, Tn - k0));
    cp_async_commit();
  };
  load_kv(k_lo, 0);
  for (int k0 = k_lo, buf = 0; k0 < k_hi; k0 += kTile, buf ^= 1) {
    if (k0 + kTile < k_hi) {  // prefetch the next K, V (as the forward)
      load_kv(k0 + kTile, buf ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const bf16* sK = sKV + 2 * buf * kTile * LD;
    const bf16* sV = sK + kTile * LD;
    const bool need_mask = tile_needs_mask(q0, k0, Tn, window);
    const float l0 = sL[r0], l1 = sL[r0 + 8], d0 = sD[r0], d1 = sD[r0 + 8];
    float p[kTile / 8][4];
    warp_abt<DH>(p, sQ + warp * 16 * LD, sK);
#pragma unroll
    for (int n = 0; n < kTile / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int kj = k0 + n * 8 + 2 * lt + (e & 1), qi = e < 2 ? qi0 : qi1;
        const bool keep = !need_mask || kept(qi, kj, Tn, window);
        p[n][e] = keep ? exp2f(p[n][e] * scale_log2 - (e < 2 ? l0 : l1)) : 0.f;
      }
    float ds[kTile / 8][4];
    warp_abt<DH>(ds, sdO + warp * 16 * LD, sV);
#pragma unroll
    for (int n = 0; n < kTile / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) ds[n][e] = p[n][e] * (ds[n][e] - (e < 2 ? d0 : d1)) * scale;
    warp_acc_pv<DH>(dq_acc, ds, sK);
    __syncthreads();  // this buffer is the next prefetch's target
  }
  store_acc<DH>(dq + int64_t(b) * Tn * qs + int64_t(h) * DH, qs, dq_acc, q0 + warp * 16, Tn, 1.f);
}


void check_core_shapes(const char* fn, const AttentionConfig& c, int64_t B, int64_t Tn) {
  c.validate();
  if (c.d_head != 64 && c.d_head != 128)
    throw std::invalid_argument(shape_str(std::string(fn) + ": d_head must be 64 or 128; d_head", c.d_head));
  if (Tn >= (int64_t(1) << 30) || B >= 65536 || c.n_heads >= 65536)
    throw std::invalid_argument(shape_str(std::string(fn) + ": too large; B, Tn, H", B, Tn, c.n_heads));
}

template <class K> void set_smem(K kernel, size_t bytes) {
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)),
             shape_str("attention shared memory bytes", int64_t(bytes)));
}

template <int DH>
void forward_dh(Context& ctx, const AttentionConfig& c, bf16* o, float* lse, const bf16* q, const bf16* k,
                const bf16* v, int64_t B, int64_t Tn) {
  const size_t smem = fwd_smem<DH>();
  set_smem(attention_forward_kernel<DH>, smem);
  const dim3 grid(unsigned(ceil_div(Tn, kTile)), unsigned(c.n_heads), unsigned(B));
  const float scale_log2 = float(kLog2e / std::sqrt(double(DH)));
  attention_forward_kernel<DH><<<grid, kThreads, smem, ctx.stream>>>(o, lse, q, k, v, int(Tn), int(c.n_heads),
                                                                      int(c.n_kv_heads), int(c.window), scale_log2);
  CUDA_CHECK_LAUNCH("attention_forward_kernel", shape_str("B, Tn, H, Hkv, dh, window", B, Tn, c.n_heads,
                                                          c.n_kv_heads, DH, c.window));
}

template <int DH>
void backward_dh(Context& ctx, const AttentionConfig& c, bf16* dq, bf16* dk, bf16* dv, const bf16* dout,
                 const bf16* q, const bf16* k, const bf16* v, const float* lse, const float* D, int64_t B,
                 int64_t Tn) {
  const std::string shapes =
      shape_str("B, Tn, H, Hkv, dh, window", B, Tn, c.n_heads, c.n_kv_heads, DH, c.window);
  const float scale = float(1.0 / std::sqrt(double(DH))), scale_log2 = scale * kLog2e;
  const unsigned tiles = unsigned(ceil_div(Tn, kTile));
  set_smem(attention_backward_dkv_kernel<DH>, bwd_smem<DH>());
  attention_backward_dkv_kernel<DH><<<dim3(tiles, unsigned(c.n_kv_heads), unsigned(B)), kThreads, bwd_smem<DH>(),
                                      ctx.stream>>>(dk, dv, dout, q, k, v, lse, D, int(Tn), int(c.n_heads),
                                                    int(c.n_kv_heads), int(c.window), scale_log2, scale);
  CUDA_CHECK_LAUNCH("attention_backward_dkv_kernel", shapes);
  set_smem(attention_backward_dq_kernel<DH>, bwd_smem<DH>());
  attention_backward_dq_kernel<DH><<<dim3(tiles, unsigned(c.n_heads), unsigned(B)), kThreads, bwd_smem<DH>(),
                                     ctx.stream>>>(dq, dout, q, k, v, lse, D, int(Tn), int(c.n_heads),
                                                   int(c.n_kv_heads), int(c.window), scale_log2, scale);
  CUDA_CHECK_LAUNCH("attention_backward_dq_kernel", shapes);
}

// RoPE: one thread per rotated pair (i, i + dh/2) of one row of one head.
template <class T>
__global__ void rope_kernel(T* __restrict__ x, const float* __restrict__ table, int64_t pairs, int Tn, int n_heads,
                            int half, bool inverse) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= pairs) return;
  const int i = int(idx % half);
  const int64_t row = idx / half;  // (b Tn + t) n_heads + h
  const int t = int((row / n_heads) % Tn);
  const float cs = table[int64_t(t) * 2 * half + i], sn0 = table[int64_t(t) * 2 * half + half + i];
  const float sn = inverse ? -sn0 : sn0;
  T* r = x + row * 2 * half;
  const float x1 = to_f32(r[i]), x2 = to_f32(r[i + half]);
  r[i] = from_f32<T>(x1 * cs - x2 * sn);
  r[i + half] = from_f32<T>(x2 * cs + x1 * sn);
}

}  // namespace

std::vector<float> rope_table(const std::vector<double>& freqs, double scale, int64_t Tn) {
  const int64_t half = int64_t(freqs.size());
  std::vector<float> tab(Tn * 2 * half);
  for (int64_t t = 0; t < Tn; ++t)
    for (int64_t i = 0; i < half; ++i) {
      const double angle = double(t) * freqs[i];
      tab[t * 2 * half + i] = float(scale * std::cos(angle));
      tab[t * 2 * half + half + i] = float(scale * std::sin(angle));
    }
  return tab;
}

template <class T>
void rope_apply(Context& ctx, T* x, const float* table, int64_t B, int64_t Tn, int64_t n_heads, int64_t dh,
                bool inverse) {
  if (dh % 2 != 0) throw std::invalid_argument(shape_str("rope_apply: odd head dim", dh));
  const int64_t pairs = B * Tn * n_heads * (dh / 2);
  if (pairs <= 0) return;
  rope_kernel<T><<<unsigned(ceil_div(pairs, 256)), 256, 0, ctx.stream>>>(x, table, pairs, int(Tn), int(n_heads),
                                                                         int(dh / 2), inverse);
  CUDA_CHECK_LAUNCH("rope_kernel", shape_str("B, Tn, n_heads, dh", B, Tn, n_heads, dh));
}

void attention_core_forward(Context& ctx, const AttentionConfig& c, bf16* o, float* lse, const bf16* q,
                            const bf16* k, const bf16* v, int64_t B, int64_t Tn) {
  check_core_shapes("attention_core_forward", c, B, Tn);
  if (B <= 0 || Tn <= 0) return;
  if (c.d_head == 64) forward_dh<64>(ctx, c, o, lse, q, k, v, B, Tn);
  else forward_dh<128>(ctx, c, o, lse, q, k, v, B, Tn);
}

void attention_core_backward(Context& ctx, const AttentionConfig& c, bf16* dq, bf16* dk, bf16* dv, const bf16* dout,
                             const bf16* q, const bf16* k, const bf16* v, const bf16* o, const float* lse, int64_t B,
                             int64_t Tn) {
  check_core_shapes("attention_core_backward", c, B, Tn);
  if (B <= 0 || Tn <= 0) return;
  ArenaScope scope(ctx.scratch);
  const int64_t rows = B * Tn * c.n_heads;
  float* D = ctx.scratch.alloc<float>(rows, "attention rowdot D");
  attention_rowdot_kernel<<<unsigned(ceil_div(rows, kWarps)), kThreads, 0, ctx.stream>>>(D, dout, o, rows, int(Tn),
                                                                                          int(c.n_heads),
                                                                                          int(c.d_head));
  CUDA_CHECK_LAUNCH("attention_rowdot_kernel", shape_str("rows, dh", rows, c.d_head));
  if (c.d_head == 64) backward_dh<64>(ctx, c, dq, dk, dv, dout, q, k, v, lse, D, B, Tn);
  else backward_dh<128>(ctx, c, dq, dk, dv, dout, q, k, v, lse, D, B, Tn);
}

void attention_forward(Context& ctx, const AttentionConfig& c, const AttentionParams<bf16>& p,
                       const AttentionActsCuda& a, const float* rope_table, bf16* y, const bf16* x, int64_t B,
                       int64_t Tn) {
  c.validate();
  const int64_t BT = B * Tn, D = c.d_model, QD = c.q_dim(), KD = c.kv_dim();
  if (BT <= 0) return;
  if (c.qk_norm) {
    linear_forward<bf16, bf16>(ctx, a.q_raw, x, p.q_proj, BT, D, QD);
    linear_forward<bf16, bf16>(ctx, a.k_raw, x, p.k_proj, BT, D, KD);
    rmsnorm_forward(ctx, a.q, a.q_rstd, a.q_raw, p.q_norm, BT, QD, c.norm_eps);
    rmsnorm_forward(ctx, a.k, a.k_rstd, a.k_raw, p.k_norm, BT, KD, c.norm_eps);
  } else {
    linear_forward<bf16, bf16>(ctx, a.q, x, p.q_proj, BT, D, QD);
    linear_forward<bf16, bf16>(ctx, a.k, x, p.k_proj, BT, D, KD);
  }
  linear_forward<bf16, bf16>(ctx, a.v, x, p.v_proj, BT, D, KD);
  if (c.rope) {
    rope_apply(ctx, a.q, rope_table, B, Tn, c.n_heads, c.d_head, false);
    rope_apply(ctx, a.k, rope_table, B, Tn, c.n_kv_heads, c.d_head, false);
  }
  attention_core_forward(ctx, c, a.o, a.lse, a.q, a.k, a.v, B, Tn);
  linear_forward<bf16, bf16>(ctx, y, a.o, p.o_proj, BT, QD, D);
}

void attention_backward(Context& ctx, const AttentionConfig& c, const AttentionParams<bf16>& p,
                        const AttentionParams<float>& grad, const AttentionActsCuda& a, const float* rope_table,
                        bf16* dx, const bf16* dy, const bf16* x, int64_t B, int64_t Tn) {
  c.validate();
  const int64_t BT = B * Tn, D = c.d_model, QD = c.q_dim(), KD = c.kv_dim();
  if (BT <= 0) return;
  ArenaScope scope(ctx.scratch);
  bf16* d_o = ctx.scratch.alloc<bf16>(BT * QD, "attention d_o");
  bf16* dq = ctx.scratch.alloc<bf16>(BT * QD, "attention dq");
  bf16* dk = ctx.scratch.alloc<bf16>(BT * KD, "attention dk");
  bf16* dv = ctx.scratch.alloc<bf16>(BT * KD, "attention dv");
  linear_backward<bf16, bf16>(ctx, d_o, grad.o_proj, dy, a.o, p.o_proj, BT, QD, D);
  attention_core_backward(ctx, c, dq, dk, dv, d_o, a.q, a.k, a.v, a.o, a.lse, B, Tn);
  if (c.rope) {  // a rotation: its transpose rotates back
    rope_apply(ctx, dq, rope_table, B, Tn, c.n_heads, c.d_head, true);
    rope_apply(ctx, dk, rope_table, B, Tn, c.n_kv_heads, c.d_head, true);
  }
  const bf16 *dq_in = dq, *dk_in = dk;  // gradients w.r.t. the projections' outputs
  if (c.qk_norm) {
    // Not in place: the dw pass reads dout after the dx pass has run.
    bf16* dq_raw = d_o;  // d_o is no longer needed and has q's shape
    bf16* dk_raw = ctx.scratch.alloc<bf16>(BT * KD, "attention dk_raw");
    rmsnorm_backward(ctx, dq_raw, grad.q_norm, dq, a.q_raw, p.q_norm, a.q_rstd, BT, QD);
    rmsnorm_backward(ctx, dk_raw, grad.k_norm, dk, a.k_raw, p.k_norm, a.k_rstd, BT, KD);
    dq_in = dq_raw, dk_in = dk_raw;
  }
  linear_backward<bf16, bf16>(ctx, dx, grad.q_proj, dq_in, x, p.q_proj, BT, D, QD);
  linear_backward<bf16, bf16>(ctx, dx, grad.k_proj, dk_in, x, p.k_proj, BT, D, KD, /*accumulate_dx=*/true);
  linear_backward<bf16, bf16>(ctx, dx, grad.v_proj, dv, x, p.v_proj, BT, D, KD, /*accumulate_dx=*/true);
}

template void rope_apply<float>(Context&, float*, const float*, int64_t, int64_t, int64_t, int64_t, bool);
template void rope_apply<bf16>(Context&, bf16*, const float*, int64_t, int64_t, int64_t, int64_t, bool);

}  // namespace hysim::cuda
