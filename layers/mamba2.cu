// Mamba2 chunked SSD core forward on the GPU, the math of mamba2_chunk_forward in
// layers/mamba2.cpp. Per (batch, head), chunks of L <= chunk_size tokens in order, with
// S [P, N] the state entering the chunk and a_t = dt_t A_h:
//   acum_t = sum_{r <= t} a_r,  decay(t, s) = exp(acum_t - acum_s) (s <= t),
//   dend_s = exp(acum_{L-1} - acum_s)
//   Y = ((C B^T) o decay) diag(dt) X + diag(exp(acum)) C S^T           (no D term)
//   S' = exp(acum_{L-1}) S + X^T diag(dend o dt) B
// and the state entering each chunk saved to chunk_states (what the backward reads).
// One block per (batch, head), state and chunk operands in shared memory in fp32 (storage
// T fp32 or bf16), products by block_gemm (fp32 FMAs on 4 x 4 register tiles), as the GDN
// forward; no tensor cores yet.
#include <cmath>
#include <stdexcept>
#include <string>

#include "core/cuda/device_util.cuh"
#include "core/cuda/layers.h"

namespace hysim::cuda {

namespace {

constexpr int kThreads = 256;

struct SsdDims {
  int Tn, H, P, N, G, DI, CD, Q, NC;
};

// Shared memory (floats): S [P, N], X [Q, P], Bm [Q, N], Cm [Q, N], M [Q, Q], acum, dt,
// w [Q]. Rows of S, Bm, Cm padded to N + 1 (lanes walking down a column of N-wide rows).
size_t ssd_fwd_smem(const SsdDims& d) {
  const size_t ln = size_t(d.N) + 1;
  return sizeof(float) * (size_t(d.P) * ln + size_t(d.Q) * d.P + 2 * size_t(d.Q) * ln + size_t(d.Q) * d.Q +
                          3 * size_t(d.Q));
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    mamba2_chunk_forward_kernel(T* __restrict__ y, T* __restrict__ chunk_states, const T* __restrict__ xbc,
                                const T* __restrict__ dt, const T* __restrict__ A, SsdDims d) {
  extern __shared__ float sm[];
  const int P = d.P, N = d.N, Q = d.Q, LN = N + 1;
  float* S = sm;
  float* X = S + P * LN;
  float* Bm = X + Q * P;
  float* Cm = Bm + Q * LN;
  float* M = Cm + Q * LN;
  float* acum = M + Q * Q;
  float* dts = acum + Q;
  float* w = dts + Q;

  const int h = blockIdx.x, b = blockIdx.y, tid = threadIdx.x;
  const int g = h / (d.H / d.G);
  const int64_t x_off = int64_t(h) * P, b_off = d.DI + int64_t(g) * N, c_off = d.DI + int64_t(d.G + g) * N;
  const float Ah = to_f32(A[h]);
  for (int i = tid; i < P * LN; i += kThreads) S[i] = 0.f;

  for (int kc = 0; kc < d.NC; ++kc) {
    const int t0 = kc * Q, L = min(Q, d.Tn - t0);
    const int64_t bt0 = int64_t(b) * d.Tn + t0;
    __syncthreads();  // previous chunk's state update done
    T* cs = chunk_states + ((int64_t(b) * d.H + h) * d.NC + kc) * P * N;
    for (int i = tid; i < P * N; i += kThreads) cs[i] = from_f32<T>(S[(i / N) * LN + i % N]);
    for (int i = tid; i < L * P; i += kThreads) X[i] = to_f32(xbc[(bt0 + i / P) * d.CD + x_off + i % P]);
    for (int i = tid; i < L * N; i += kThreads) {
      const int r = i / N, c = i % N;
      const T* row = xbc + (bt0 + r) * d.CD;
      Bm[r * LN + c] = to_f32(row[b_off + c]);
      Cm[r * LN + c] = to_f32(row[c_off + c]);
    }
    if (tid == 0) {  // cumulative log decay, in token order (as the CPU)
      float run = 0.f;
      for (int t = 0; t < L; ++t) {
        dts[t] = to_f32(dt[(bt0 + t) * d.H + h]);
        acum[t] = (run += dts[t] * Ah);
      }
      for (int t = 0; t < L; ++t) w[t] = expf(acum[L - 1] - acum[t]) * dts[t];  // dend o dt
    }
    __syncthreads();
    // M = (C B^T o decay) diag(dt), zero above the diagonal.
    block_gemm<kThreads>(
        L, L, N, [&](int t, int n) { return Cm[t * LN + n]; }, [&](int s, int n) { return Bm[s * LN + n]; },
        [&](int t, int s, float cb) { M[t * Q + s] = s <= t ? cb * expf(acum[t] - acum[s]) * dts[s] : 0.f; });
    __syncthreads();
    // Y = M X + diag(exp(acum)) C S^T: one product over [M | diag(exp(acum)) C] and [X; S^T].
    block_gemm<kThreads>(
        L, P, L + N,
        [&](int t, int k) { return k < L ? M[t * Q + k] : expf(acum[t]) * Cm[t * LN + (k - L)]; },
        [&](int p, int k) { return k < L ? X[k * P + p] : S[p * LN + (k - L)]; },
        [&](int t, int p, float acc) { y[(bt0 + t) * d.DI + x_off + p] = from_f32<T>(acc); });
    __syncthreads();  // S is read above; now update it
    const float e_end = expf(acum[L - 1]);
    block_gemm<kThreads>(
        P, N, L, [&](int p, int t) { return X[t * P + p] * w[t]; }, [&](int n, int t) { return Bm[t * LN + n]; },
        [&](int p, int n, float acc) { S[p * LN + n] = e_end * S[p * LN + n] + acc; });
  }
}

}  // namespace

template <class T>
void mamba2_chunk_forward(Context& ctx, const Mamba2Config& c, T* y, T* chunk_states, const T* xbc, const T* dt,
                          const T* A, int64_t B, int64_t Tn) {
  c.validate();
  if (c.chunk_size <= 0) throw std::invalid_argument("mamba2_chunk_forward (CUDA): chunk_size must be > 0");
  if (B <= 0 || Tn <= 0) return;
  const SsdDims d{int(Tn),        int(c.n_heads()),   int(c.headdim),      int(c.d_state),      int(c.n_groups),
                  int(c.d_inner()), int(c.conv_dim()), int(c.chunk_size), int(c.n_chunks(Tn))};
  const std::string shapes = shape_str("mamba2_chunk_forward B, Tn, H, P, N, G, chunk", B, Tn, d.H, d.P, d.N, d.G,
                                       d.Q);
  const size_t smem = ssd_fwd_smem(d);
  int max_smem = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, ctx.device), shapes);
  if (smem > size_t(max_smem))
    throw std::invalid_argument(shapes + ": state and chunk need " + std::to_string(smem) +
                                " bytes of shared memory, more than the device's " + std::to_string(max_smem));
  CUDA_CHECK(
      cudaFuncSetAttribute(mamba2_chunk_forward_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)),
      shapes);
  mamba2_chunk_forward_kernel<T><<<dim3(unsigned(d.H), unsigned(B)), kThreads, smem, ctx.stream>>>(y, chunk_states,
                                                                                                    xbc, dt, A, d);
  CUDA_CHECK_LAUNCH("mamba2_chunk_forward_kernel", shapes);
}

#define INSTANTIATE(T)                                                                                            \
  template void mamba2_chunk_forward<T>(Context&, const Mamba2Config&, T*, T*, const T*, const T*, const T*, int64_t, \
                                        int64_t);
INSTANTIATE(float)
INSTANTIATE(bf16)

}  // namespace hysim::cuda
