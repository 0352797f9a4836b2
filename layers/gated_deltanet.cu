// Gated DeltaNet chunked core forward on the GPU (WY/UT form), the math of
// gdn_chunk_forward in layers/gated_deltanet.cpp. Per (batch, value head), chunks of
// L <= chunk_size tokens in order, with S [dv, dk] the state entering the chunk:
//   gam_i = sum_{r <= i} g_r,  Gam = exp(gam),  decay(i, j) = exp(gam_i - gam_j)  (j <= i)
//   A = strictly_lower(diag(beta) (K K^T o decay)),  M = I + A
//   U = M^-1 diag(beta) V,  W = M^-1 diag(beta Gam) K,  Delta = U - W S^T
//   O = scale (diag(Gam) Q S^T + (Q K^T o decay) Delta)        (scale = dk^-0.5)
//   S' = Gam_{L-1} S + Delta^T diag(decay(L-1, .)) K
// and the state entering each chunk saved to chunk_states (what the backward reads).
//
// This first version is one block per (batch, value head) with the state and the chunk's
// operands in shared memory in fp32 (storage T is fp32 or bf16): fp32 FMAs on 4 x 4
// register tiles (block_gemm), no tensor cores, the intra-chunk solve a 64-step forward
// substitution. Correctness first;
// the tensor-core version (and the backward) are the next steps of issue 6.
#include <cmath>
#include <stdexcept>
#include <string>

#include "core/cuda/device_util.cuh"
#include "core/cuda/layers.h"

