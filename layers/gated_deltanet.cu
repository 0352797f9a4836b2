// Gated DeltaNet on the GPU: the chunked core (WY/UT form) forward and backward, and the
// full layer around it (projections, short conv + SiLU, L2 norm, beta and decay, gated
// RMSNorm, output projection), the math of layers/gated_deltanet.cpp.
//
// Core forward, per (batch, value head), chunks of L <= chunk_size tokens in order, with
// S [dv, dk] the state entering the chunk:
//   gam_i = sum_{r <= i} g_r,  Gam = exp(gam),  decay(i, j) = exp(gam_i - gam_j)  (j <= i)
//   A = strictly_lower(diag(beta) (K K^T o decay)),  M = I + A
//   U = M^-1 diag(beta) V,  W = M^-1 diag(beta Gam) K,  Delta = U - W S^T
//   O = scale (diag(Gam) Q S^T + (Q K^T o decay) Delta)        (scale = dk^-0.5)
//   S' = Gam_{L-1} S + Delta^T diag(decay(L-1, .)) K
// and the state entering each chunk saved to chunk_states (what the backward reads).
// One block per (batch, value head, slice of the value columns): every value column of the
// state, U, Delta and O is independent of the others, so slices run in parallel (enough
// blocks to fill the device at small B Hv), each recomputing the chunk's dk-wide and L x L
// quantities (A, W, Q K^T). State slice and chunk operands in shared memory in fp32 (storage
// T is fp32 or bf16); products by block_product (tensor cores for bf16 storage, fp32 FMAs
// for fp32); the intra-chunk solves are products with T = (I + A)^-1 (unit_lower_inverse).
//
// Core backward: the exact gradient of the chunked computation, as the CPU's
// gdn_chunk_backward (its comment lists the formulas), chunks in reverse order carrying
// dS = dL/dS' in shared memory (fp32), everything of a chunk recomputed from the saved
// entering state. Every quantity that is per value column (V, U, Delta, dO, dDelta, the rows
// of S and dS) splits over the value dimension, while dq, dk, dbeta, dg are sums over it: a
// cluster of blocks (thread-block cluster, sm_90) takes one (batch, value head), each block
// a slice of the value columns (recomputing the chunk's dk-wide and L x L quantities), and
// the slices' partial dq, dk, dbeta, dg are summed in rank order through distributed shared
// memory at the end of each chunk: deterministic, no global scratch, and at Olmo Hybrid's
// dk 96, dv 192 the per-block state fits shared memory (4 slices of 48 columns).
// Value heads of a q/k head (GQA) write per-value-head fp32 dq, dk that one more kernel
// sums in order.
#include <cooperative_groups.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "core/cuda/device_util.cuh"
#include "core/cuda/gemm.h"
#include "core/cuda/layers.h"

namespace hysim::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kMinSliceCols = 16;  // more value slices for parallelism only while a slice keeps this many columns

constexpr int kMaxChunk = 64;  // the in-register column strips of block_product_column_local

struct GdnDims {
  int Tn, H, Hv, dk, dv, C, NC;
};

// T = (I + A)^-1 for A strictly lower triangular (L x L, row stride ld; what is stored on and
// above the diagonal is ignored), in place: on return Tm holds T with its unit diagonal and
// zeros above. In blocks of 16 rows: each diagonal block by forward substitution (a warp per
// block, a lane per column: 15 steps with warp barriers only), then row block i from the
// rows above it, T_i,<i = -T_ii (A_i,<i T_<i,<i), two products through tmp [16,
// mma_stride(L)]. The chunk's two triangular solves then become products with T (tensor
// cores for bf16 storage) instead of L block-wide barrier steps. Every thread of the block
// calls it.
template <class T, int Threads>
__device__ void unit_lower_inverse(int L, float* Tm, int ld, float* tmp) {
  const int warp = int(threadIdx.x) / kWarp, lane = int(threadIdx.x) % kWarp, nb = (L + 15) / 16;
  const int lt = mma_stride(L);
  for (int blk = warp; blk < nb; blk += Threads / kWarp) {
    const int b0 = blk * 16, b1 = min(L, b0 + 16), j = b0 + lane;  // lane owns column j of its block
    for (int r = b0 + 1; r < b1; ++r) {
      float val = 0.f;
      if (j < r) {
        val = -Tm[r * ld + j];
        for (int c = j + 1; c < r; ++c) val -= Tm[r * ld + c] * Tm[c * ld + j];
      }
      __syncwarp();
      if (j < r) Tm[r * ld + j] = val;
      __syncwarp();
    }
  }
  // The diagonal and above are not read by the substitution above: set them now.
  for (int i = int(threadIdx.x); i < L * L; i += Threads) {
    const int r = i / L, c = i % L;
    if (c >= r) Tm[r * ld + c] = c == r ? 1.f : 0.f;
  }
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

// Shared memory (floats) for a slice of dvs value columns: S [dvs, dk], K [C, dk], QW [C, dk]
// (W, then Q), UD [C, dvs] (U, then Delta), AP [C, C] (A, T, then the decayed Q K^T), gam,
// beta, dend, beta Gam [C]. Row strides mma_stride(dk), mma_stride(dvs), mma_stride(C) (LK, LV,
// LC): the products' fragment loads are conflict-free or 2-way. QW also serves as the
// inverse's scratch [16, LC], hence max(LK, LC) floats per row.
size_t gdn_fwd_smem(const GdnDims& d, int dvs) {
  const size_t lk = mma_stride(d.dk), lqw = std::max<size_t>(lk, mma_stride(d.C)), lv = mma_stride(dvs),
               lc = mma_stride(d.C);
  return sizeof(float) * (size_t(dvs) * lk + size_t(d.C) * (lk + lqw + lv + lc) + 4 * size_t(d.C));
}

// beta and g in TG: T for the public core, fp32 inside the layer (see GdnActsCuda).
template <class T, class TG>
__global__ void __launch_bounds__(kThreads)
    gdn_chunk_forward_kernel(T* __restrict__ o, T* __restrict__ chunk_states, const T* __restrict__ q,
                             const T* __restrict__ k, const T* __restrict__ v, const TG* __restrict__ beta,
                             const TG* __restrict__ g, GdnDims d, int dvs, float scale) {
  extern __shared__ float sm[];
  const int dk = d.dk, C = d.C, LK = mma_stride(dk), LV = mma_stride(dvs), LC = mma_stride(C);
  const int e0 = blockIdx.x * dvs, nv = min(dvs, d.dv - e0);  // this block's value columns
  float* S = sm;
  float* K = S + dvs * LK;
  float* QW = K + C * LK;
  float* UD = QW + C * max(LK, LC);
  float* AP = UD + C * LV;
  float* gam = AP + C * LC;
  float* bet = gam + C;
  float* dend = bet + C;
  float* bGam = dend + C;  // beta Gam

  const int hv = blockIdx.y, b = blockIdx.z, tid = threadIdx.x;
  const int64_t QK = int64_t(d.H) * dk, DV = int64_t(d.Hv) * d.dv;
  const int64_t qk_off = int64_t(hv / (d.Hv / d.H)) * dk, v_off = int64_t(hv) * d.dv + e0;
  for (int i = tid; i < nv * LK; i += kThreads) S[i] = 0.f;

  for (int kc = 0; kc < d.NC; ++kc) {
    const int t0 = kc * C, L = min(C, d.Tn - t0);
    const int64_t bt0 = int64_t(b) * d.Tn + t0;
    __syncthreads();  // previous chunk's state update done
    T* cs = chunk_states + ((int64_t(b) * d.Hv + hv) * d.NC + kc) * d.dv * dk + int64_t(e0) * dk;
    for (int i = tid; i < nv * dk; i += kThreads) cs[i] = from_f32<T>(S[(i / dk) * LK + i % dk]);
    for (int i = tid; i < L * dk; i += kThreads) {
      const int r = i / dk, c = i % dk;
      K[r * LK + c] = to_f32(k[(bt0 + r) * QK + qk_off + c]);
    }
    for (int i = tid; i < L * nv; i += kThreads) {
      const int r = i / nv, c = i % nv;
      UD[r * LV + c] = to_f32(v[(bt0 + r) * DV + v_off + c]);
    }
    for (int i = tid; i < L; i += kThreads) {
      gam[i] = to_f32(g[(bt0 + i) * d.Hv + hv]);
      bet[i] = to_f32(beta[(bt0 + i) * d.Hv + hv]);
    }
    __syncthreads();
    if (tid == 0)  // cumulative log decay, in token order (as the CPU)
      for (int i = 1; i < L; ++i) gam[i] += gam[i - 1];
    __syncthreads();
    for (int i = tid; i < L; i += kThreads) dend[i] = expf(gam[L - 1] - gam[i]), bGam[i] = bet[i] * expf(gam[i]);
    __syncthreads();
    // A = strictly_lower(diag(beta) (K K^T o decay)), then T = M^-1 = (I + A)^-1 in its place
    // (W's buffer is free until W is computed: the inverse's scratch).
    block_product<T, kThreads>(
        L, L, dk, [&](int r, int e) { return K[r * LK + e]; }, [&](int c, int e) { return K[c * LK + e]; },
        [&](int r, int c, float kk) { AP[r * LC + c] = c < r ? kk * bet[r] * expf(gam[r] - gam[c]) : 0.f; });
    __syncthreads();
    unit_lower_inverse<T, kThreads>(L, AP, LC, QW);
    // W = T diag(beta Gam) K.
    block_product<T, kThreads>(
        L, dk, L, [&](int r, int c) { return AP[r * LC + c]; },
        [&](int e, int c) { return bGam[c] * K[c * LK + e]; },
        [&](int r, int e, float acc) { QW[r * LK + e] = acc; });
    __syncthreads();
    // Delta = U - W S^T = T diag(beta) V - W S^T, over V (column-local).
    block_product_column_local<T, kThreads, kMaxChunk>(
        L, nv, L + dk, [&](int r, int c) { return c < L ? AP[r * LC + c] : QW[r * LK + (c - L)]; },
        [&](int e, int c) { return c < L ? bet[c] * UD[c * LV + e] : -S[e * LK + (c - L)]; },
        [&](int r, int e, float acc) { UD[r * LV + e] = acc; });
    __syncthreads();
    // Q into W's place; P = Q K^T o decay (lower incl. diagonal) into A's place.
    for (int i = tid; i < L * dk; i += kThreads) {
      const int r = i / dk, c = i % dk;
      QW[r * LK + c] = to_f32(q[(bt0 + r) * QK + qk_off + c]);
    }
    __syncthreads();
    block_product<T, kThreads>(
        L, L, dk, [&](int r, int e) { return QW[r * LK + e]; }, [&](int c, int e) { return K[c * LK + e]; },
        [&](int r, int c, float qk) { AP[r * LC + c] = c <= r ? qk * expf(gam[r] - gam[c]) : 0.f; });
    __syncthreads();  // the product above still reads Q
    // Gam_r Q_r into Q's place, so that O is one product over [Q | P] and [S^T; Delta].
    for (int i = tid; i < L * dk; i += kThreads) QW[(i / dk) * LK + i % dk] *= expf(gam[i / dk]);
    __syncthreads();
    // O = scale (Gam_r Q_r . S_e + sum_{c <= r} P_rc Delta_ce)  (P is 0 above the diagonal).
    block_product<T, kThreads>(
        L, nv, dk + L,
        [&](int r, int c) { return c < dk ? QW[r * LK + c] : AP[r * LC + (c - dk)]; },
        [&](int e, int c) { return c < dk ? S[e * LK + c] : UD[(c - dk) * LV + e]; },
        [&](int r, int e, float acc) { o[(bt0 + r) * DV + v_off + e] = from_f32<T>(scale * acc); });
    __syncthreads();  // S is read above; now update it
    // S' = Gam_{L-1} S + sum_r Delta_r^T decay(L-1, r) K_r.
    const float Gam_end = expf(gam[L - 1]);
    block_product<T, kThreads>(
        nv, dk, L, [&](int e, int r) { return UD[r * LV + e] * dend[r]; }, [&](int c, int r) { return K[r * LK + c]; },
        [&](int e, int c, float acc) { S[e * LK + c] = Gam_end * S[e * LK + c] + acc; });
  }
}


// ---- core backward ------------------------------------------------------------------

// The backward runs 16 warps per block: one block per SM fits (shared memory), and 8 warps
// left the SM waiting on latency (Nsight Compute: 0.36 eligible warps per scheduler).
constexpr int kBwdThreads = 512;
constexpr int kBwdWarps = kBwdThreads / kWarp;
constexpr int kMaxSlices = 8;  // value slices per (batch, value head) in the backward: the portable cluster size

// Shared memory of the backward (offsets in floats) for dk, a slice of dvs value columns and
// chunk C. Row strides: LK = mma_stride(dk) for the dk-wide operands (the products' fragment
// loads conflict-free or 2-way), LV = dvs + 1 and LC = C + 1 for the others (odd: 4-way at
// worst; mma_stride there too would take Olmo Hybrid's 4 slices of 48 columns past 227 KB).
// Regions whose tenants never live at the same time are shared:
//   dS [dvs, dk]   gradient w.r.t. the state leaving the chunk (carried over chunks)
//   K, dK, W [C, dk]
//   QR [C, dk]     Q, then dRW
//   SR             S [dvs, dk] (the entering state's slice), then dA / dKK [C, C]
//   UD [C, dvs]    U, then Delta; UD and X together then hold dQ [C, dk]
//   X  [C, C]      dP
//   dO [C, dvs]    scale dO, then U recomputed for dA
//   dD [C, dvs]    dDelta, then dRU = T^T dDelta (in place)
//   LL [C, C]      K K^T o decay strictly below the diagonal; P^T, then dPd^T, on and above it
//   Tm [C, C]      T = M^-1 (unit lower; X is the scratch of its inversion)
//   vectors [C]    gam, Gam, beta, dend (= decay(L-1, .)), dgam, dbeta, g_end, summed dgam; 32 for sums
struct GdnBwdLayout {
  int LK, LV, LC, dS, K, dK, W, QR, SR, UD, X, dO, dD, LL, Tm, vec, total;
  __host__ __device__ GdnBwdLayout(int dk, int dvs, int C) {
    LK = mma_stride(dk), LV = dvs + 1, LC = C + 1;
    const int a = C * LK, s = dvs * LK, v = C * LV, l = C * LC;
    int o = 0;
    dS = o, o += s;
    K = o, o += a;
    dK = o, o += a;
    W = o, o += a;
    QR = o, o += a;
    SR = o, o += s > l ? s : l;
    UD = o, o += v;
    X = o, o += l > a - v ? l : a - v;
    dO = o, o += v;
    dD = o, o += v;
    LL = o, o += l;
    Tm = o, o += l;
    vec = o, o += 8 * C + 32;
    total = o;
  }
};

// Grid (slices, Hv, B), clusters of `slices` blocks along x: block rank r of a cluster owns
// value columns [r dvs, min(dv, (r + 1) dvs)) of value head blockIdx.y of batch blockIdx.z.
// Steps per chunk (the CPU's formulas; barriers between steps that read what others write):
//   recompute: KKd, P; T = M^-1 (unit_lower_inverse); W = T diag(beta Gam) K; Delta = T diag(beta) V - W S^T
//   dDelta = diag(dend) K dS^T;  dK = diag(dend) Delta dS;  dP = dOs Delta^T;  <S, dS>
//   g_end, rowsum - colsum of dP o P into dgam;  dDelta += P^T dOs;  dPd = dP o decay
//   dQ = diag(Gam) dOs S;  dK += dPd^T Q;  dgam += rowsum(Q o dQ);  dS <- Gam_{L-1} dS + (Gam dOs)^T Q - dDelta^T W
//   dQ += dPd K;  dRU = M^-T dDelta = T^T dDelta;  dRW = -dRU S;  U = T diag(beta) V again (for dA)
//   dA = -strictly_lower(dRU U^T + dRW W^T);  dV = diag(beta) dRU;  dbeta, dgam from dRU o V and dRW o K;  dK += diag(beta Gam) dRW
//   dbeta += rowsum(dA o KKd);  dgam += rowsum - colsum of dA o A;  dK += (dKK + dKK^T) K
//   cluster: sum the slices' dQ, dK, dbeta, dgam; dg = reverse cumulative sum of dgam.
template <class T, class TG>
__global__ void __launch_bounds__(kBwdThreads, 1)
    gdn_chunk_backward_kernel(T* __restrict__ dq, T* __restrict__ dk_out, float* __restrict__ dq_heads,
                              float* __restrict__ dk_heads, T* __restrict__ dv_out, TG* __restrict__ dbeta,
                              TG* __restrict__ dg, const T* __restrict__ d_o, const T* __restrict__ q,
                              const T* __restrict__ k, const T* __restrict__ v, const TG* __restrict__ beta,
                              const TG* __restrict__ g, const T* __restrict__ chunk_states, GdnDims d, int dvs,
                              float scale) {
  namespace cg = cooperative_groups;
  extern __shared__ float sm[];
  cg::cluster_group cluster = cg::this_cluster();
  const int dk = d.dk, C = d.C;
  const GdnBwdLayout ly(dk, dvs, C);
  const int LK = ly.LK, LV = ly.LV, LC = ly.LC;
  float* dS = sm + ly.dS;
  float* K = sm + ly.K;
  float* dK = sm + ly.dK;
  float* W = sm + ly.W;
  float* Q = sm + ly.QR;
  float* dRW = sm + ly.QR;
  float* S = sm + ly.SR;
  float* dA = sm + ly.SR;
  float* UD = sm + ly.UD;
  float* dQ = sm + ly.UD;  // [C, LK] over UD and X
  float* X = sm + ly.X;
  float* dO = sm + ly.dO;
  float* U2 = sm + ly.dO;
  float* dD = sm + ly.dD;
  float* LL = sm + ly.LL;
  float* Tm = sm + ly.Tm;
  float* gam = sm + ly.vec;
  float* Gam = gam + C;
  float* bet = Gam + C;
  float* dend = bet + C;
  float* dgam = dend + C;
  float* dbet = dgam + C;
  float* gtmp = dbet + C;
  float* dgsum = gtmp + C;
  float* red = dgsum + C;

  const int ns = int(cluster.num_blocks()), rank = int(cluster.block_rank());
  const int hv = blockIdx.y, b = blockIdx.z, tid = threadIdx.x, lane = tid % kWarp, warp = tid / kWarp;
  const int e0 = rank * dvs, nv = min(dvs, d.dv - e0);
  const int64_t QK = int64_t(d.H) * dk, DV = int64_t(d.Hv) * d.dv;
  const int64_t qk_off = int64_t(hv / (d.Hv / d.H)) * dk, v_off = int64_t(hv) * d.dv + e0;
  for (int i = tid; i < nv * LK; i += kBwdThreads) dS[i] = 0.f;

  for (int kc = d.NC - 1; kc >= 0; --kc) {
    const int t0 = kc * C, L = min(C, d.Tn - t0);
    const int64_t bt0 = int64_t(b) * d.Tn + t0;
    const T* cs = chunk_states + ((int64_t(b) * d.Hv + hv) * d.NC + kc) * d.dv * dk + int64_t(e0) * dk;
    for (int i = tid; i < nv * dk; i += kBwdThreads) S[(i / dk) * LK + i % dk] = to_f32(cs[i]);
    for (int i = tid; i < L * dk; i += kBwdThreads) {
      const int r = i / dk, c = i % dk;
      K[r * LK + c] = to_f32(k[(bt0 + r) * QK + qk_off + c]);
      Q[r * LK + c] = to_f32(q[(bt0 + r) * QK + qk_off + c]);
    }
    for (int i = tid; i < L * nv; i += kBwdThreads) {
      const int r = i / nv, e = i % nv;
      dO[r * LV + e] = scale * to_f32(d_o[(bt0 + r) * DV + v_off + e]);
    }
    for (int i = tid; i < L; i += kBwdThreads) {
      gam[i] = to_f32(g[(bt0 + i) * d.Hv + hv]);
      bet[i] = to_f32(beta[(bt0 + i) * d.Hv + hv]);
      dgam[i] = 0.f, dbet[i] = 0.f;
    }
    __syncthreads();
    if (tid == 0)  // cumulative log decay, in token order (as the forward)
      for (int i = 1; i < L; ++i) gam[i] += gam[i - 1];
    __syncthreads();

    // Recompute the chunk: U's right-hand side diag(beta) V (over UD); KKd below the diagonal
    // of LL, P^T on and above it.
    for (int i = tid; i < L; i += kBwdThreads) Gam[i] = expf(gam[i]), dend[i] = expf(gam[L - 1] - gam[i]);
    for (int i = tid; i < L * nv; i += kBwdThreads) {
      const int r = i / nv, e = i % nv;
      UD[r * LV + e] = to_f32(v[(bt0 + r) * DV + v_off + e]) * bet[r];
    }
    block_product<T, kBwdThreads>(
        L, L, dk, [&](int r, int e) { return K[r * LK + e]; }, [&](int c, int e) { return K[c * LK + e]; },
        [&](int r, int c, float kk) {
          if (c < r) LL[r * LC + c] = kk * expf(gam[r] - gam[c]);
        });
    block_product<T, kBwdThreads>(
        L, L, dk, [&](int r, int e) { return Q[r * LK + e]; }, [&](int c, int e) { return K[c * LK + e]; },
        [&](int r, int c, float qk) {
          if (c <= r) LL[c * LC + r] = qk * expf(gam[r] - gam[c]);
        });
    __syncthreads();
    // T = M^-1 (M = I + strictly_lower(diag(beta) KKd)); W = T diag(beta Gam) K;
    // Delta = U - W S^T = T diag(beta) V - W S^T (in U's place, column-local).
    for (int i = tid; i < L * L; i += kBwdThreads) {
      const int r = i / L, c = i % L;
      Tm[r * LC + c] = c < r ? bet[r] * LL[r * LC + c] : 0.f;
    }
    __syncthreads();
    unit_lower_inverse<T, kBwdThreads>(L, Tm, LC, X);
    block_product<T, kBwdThreads>(
        L, dk, L, [&](int r, int c) { return Tm[r * LC + c]; },
        [&](int e, int c) { return bet[c] * Gam[c] * K[c * LK + e]; },
        [&](int r, int e, float acc) { W[r * LK + e] = acc; });
    __syncthreads();
    block_product_column_local<T, kBwdThreads, kMaxChunk>(
        L, nv, L + dk, [&](int r, int c) { return c < L ? Tm[r * LC + c] : W[r * LK + (c - L)]; },
        [&](int e, int c) { return c < L ? UD[c * LV + e] : -S[e * LK + (c - L)]; },
        [&](int r, int e, float acc) { UD[r * LV + e] = acc; });
    __syncthreads();

    // State passing and the intra-chunk output term.
    block_product<T, kBwdThreads>(
        L, nv, dk, [&](int r, int c) { return K[r * LK + c]; }, [&](int e, int c) { return dS[e * LK + c]; },
        [&](int r, int e, float acc) { dD[r * LV + e] = dend[r] * acc; });
    block_product<T, kBwdThreads>(
        L, dk, nv, [&](int r, int e) { return UD[r * LV + e]; }, [&](int c, int e) { return dS[e * LK + c]; },
        [&](int r, int c, float acc) { dK[r * LK + c] = dend[r] * acc; });
    block_product<T, kBwdThreads>(
        L, L, nv, [&](int i, int e) { return dO[i * LV + e]; }, [&](int j, int e) { return UD[j * LV + e]; },
        [&](int i, int j, float acc) {
          if (j <= i) X[i * LC + j] = acc;
        });
    {
      float s = 0.f;
      for (int i = tid; i < nv * dk; i += kBwdThreads) s += S[(i / dk) * LK + i % dk] * dS[(i / dk) * LK + i % dk];
      s = warp_sum(s);
      if (lane == 0) red[warp] = s;
    }
    __syncthreads();
    // g_end = rowsum(K o dK) (dK = diag(dend) Delta dS so far); G = dP o P: rowsum - colsum.
    for (int i = warp; i < L; i += kBwdWarps) {
      float ge = 0.f, gs = 0.f;
      for (int c = lane; c < dk; c += kWarp) ge += K[i * LK + c] * dK[i * LK + c];
      for (int j = lane; j <= i; j += kWarp) gs += X[i * LC + j] * LL[j * LC + i];
      for (int r = i + lane; r < L; r += kWarp) gs -= X[r * LC + i] * LL[i * LC + r];
      ge = warp_sum(ge), gs = warp_sum(gs);
      if (lane == 0) gtmp[i] = ge, dgam[i] += gs - ge;
    }
    // dDelta += P^T dOs.
    block_product<T, kBwdThreads>(
        L, nv, L, [&](int j, int i) { return i >= j ? LL[j * LC + i] : 0.f; },
        [&](int e, int i) { return dO[i * LV + e]; }, [&](int j, int e, float acc) { dD[j * LV + e] += acc; });
    __syncthreads();
    // dPd = dP o decay, transposed over P (no longer needed); dgam_{L-1} += Gam_{L-1} <S, dS> + sum g_end.
    for (int idx = tid; idx < L * L; idx += kBwdThreads) {
      const int i = idx / L, j = idx % L;
      if (j <= i) LL[j * LC + i] = X[i * LC + j] * expf(gam[i] - gam[j]);
    }
    if (tid == 0) {
      float s = 0.f, ge = 0.f;
      for (int w = 0; w < kBwdWarps; ++w) s += red[w];
      for (int i = 0; i < L; ++i) ge += gtmp[i];
      dgam[L - 1] += Gam[L - 1] * s + ge;
    }
    __syncthreads();
    // dQ = diag(Gam) dOs S (over UD and X, both free now); dK += dPd^T Q.
    block_product<T, kBwdThreads>(
        L, dk, nv, [&](int i, int e) { return dO[i * LV + e]; }, [&](int c, int e) { return S[e * LK + c]; },
        [&](int i, int c, float acc) { dQ[i * LK + c] = Gam[i] * acc; });
    block_product<T, kBwdThreads>(
        L, dk, L, [&](int j, int i) { return i >= j ? LL[j * LC + i] : 0.f; },
        [&](int c, int i) { return Q[i * LK + c]; }, [&](int j, int c, float acc) { dK[j * LK + c] += acc; });
    __syncthreads();
    // dgam += rowsum(Q o dQ) (= Gam o rowsum(dOs o Q S^T)); the state gradient for the
    // previous chunk: dS <- Gam_{L-1} dS + (Gam dOs)^T Q - dDelta^T W.
    for (int i = warp; i < L; i += kBwdWarps) {
      float s = 0.f;
      for (int c = lane; c < dk; c += kWarp) s += Q[i * LK + c] * dQ[i * LK + c];
      s = warp_sum(s);
      if (lane == 0) dgam[i] += s;
    }
    {
      const float Gam_end = Gam[L - 1];
      block_product<T, kBwdThreads>(
          nv, dk, 2 * L,
          [&](int e, int j) { return j < L ? Gam[j] * dO[j * LV + e] : -dD[(j - L) * LV + e]; },
          [&](int c, int j) { return j < L ? Q[j * LK + c] : W[(j - L) * LK + c]; },
          [&](int e, int c, float acc) { dS[e * LK + c] = Gam_end * dS[e * LK + c] + acc; });
    }
    __syncthreads();
    // dQ += dPd K; dRU = M^-T dDelta = T^T dDelta (in place); U's right-hand side diag(beta) V
    // (over dO).
    block_product<T, kBwdThreads>(
        L, dk, L, [&](int i, int j) { return j <= i ? LL[j * LC + i] : 0.f; },
        [&](int c, int j) { return K[j * LK + c]; }, [&](int i, int c, float acc) { dQ[i * LK + c] += acc; });
    block_product_column_local<T, kBwdThreads, kMaxChunk>(
        L, nv, L, [&](int r, int c) { return Tm[c * LC + r]; }, [&](int e, int c) { return dD[c * LV + e]; },
        [&](int r, int e, float acc) { dD[r * LV + e] = acc; });
    for (int i = tid; i < L * nv; i += kBwdThreads) {
      const int r = i / nv, e = i % nv;
      U2[r * LV + e] = to_f32(v[(bt0 + r) * DV + v_off + e]) * bet[r];
    }
    __syncthreads();
    // dRW = M^-T (-dDelta S) = -dRU S (over Q); U = T diag(beta) V again (in place).
    block_product<T, kBwdThreads>(
        L, dk, nv, [&](int i, int e) { return dD[i * LV + e]; }, [&](int c, int e) { return S[e * LK + c]; },
        [&](int i, int c, float acc) { dRW[i * LK + c] = -acc; });
    block_product_column_local<T, kBwdThreads, kMaxChunk>(
        L, nv, L, [&](int r, int c) { return Tm[r * LC + c]; }, [&](int e, int c) { return U2[c * LV + e]; },
        [&](int r, int e, float acc) { U2[r * LV + e] = acc; });
    __syncthreads();
    // dA = -strictly_lower(dRU U^T + dRW W^T) (over S); dV = diag(beta) dRU;
    // dbeta += rowsum(dRU o V) + Gam o rowsum(dRW o K); dgam += beta Gam rowsum(dRW o K);
    // dK += diag(beta Gam) dRW.
    block_product<T, kBwdThreads>(
        L, L, nv + dk, [&](int i, int j) { return j < nv ? dD[i * LV + j] : dRW[i * LK + (j - nv)]; },
        [&](int r, int j) { return j < nv ? U2[r * LV + j] : W[r * LK + (j - nv)]; },
        [&](int i, int r, float acc) { dA[i * LC + r] = r < i ? -acc : 0.f; });
    for (int i = warp; i < L; i += kBwdWarps) {
      float tv = 0.f, tw = 0.f;
      for (int e = lane; e < nv; e += kWarp) {
        const float dru = dD[i * LV + e];
        const int64_t gi = (bt0 + i) * DV + v_off + e;
        tv += dru * to_f32(v[gi]);
        dv_out[gi] = from_f32<T>(bet[i] * dru);
      }
      for (int c = lane; c < dk; c += kWarp) tw += dRW[i * LK + c] * K[i * LK + c];
      tv = warp_sum(tv), tw = warp_sum(tw);
      if (lane == 0) dbet[i] += tv + Gam[i] * tw, dgam[i] += bet[i] * Gam[i] * tw;
    }
    for (int idx = tid; idx < L * dk; idx += kBwdThreads) {
      const int r = idx / dk, c = idx % dk;
      dK[r * LK + c] += bet[r] * Gam[r] * dRW[r * LK + c];
    }
    __syncthreads();
    // A = strictly_lower(diag(beta) KKd): dbeta += rowsum(dA o KKd); G = dA o A: rowsum - colsum.
    for (int i = warp; i < L; i += kBwdWarps) {
      float sb = 0.f, sc = 0.f;
      for (int j = lane; j < i; j += kWarp) sb += dA[i * LC + j] * LL[i * LC + j];
      for (int r = i + 1 + lane; r < L; r += kWarp) sc += bet[r] * dA[r * LC + i] * LL[r * LC + i];
      sb = warp_sum(sb), sc = warp_sum(sc);
      if (lane == 0) dbet[i] += sb, dgam[i] += bet[i] * sb - sc;
    }
    __syncthreads();
    // dKK = diag(beta) (dA o decay), in place (zero on and above the diagonal).
    for (int idx = tid; idx < L * L; idx += kBwdThreads) {
      const int i = idx / L, j = idx % L;
      if (j < i) dA[i * LC + j] *= bet[i] * expf(gam[i] - gam[j]);
    }
    __syncthreads();
    // dK += (dKK + dKK^T) K.
    block_product<T, kBwdThreads>(
        L, dk, L, [&](int i, int j) { return dA[i * LC + j] + dA[j * LC + i]; },
        [&](int c, int j) { return K[j * LK + c]; }, [&](int i, int c, float acc) { dK[i * LK + c] += acc; });
    cluster.sync();

    // Sum the slices in rank order: rank r writes dq, dk rows [r L / ns, (r + 1) L / ns); rank 0
    // dbeta and dg (the reverse cumulative sum of dgam over the chunk: gam = cumsum(g)).
    {
      const int r0 = rank * L / ns, r1 = (rank + 1) * L / ns;
      for (int idx = tid; idx < (r1 - r0) * dk; idx += kBwdThreads) {
        const int i = r0 + idx / dk, c = idx % dk;
        float sq = 0.f, sk = 0.f;
        for (int p = 0; p < ns; ++p) {
          sq += cluster.map_shared_rank(dQ, p)[i * LK + c];
          sk += cluster.map_shared_rank(dK, p)[i * LK + c];
        }
        if (dq_heads) {
          const int64_t o = ((bt0 + i) * d.Hv + hv) * dk + c;
          dq_heads[o] = sq, dk_heads[o] = sk;
        } else {
          const int64_t o = (bt0 + i) * QK + qk_off + c;
          dq[o] = from_f32<T>(sq), dk_out[o] = from_f32<T>(sk);
        }
      }
      if (rank == 0) {
        for (int i = tid; i < L; i += kBwdThreads) {
          float sg = 0.f, sb = 0.f;
          for (int p = 0; p < ns; ++p) {
            sg += cluster.map_shared_rank(dgam, p)[i];
            sb += cluster.map_shared_rank(dbet, p)[i];
          }
          dgsum[i] = sg;
          dbeta[(bt0 + i) * d.Hv + hv] = from_f32<TG>(sb);
        }
        __syncthreads();
        if (tid == 0) {
          float run = 0.f;
          for (int i = L - 1; i >= 0; --i) dg[(bt0 + i) * d.Hv + hv] = from_f32<TG>(run += dgsum[i]);
        }
      }
    }
    cluster.sync();  // no block refills its buffers while another still reads them
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

template <class T, class TG>
void chunk_forward(Context& ctx, const GdnConfig& c, T* o, T* chunk_states, const T* q, const T* k, const T* v,
                   const TG* beta, const TG* g, int64_t B, int64_t Tn) {
  check_core("gdn_chunk_forward", c, B, Tn);
  if (B <= 0 || Tn <= 0) return;
  const GdnDims d = gdn_dims(c, Tn);
  const std::string shapes = shape_str("gdn_chunk_forward B, Tn, H, Hv, dk, dv, chunk", B, Tn, c.n_heads,
                                       c.n_v_heads, c.d_head_k, c.d_head_v, c.chunk_size);
  int max_smem = 0, n_sm = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, ctx.device), shapes);
  CUDA_CHECK(cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, ctx.device), shapes);
  // Value slices: about two blocks per SM (a slice keeps at least kMinSliceCols columns,
  // rounded up to the tensor cores' 16-column tiles), more only if the state does not fit.
  int slices = int(std::clamp<int64_t>(ceil_div(2 * n_sm, B * c.n_v_heads), 1, std::max(1, d.dv / kMinSliceCols)));
  int dvs = 0;
  for (;; ++slices) {
    dvs = int(std::min<int64_t>(d.dv, ceil_div(ceil_div(d.dv, slices), 16) * 16));
    if (gdn_fwd_smem(d, dvs) <= size_t(max_smem) || dvs <= kMinSliceCols) break;
  }
  slices = int(ceil_div(d.dv, dvs));  // no empty slice
  const size_t smem = gdn_fwd_smem(d, dvs);
  if (smem > size_t(max_smem))
    throw std::invalid_argument(shapes + ": a state slice of " + std::to_string(dvs) +
                                " value columns and the chunk need " + std::to_string(smem) +
                                " bytes of shared memory, more than the device's " + std::to_string(max_smem));
  CUDA_CHECK(cudaFuncSetAttribute(gdn_chunk_forward_kernel<T, TG>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  int(smem)),
             shapes);
  const float scale = float(1.0 / std::sqrt(double(c.d_head_k)));
  gdn_chunk_forward_kernel<T, TG><<<dim3(unsigned(slices), unsigned(c.n_v_heads), unsigned(B)), kThreads, smem,
                                    ctx.stream>>>(o, chunk_states, q, k, v, beta, g, d, dvs, scale);
  CUDA_CHECK_LAUNCH("gdn_chunk_forward_kernel", shapes);
}