namespace hysim::cuda {

namespace {

constexpr int kThreads = 256;

struct GdnDims {
  int Tn, H, Hv, dk, dv, C, NC;
};

// Shared memory (floats): S [dv, dk], K [C, dk], QW [C, dk] (W, then Q), UD [C, dv] (U,
// then Delta), AP [C, C] (A, then the decayed Q K^T), gam, beta, dend [C]. Rows of S, K,
// QW are padded to dk + 1 floats: loops whose lanes walk down a column (S[e, :] for
// consecutive e, K[j, :] for consecutive j) would otherwise hit one bank when dk is a
// multiple of 32 (Olmo Hybrid's dk = 96).
size_t gdn_fwd_smem(const GdnDims& d) {
  const size_t lk = size_t(d.dk) + 1;
  return sizeof(float) * (size_t(d.dv) * lk + 2 * size_t(d.C) * lk + size_t(d.C) * d.dv + size_t(d.C) * d.C +
                          3 * size_t(d.C));
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    gdn_chunk_forward_kernel(T* __restrict__ o, T* __restrict__ chunk_states, const T* __restrict__ q,
                             const T* __restrict__ k, const T* __restrict__ v, const T* __restrict__ beta,
                             const T* __restrict__ g, GdnDims d, float scale) {
  extern __shared__ float sm[];
  const int dk = d.dk, dv = d.dv, C = d.C, LK = dk + 1;
  float* S = sm;
  float* K = S + dv * LK;
  float* QW = K + C * LK;
  float* UD = QW + C * LK;
  float* AP = UD + C * dv;
  float* gam = AP + C * C;
  float* bet = gam + C;
  float* dend = bet + C;

  const int hv = blockIdx.x, b = blockIdx.y, tid = threadIdx.x;
  const int64_t QK = int64_t(d.H) * dk, DV = int64_t(d.Hv) * dv;
  const int64_t qk_off = int64_t(hv / (d.Hv / d.H)) * dk, v_off = int64_t(hv) * dv;
  for (int i = tid; i < dv * LK; i += kThreads) S[i] = 0.f;

  for (int kc = 0; kc < d.NC; ++kc) {
    const int t0 = kc * C, L = min(C, d.Tn - t0);
    const int64_t bt0 = int64_t(b) * d.Tn + t0;
    __syncthreads();  // previous chunk's state update done
    T* cs = chunk_states + ((int64_t(b) * d.Hv + hv) * d.NC + kc) * dv * dk;
    for (int i = tid; i < dv * dk; i += kThreads) cs[i] = from_f32<T>(S[(i / dk) * LK + i % dk]);
    for (int i = tid; i < L * dk; i += kThreads) {
      const int r = i / dk, c = i % dk;
      K[r * LK + c] = to_f32(k[(bt0 + r) * QK + qk_off + c]);
    }
    for (int i = tid; i < L * dv; i += kThreads) {
      const int r = i / dv, c = i % dv;
      UD[i] = to_f32(v[(bt0 + r) * DV + v_off + c]);
    }
    if (tid == 0) {  // cumulative log decay, in token order (as the CPU)
      float run = 0.f;
      for (int i = 0; i < L; ++i) {
        run += to_f32(g[(bt0 + i) * d.Hv + hv]);
        gam[i] = run;
        bet[i] = to_f32(beta[(bt0 + i) * d.Hv + hv]);
      }
      for (int i = 0; i < L; ++i) dend[i] = expf(gam[L - 1] - gam[i]);
    }
    __syncthreads();
    // A (strictly lower), U = diag(beta) V, W = diag(beta Gam) K.
    block_gemm<kThreads>(
        L, L, dk, [&](int r, int e) { return K[r * LK + e]; }, [&](int c, int e) { return K[c * LK + e]; },
        [&](int r, int c, float kk) { AP[r * C + c] = c < r ? kk * bet[r] * expf(gam[r] - gam[c]) : 0.f; });
    for (int i = tid; i < L * dv; i += kThreads) UD[i] *= bet[i / dv];
    for (int i = tid; i < L * dk; i += kThreads) {
      const int r = i / dk, c = i % dk;
      QW[r * LK + c] = K[r * LK + c] * bet[r] * expf(gam[r]);
    }
    __syncthreads();
    // Forward substitution with the unit lower M: X_r = RHS_r - sum_{c < r} A_rc X_c, columns
    // of U and W in parallel.
    for (int r = 1; r < L; ++r) {
      for (int col = tid; col < dv + dk; col += kThreads) {
        float* X = col < dv ? UD + col : QW + (col - dv);
        const int ld = col < dv ? dv : LK;
        float acc = 0.f;
        for (int c = 0; c < r; ++c) acc += AP[r * C + c] * X[c * ld];
        X[r * ld] -= acc;
      }
      __syncthreads();
    }
    // Delta = U - W S^T.
    block_gemm<kThreads>(
        L, dv, dk, [&](int r, int c) { return QW[r * LK + c]; }, [&](int e, int c) { return S[e * LK + c]; },
        [&](int r, int e, float ws) { UD[r * dv + e] -= ws; });
    __syncthreads();
    // Q into W's place; P = Q K^T o decay (lower incl. diagonal) into A's place.
    for (int i = tid; i < L * dk; i += kThreads) {
      const int r = i / dk, c = i % dk;
      QW[r * LK + c] = to_f32(q[(bt0 + r) * QK + qk_off + c]);
    }
    __syncthreads();
    block_gemm<kThreads>(
        L, L, dk, [&](int r, int e) { return QW[r * LK + e]; }, [&](int c, int e) { return K[c * LK + e]; },
        [&](int r, int c, float qk) { AP[r * C + c] = c <= r ? qk * expf(gam[r] - gam[c]) : 0.f; });
    __syncthreads();  // the product above still reads Q
    // Gam_r Q_r into Q's place, so that O is one product over [Q | P] and [S^T; Delta].
    for (int i = tid; i < L * dk; i += kThreads) QW[(i / dk) * LK + i % dk] *= expf(gam[i / dk]);
    __syncthreads();
    // O = scale (Gam_r Q_r . S_e + sum_{c <= r} P_rc Delta_ce)  (P is 0 above the diagonal).
    block_gemm<kThreads>(
        L, dv, dk + L,
        [&](int r, int c) { return c < dk ? QW[r * LK + c] : AP[r * C + (c - dk)]; },
        [&](int e, int c) { return c < dk ? S[e * LK + c] : UD[(c - dk) * dv + e]; },
        [&](int r, int e, float acc) { o[(bt0 + r) * DV + v_off + e] = from_f32<T>(scale * acc); });
    __syncthreads();  // S is read above; now update it
    // S' = Gam_{L-1} S + sum_r Delta_r^T decay(L-1, r) K_r.
    const float Gam_end = expf(gam[L - 1]);
    block_gemm<kThreads>(
        dv, dk, L, [&](int e, int r) { return UD[r * dv + e] * dend[r]; }, [&](int c, int r) { return K[r * LK + c]; },
        [&](int e, int c, float acc) { S[e * LK + c] = Gam_end * S[e * LK + c] + acc; });
  }
}

}  // namespace

template <class T>
void gdn_chunk_forward(Context& ctx, const GdnConfig& c, T* o, T* chunk_states, const T* q, const T* k, const T* v,
                       const T* beta, const T* g, int64_t B, int64_t Tn) {
  c.validate();
  if (c.chunk_size <= 0) throw std::invalid_argument("gdn_chunk_forward (CUDA): chunk_size must be > 0");
  if (B <= 0 || Tn <= 0) return;
  const GdnDims d{int(Tn), int(c.n_heads), int(c.n_v_heads), int(c.d_head_k), int(c.d_head_v), int(c.chunk_size),
                  int(c.n_chunks(Tn))};
  const std::string shapes = shape_str("gdn_chunk_forward B, Tn, H, Hv, dk, dv, chunk", B, Tn, c.n_heads,
                                       c.n_v_heads, c.d_head_k, c.d_head_v, c.chunk_size);
  const size_t smem = gdn_fwd_smem(d);
  int max_smem = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, ctx.device), shapes);
  if (smem > size_t(max_smem))
    throw std::invalid_argument(shapes + ": state and chunk need " + std::to_string(smem) +
                                " bytes of shared memory, more than the device's " + std::to_string(max_smem));
  CUDA_CHECK(cudaFuncSetAttribute(gdn_chunk_forward_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)),
             shapes);
  const float scale = float(1.0 / std::sqrt(double(c.d_head_k)));
  gdn_chunk_forward_kernel<T><<<dim3(unsigned(c.n_v_heads), unsigned(B)), kThreads, smem, ctx.stream>>>(
      o, chunk_states, q, k, v, beta, g, d, scale);
  CUDA_CHECK_LAUNCH("gdn_chunk_forward_kernel", shapes);
}

#define INSTANTIATE(T)                                                                                        \
  template void gdn_chunk_forward<T>(Context&, const GdnConfig&, T*, T*, const T*, const T*, const T*, const T*, \
                                     const T*, int64_t, int64_t);
INSTANTIATE(float)
INSTANTIATE(bf16)

}  // namespace hysim::cuda