template <class T, class TG>
void chunk_backward(Context& ctx, const GdnConfig& c, T* dq, T* dk, T* dv, TG* dbeta, TG* dg, const T* d_o,
                    const T* q, const T* k, const T* v, const TG* beta, const TG* g, const T* chunk_states, int64_t B,
                    int64_t Tn) {
  check_core("gdn_chunk_backward", c, B, Tn);
  if (B <= 0 || Tn <= 0) return;
  const GdnDims d = gdn_dims(c, Tn);
  const std::string shapes = shape_str("gdn_chunk_backward B, Tn, H, Hv, dk, dv, chunk", B, Tn, c.n_heads,
                                       c.n_v_heads, c.d_head_k, c.d_head_v, c.chunk_size);
  int max_smem = 0, n_sm = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, ctx.device), shapes);
  CUDA_CHECK(cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, ctx.device), shapes);
  auto smem_for = [&](int slices) {
    return sizeof(float) * size_t(GdnBwdLayout(d.dk, int(ceil_div(d.dv, slices)), d.C).total);
  };
  // As few value slices as fit shared memory; more (down to kMinSliceCols columns each)
  // while the grid has fewer blocks than the device has SMs.
  int slices = 1;
  while (slices < kMaxSlices && slices < d.dv && smem_for(slices) > size_t(max_smem)) ++slices;
  if (smem_for(slices) > size_t(max_smem))
    throw std::invalid_argument(shapes + ": even split into " + std::to_string(slices) +
                                " value slices, the backward needs " + std::to_string(smem_for(slices)) +
                                " bytes of shared memory per block, more than the device's " +
                                std::to_string(max_smem));
  while (slices < kMaxSlices && B * c.n_v_heads * slices < n_sm && ceil_div(d.dv, slices + 1) >= kMinSliceCols)
    ++slices;
  const int dvs = int(ceil_div(d.dv, slices));
  slices = int(ceil_div(d.dv, dvs));  // no empty slice
  const size_t smem = sizeof(float) * size_t(GdnBwdLayout(d.dk, dvs, d.C).total);
  auto kernel = gdn_chunk_backward_kernel<T, TG>;
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)), shapes);

  ArenaScope scope(ctx.scratch);
  const int64_t group = c.n_v_heads / c.n_heads, per_heads = B * Tn * c.n_v_heads * c.d_head_k;
  float* dq_heads = group > 1 ? ctx.scratch.alloc<float>(per_heads, "gdn backward dq per value head") : nullptr;
  float* dk_heads = group > 1 ? ctx.scratch.alloc<float>(per_heads, "gdn backward dk per value head") : nullptr;

  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(unsigned(slices), unsigned(c.n_v_heads), unsigned(B));
  cfg.blockDim = dim3(kBwdThreads);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = ctx.stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = unsigned(slices), attr[0].val.clusterDim.y = 1, attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr, cfg.numAttrs = 1;
  int clusters = 0;
  CUDA_CHECK(cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg), shapes);
  if (clusters < 1)
    throw std::runtime_error(shapes + ": a cluster of " + std::to_string(slices) + " blocks with " +
                             std::to_string(smem) + " bytes of shared memory each cannot be scheduled");
  const float scale = float(1.0 / std::sqrt(double(c.d_head_k)));
  CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, dq, dk, dq_heads, dk_heads, dv, dbeta, dg, d_o, q, k, v, beta, g,
                                chunk_states, d, dvs, scale),
             shapes);
  CUDA_CHECK_LAUNCH("gdn_chunk_backward_kernel", shapes);
  if (group > 1) {
    const int64_t n = B * Tn * c.n_heads * c.d_head_k;
    gdn_group_sum_kernel<T><<<unsigned(ceil_div(n, 256)), 256, 0, ctx.stream>>>(
        dq, dk, dq_heads, dk_heads, n, int(c.n_heads), int(group), int(c.d_head_k));
    CUDA_CHECK_LAUNCH("gdn_group_sum_kernel", shapes);
  }
}

}  // namespace

template <class T>
void gdn_chunk_forward(Context& ctx, const GdnConfig& c, T* o, T* chunk_states, const T* q, const T* k, const T* v,
                       const T* beta, const T* g, int64_t B, int64_t Tn) {
  chunk_forward<T, T>(ctx, c, o, chunk_states, q, k, v, beta, g, B, Tn);
}

template <class T>
void gdn_chunk_backward(Context& ctx, const GdnConfig& c, T* dq, T* dk, T* dv, T* dbeta, T* dg, const T* d_o,
                        const T* q, const T* k, const T* v, const T* beta, const T* g, const T* chunk_states,
                        int64_t B, int64_t Tn) {
  chunk_backward<T, T>(ctx, c, dq, dk, dv, dbeta, dg, d_o, q, k, v, beta, g, chunk_states, B, Tn);
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
__global__ void gated_rmsnorm_forward_kernel(bf16* __restrict__ o_gated, float* __restrict__ rstd,
                                             const bf16* __restrict__ o, const bf16* __restrict__ gate,
                                             const bf16* __restrict__ w, int64_t rows, int dv, float eps) {
  const int lane = threadIdx.x % kWarp;
  const int64_t n = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  if (n >= rows) return;
  const bf16* orow = o + n * dv;
  float ss = 0.f;
  for (int j = lane; j < dv; j += kWarp) ss += to_f32(orow[j]) * to_f32(orow[j]);
  const float r = 1.f / sqrtf(warp_sum(ss) / float(dv) + eps);
  if (lane == 0) rstd[n] = r;
  for (int j = lane; j < dv; j += kWarp)
    o_gated[n * dv + j] = from_f32<bf16>(to_f32(orow[j]) * r * to_f32(w[j]) * silu_f32(to_f32(gate[n * dv + j])));
}

// Its backward with n = o r, z = silu(gate): d_gate = do' n w silu'(gate); dn = do' w z;
// d_o = r (dn - n mean(dn n)). d_og is overwritten with do' z, so that the o_norm gradient
// sum(do' z n) is rmsnorm_backward's dw of (dout = do' z, x = o, rstd = r).
__global__ void gated_rmsnorm_backward_kernel(bf16* __restrict__ d_o, bf16* __restrict__ d_gate,
                                              bf16* __restrict__ d_og, const bf16* __restrict__ o,
                                              const bf16* __restrict__ gate, const bf16* __restrict__ w,
                                              const float* __restrict__ rstd, int64_t rows, int dv) {
  const int lane = threadIdx.x % kWarp;
  const int64_t n = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  if (n >= rows) return;
  const float r = rstd[n];
  float m = 0.f;
  for (int j = lane; j < dv; j += kWarp) {
    const int64_t i = n * dv + j;
    m += to_f32(d_og[i]) * to_f32(w[j]) * silu_f32(to_f32(gate[i])) * to_f32(o[i]) * r;
  }
  m = warp_sum(m) / float(dv);
  for (int j = lane; j < dv; j += kWarp) {
    const int64_t i = n * dv + j;
    const float dog = to_f32(d_og[i]), gt = to_f32(gate[i]), wj = to_f32(w[j]), nn = to_f32(o[i]) * r;
    const float z = silu_f32(gt);
    d_gate[i] = from_f32<bf16>(dog * nn * wj * silu_grad_f32(gt));
    d_o[i] = from_f32<bf16>(r * (dog * wj * z - nn * m));
    d_og[i] = from_f32<bf16>(dog * z);
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

  chunk_forward<bf16, float>(ctx, c, a.o, a.chunk_states, a.q, a.k, a.v, a.beta, a.g, B, Tn);

  linear_forward<bf16, bf16>(ctx, a.gate, x, p.g_proj, BT, D, DV);
  gated_rmsnorm_forward_kernel<<<row_blocks(BT * Hv), kRowsPerBlock * kWarp, 0, ctx.stream>>>(
      a.o_gated, a.o_rstd, a.o, a.gate, p.o_norm, BT * Hv, int(dv), float(c.norm_eps));
  CUDA_CHECK_LAUNCH("gated_rmsnorm_forward_kernel", shapes);
  linear_forward<bf16, bf16>(ctx, y, a.o_gated, p.o_proj, BT, DV, D);
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
  gated_rmsnorm_backward_kernel<<<row_blocks(BT * Hv), kRowsPerBlock * kWarp, 0, ctx.stream>>>(
      d_o, d_gate, d_og, a.o, a.gate, p.o_norm, a.o_rstd, BT * Hv, int(dv));
  CUDA_CHECK_LAUNCH("gated_rmsnorm_backward_kernel", shapes);
  rmsnorm_backward<bf16>(ctx, nullptr, grad.o_norm, d_og, a.o, p.o_norm, a.o_rstd, BT * Hv, dv);
  linear_backward<bf16, bf16>(ctx, dx, grad.g_proj, d_gate, x, p.g_proj, BT, D, DV);

  chunk_backward<bf16, float>(ctx, c, d_q, d_k, d_v, d_beta, d_g, d_o, a.q, a.k, a.v, a.beta, a.g, a.chunk_states, B,
                              Tn);

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
  template void gdn_chunk_forward<T>(Context&, const GdnConfig&, T*, T*, const T*, const T*, const T*, const T*,    \
                                     const T*, int64_t, int64_t);                                                 \
  template void gdn_chunk_backward<T>(Context&, const GdnConfig&, T*, T*, T*, T*, T*, const T*, const T*, const T*, \
                                      const T*, const T*, const T*, const T*, int64_t, int64_t);
INSTANTIATE(float)
INSTANTIATE(bf16)

}  // namespace hysim::cuda
