// Mamba2 on the GPU: the chunked SSD core forward and backward (the math of
// mamba2_chunk_forward / mamba2_chunk_backward in layers/mamba2.cpp) and the full layer
// around it (mamba2_forward / mamba2_backward). Per (batch, head), chunks of L <=
// chunk_size tokens, with S [P, N] the state entering the chunk and a_t = dt_t A_h:
//   acum_t = sum_{r <= t} a_r,  decay(t, s) = exp(acum_t - acum_s) (s <= t),
//   dend_s = exp(acum_{L-1} - acum_s)
//   Y = ((C B^T) o decay) diag(dt) X + diag(exp(acum)) C S^T           (no D term)
//   S' = exp(acum_{L-1}) S + X^T diag(dend o dt) B
// The forward walks the chunks in order and saves the state entering each chunk to
// chunk_states; the backward walks them in reverse with dS = dL/dS' and reads them back.
// One block per (batch, head), state and chunk operands in shared memory in fp32 (storage
// T fp32 or bf16), products by block_product as the GDN kernels (tensor cores in tf32 for
// bf16 storage, fp32 FMAs for fp32).
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

struct SsdDims {
  int Tn, H, P, N, G, DI, CD, Q, NC;
};

// Shared memory (floats): S [P, N], X [Q, P], Bm [Q, N], Cm [Q, N], M [Q, Q], acum, dt,
// w [Q]. Row strides mma_stride(N), mma_stride(P), mma_stride(Q): conflict-free (or 2-way)
// fragment loads for the tensor-core products.
size_t ssd_fwd_smem(const SsdDims& d) {
  const size_t ln = mma_stride(d.N), lp = mma_stride(d.P), lq = mma_stride(d.Q);
  return sizeof(float) * (size_t(d.P) * ln + size_t(d.Q) * lp + 2 * size_t(d.Q) * ln + size_t(d.Q) * lq +
                          3 * size_t(d.Q));
}

// TD: the storage of dt and A (T for the public core, fp32 in the layer). Dskip [H] (or
// null): y += D_h x is added before the one rounding of y (the layer's D term).
template <class T, class TD>
__global__ void __launch_bounds__(kThreads)
    mamba2_chunk_forward_kernel(T* __restrict__ y, T* __restrict__ chunk_states, const T* __restrict__ xbc,
                                const TD* __restrict__ dt, const TD* __restrict__ A, const T* __restrict__ Dskip,
                                SsdDims d) {
  extern __shared__ float sm[];
  const int P = d.P, N = d.N, Q = d.Q, LN = mma_stride(N), LP = mma_stride(P), LQ = mma_stride(Q);
  float* S = sm;
  float* X = S + P * LN;
  float* Bm = X + Q * LP;
  float* Cm = Bm + Q * LN;
  float* M = Cm + Q * LN;
  float* acum = M + Q * LQ;
  float* dts = acum + Q;
  float* w = dts + Q;

  const int h = blockIdx.x, b = blockIdx.y, tid = threadIdx.x;
  const int g = h / (d.H / d.G);
  const int64_t x_off = int64_t(h) * P, b_off = d.DI + int64_t(g) * N, c_off = d.DI + int64_t(d.G + g) * N;
  const float Ah = to_f32(A[h]), Dh = Dskip ? to_f32(Dskip[h]) : 0.f;
  for (int i = tid; i < P * LN; i += kThreads) S[i] = 0.f;

  for (int kc = 0; kc < d.NC; ++kc) {
    const int t0 = kc * Q, L = min(Q, d.Tn - t0);
    const int64_t bt0 = int64_t(b) * d.Tn + t0;
    __syncthreads();  // previous chunk's state update done
    T* cs = chunk_states + ((int64_t(b) * d.H + h) * d.NC + kc) * P * N;
    for (int i = tid; i < P * N; i += kThreads) cs[i] = from_f32<T>(S[(i / N) * LN + i % N]);
    for (int i = tid; i < L * P; i += kThreads) {
      const int t = i / P, p = i % P;
      X[t * LP + p] = to_f32(xbc[(bt0 + t) * d.CD + x_off + p]);
    }
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
    block_product<T, kThreads>(
        L, L, N, [&](int t, int n) { return Cm[t * LN + n]; }, [&](int s, int n) { return Bm[s * LN + n]; },
        [&](int t, int s, float cb) { M[t * LQ + s] = s <= t ? cb * expf(acum[t] - acum[s]) * dts[s] : 0.f; });
    __syncthreads();
    // Y = M X + diag(exp(acum)) C S^T: one product over [M | diag(exp(acum)) C] and [X; S^T].
    block_product<T, kThreads>(
        L, P, L + N,
        [&](int t, int k) { return k < L ? M[t * LQ + k] : expf(acum[t]) * Cm[t * LN + (k - L)]; },
        [&](int p, int k) { return k < L ? X[k * LP + p] : S[p * LN + (k - L)]; },
        [&](int t, int p, float acc) { y[(bt0 + t) * d.DI + x_off + p] = from_f32<T>(acc + Dh * X[t * LP + p]); });
    __syncthreads();  // S is read above; now update it
    const float e_end = expf(acum[L - 1]);
    block_product<T, kThreads>(
        P, N, L, [&](int p, int t) { return X[t * LP + p] * w[t]; }, [&](int n, int t) { return Bm[t * LN + n]; },
        [&](int p, int n, float acc) { S[p * LN + n] = e_end * S[p * LN + n] + acc; });
  }
}

// Shared memory (floats) of the backward: S, dS [P, N]; X, dY [Q, P]; Bm, Cm [Q, N]; a work
// area for (X dS [Q, N] and C S^T [Q, P]) or (CBd and dM / dCB [Q, Q]); 10 vectors of Q;
// the block's warp partial sums. Row strides mma_stride(N), mma_stride(P), mma_stride(Q)
// (the tensor-core fragment loads).
constexpr int kBwdVecs = 10;
__host__ __device__ inline size_t ssd_bwd_work(const SsdDims& d) {
  const size_t ln = mma_stride(d.N), lp = mma_stride(d.P), lq = mma_stride(d.Q);
  const size_t qq = 2 * size_t(d.Q) * lq, qnp = size_t(d.Q) * (ln + lp);
  return qq > qnp ? qq : qnp;
}
size_t ssd_bwd_smem(const SsdDims& d) {
  const size_t ln = mma_stride(d.N), lp = mma_stride(d.P);
  return sizeof(float) * (2 * size_t(d.P) * ln + 2 * size_t(d.Q) * lp + 2 * size_t(d.Q) * ln + ssd_bwd_work(d) +
                          kBwdVecs * size_t(d.Q) + kThreads / kWarp);
}

// Exact gradient of the chunked forward, chunks in reverse (the CPU's derivation, comments
// of mamba2_chunk_backward in layers/mamba2.cpp), with w = dend o dt, e = exp(acum_{L-1}):
//   dX  = diag(w) B dS^T + M^T dY (+ D dY),     M = (C B^T o decay) diag(dt)
//   dB  = diag(w) X dS + dCB^T C,               dCB = (dY X^T o decay) diag(dt)
//   dC  = diag(exp(acum)) dY S + dCB B
//   dS <- e dS + (diag(exp(acum)) dY)^T C       (after the three above read the old dS)
//   ddt = dend o rowsum(X o B dS^T) + colsum(dM o CBd) + A revcumsum(dacum),  dA += <revcumsum(dacum), dt>
// and dacum (dL/dacum) gathered from the same row / column sums. dB, dC go to per-head fp32
// rows (dB_heads, dC_heads [slice B, Tn, H, N]: heads of a group are summed afterwards in a
// fixed order); dA per (batch, head) to dA_parts [B, H]. Batch b = b0 + blockIdx.y.
template <class T, class TD>
__global__ void __launch_bounds__(kThreads)
    mamba2_chunk_backward_kernel(T* __restrict__ dxbc, TD* __restrict__ ddt, float* __restrict__ dB_heads,
                                 float* __restrict__ dC_heads, float* __restrict__ dA_parts, const T* __restrict__ dy,
                                 const T* __restrict__ xbc, const TD* __restrict__ dt, const TD* __restrict__ A,
                                 const T* __restrict__ Dskip, const T* __restrict__ chunk_states, SsdDims d, int b0) {
  extern __shared__ float sm[];
  const int P = d.P, N = d.N, Q = d.Q, LN = mma_stride(N), LP = mma_stride(P), LQ = mma_stride(Q);
  float* S = sm;
  float* dS = S + P * LN;
  float* X = dS + P * LN;
  float* dY = X + Q * LP;
  float* Bm = dY + Q * LP;
  float* Cm = Bm + Q * LN;
  float* work = Cm + Q * LN;
  float* V = work;             // X dS      [Q, N] (row stride LN)
  float* Yo = work + Q * LN;   // C S^T     [Q, P] (row stride LP)
  float* CBd = work;           // (C B^T) o decay, zero above the diagonal [Q, Q] (stride LQ)
  float* dM = work + Q * LQ;   // dY X^T, then dCB in place                [Q, Q] (stride LQ)
  float* vec = work + ssd_bwd_work(d);
  float* acum = vec;
  float* eacum = vec + Q;
  float* dend = vec + 2 * Q;
  float* w = vec + 3 * Q;
  float* dts = vec + 4 * Q;
  float* ddt_c = vec + 5 * Q;  // ddt of the chunk before the revcumsum term
  float* gv = vec + 6 * Q;     // w o dw
  float* rv = vec + 7 * Q;     // rowsum(dY o Y_off)
  float* cs = vec + 8 * Q;     // colsum(dM o CBd)
  float* rs = vec + 9 * Q;     // rowsum(dM o M)
  float* red = vec + kBwdVecs * Q;

  const int h = blockIdx.x, bl = blockIdx.y, b = b0 + bl, tid = threadIdx.x, lane = tid % kWarp, warp = tid / kWarp;
  constexpr int kWarps = kThreads / kWarp;
  const int g = h / (d.H / d.G);
  const int64_t x_off = int64_t(h) * P, b_off = d.DI + int64_t(g) * N, c_off = d.DI + int64_t(d.G + g) * N;
  const float Ah = to_f32(A[h]), Dh = Dskip ? to_f32(Dskip[h]) : 0.f;
  for (int i = tid; i < P * LN; i += kThreads) dS[i] = 0.f;
  float dA_sum = 0.f;  // thread 0's

  for (int kc = d.NC - 1; kc >= 0; --kc) {
    const int t0 = kc * Q, L = min(Q, d.Tn - t0);
    const int64_t bt0 = int64_t(b) * d.Tn + t0;
    __syncthreads();  // the previous chunk's dS update and reads are done
    const T* cs_in = chunk_states + ((int64_t(b) * d.H + h) * d.NC + kc) * P * N;
    for (int i = tid; i < P * N; i += kThreads) S[(i / N) * LN + i % N] = to_f32(cs_in[i]);
    for (int i = tid; i < L * P; i += kThreads) {
      const int t = i / P, p = i % P;
      X[t * LP + p] = to_f32(xbc[(bt0 + t) * d.CD + x_off + p]);
      dY[t * LP + p] = to_f32(dy[(bt0 + t) * d.DI + x_off + p]);
    }
    for (int i = tid; i < L * N; i += kThreads) {
      const int t = i / N, n = i % N;
      const T* row = xbc + (bt0 + t) * d.CD;
      Bm[t * LN + n] = to_f32(row[b_off + n]);
      Cm[t * LN + n] = to_f32(row[c_off + n]);
    }
    if (tid == 0) {  // decays as the forward computes them
      float run = 0.f;
      for (int t = 0; t < L; ++t) {
        dts[t] = to_f32(dt[(bt0 + t) * d.H + h]);
        acum[t] = (run += dts[t] * Ah);
      }
      for (int t = 0; t < L; ++t) {
        eacum[t] = expf(acum[t]);
        dend[t] = expf(acum[L - 1] - acum[t]);
        w[t] = dend[t] * dts[t];
      }
    }
    __syncthreads();
    {  // <S, dS> (for dacum[L-1]): fixed per-thread strides, then warps in order
      float part = 0.f;
      for (int i = tid; i < P * N; i += kThreads) part += S[(i / N) * LN + i % N] * dS[(i / N) * LN + i % N];
      part = warp_sum(part);
      if (lane == 0) red[warp] = part;
    }
    block_product<T, kThreads>(
        L, N, P, [&](int t, int p) { return X[t * LP + p]; }, [&](int n, int p) { return dS[p * LN + n]; },
        [&](int t, int n, float acc) { V[t * LN + n] = acc; });
    block_product<T, kThreads>(
        L, P, N, [&](int t, int n) { return Cm[t * LN + n]; }, [&](int p, int n) { return S[p * LN + n]; },
        [&](int t, int p, float acc) { Yo[t * LP + p] = acc; });
    __syncthreads();
    for (int t = warp; t < L; t += kWarps) {  // one warp per token row
      float dw = 0.f, r = 0.f;
      for (int n = lane; n < N; n += kWarp) dw += Bm[t * LN + n] * V[t * LN + n];  // rowsum(X o B dS^T)
      for (int p = lane; p < P; p += kWarp) r += dY[t * LP + p] * Yo[t * LP + p];
      dw = warp_sum(dw);
      r = warp_sum(r);
      if (lane == 0) {
        ddt_c[t] = dend[t] * dw;
        gv[t] = w[t] * dw;
        rv[t] = eacum[t] * r;
      }
    }
    __syncthreads();  // V, Yo consumed: the work area now holds CBd and dM
    block_product<T, kThreads>(
        L, L, N, [&](int t, int n) { return Cm[t * LN + n]; }, [&](int s, int n) { return Bm[s * LN + n]; },
        [&](int t, int s, float cb) { CBd[t * LQ + s] = s <= t ? cb * expf(acum[t] - acum[s]) : 0.f; });
    block_product<T, kThreads>(
        L, L, P, [&](int t, int p) { return dY[t * LP + p]; }, [&](int s, int p) { return X[s * LP + p]; },
        [&](int t, int s, float acc) { dM[t * LQ + s] = acc; });
    __syncthreads();
    for (int i = tid; i < L; i += kThreads) {
      float col = 0.f, row = 0.f;
      for (int t = i; t < L; ++t) col += dM[t * LQ + i] * CBd[t * LQ + i];
      for (int s = 0; s <= i; ++s) row += dM[i * LQ + s] * CBd[i * LQ + s] * dts[s];
      cs[i] = col;  // colsum(dM o M) = dt o cs
      rs[i] = row;
    }
    __syncthreads();
    for (int i = tid; i < L * L; i += kThreads) {  // dM -> dCB = (dM o decay) diag(dt)
      const int t = i / L, s = i % L;
      dM[t * LQ + s] = s <= t ? dM[t * LQ + s] * expf(acum[t] - acum[s]) * dts[s] : 0.f;
    }
    __syncthreads();
    const float* dCB = dM;
    // dX = diag(w) B dS^T + M^T dY + D dY: one product over [diag(w) B | M^T] and [dS^T; dY].
    block_product<T, kThreads>(
        L, P, N + L,
        [&](int t, int k) { return k < N ? w[t] * Bm[t * LN + k] : CBd[(k - N) * LQ + t] * dts[t]; },
        [&](int p, int k) { return k < N ? dS[p * LN + k] : dY[(k - N) * LP + p]; },
        [&](int t, int p, float acc) {
          dxbc[(bt0 + t) * d.CD + x_off + p] = from_f32<T>(acc + Dh * dY[t * LP + p]);
        });
    const int64_t head_row0 = (int64_t(bl) * d.Tn + t0) * d.H + h;  // row of token t0 in dB_heads / dC_heads
    // dB = diag(w) X dS + dCB^T C
    block_product<T, kThreads>(
        L, N, P + L, [&](int t, int k) { return k < P ? w[t] * X[t * LP + k] : dCB[(k - P) * LQ + t]; },
        [&](int n, int k) { return k < P ? dS[k * LN + n] : Cm[(k - P) * LN + n]; },
        [&](int t, int n, float acc) { dB_heads[(head_row0 + int64_t(t) * d.H) * N + n] = acc; });
    // dC = diag(exp(acum)) dY S + dCB B
    block_product<T, kThreads>(
        L, N, P + L, [&](int t, int k) { return k < P ? eacum[t] * dY[t * LP + k] : dCB[t * LQ + (k - P)]; },
        [&](int n, int k) { return k < P ? S[k * LN + n] : Bm[(k - P) * LN + n]; },
        [&](int t, int n, float acc) { dC_heads[(head_row0 + int64_t(t) * d.H) * N + n] = acc; });
    __syncthreads();  // the old dS is read; update it to dL/dS of the previous chunk
    const float e_end = eacum[L - 1];
    block_product<T, kThreads>(
        P, N, L, [&](int p, int t) { return eacum[t] * dY[t * LP + p]; }, [&](int n, int t) { return Cm[t * LN + n]; },
        [&](int p, int n, float acc) { dS[p * LN + n] = e_end * dS[p * LN + n] + acc; });
    if (tid == 0) {  // dacum, then a = dt A, acum = cumsum(a): da = revcumsum(dacum)
      float s_ds = 0.f, g_sum = 0.f;
      for (int i = 0; i < kWarps; ++i) s_ds += red[i];
      for (int t = 0; t < L; ++t) g_sum += gv[t];
      float da = e_end * s_ds + g_sum;  // dacum[L-1]'s extra terms
      for (int t = L - 1; t >= 0; --t) {
        da += rv[t] + rs[t] - cs[t] * dts[t] - gv[t];
        ddt[(bt0 + t) * d.H + h] = from_f32<TD>(ddt_c[t] + cs[t] + da * Ah);
        dA_sum += da * dts[t];
      }
    }
  }
  if (tid == 0) dA_parts[int64_t(b) * d.H + h] = dA_sum;
}

// dxbc's B and C columns: sums over the heads of each group, in head order.
template <class T>
__global__ void mamba2_group_reduce_kernel(T* __restrict__ dxbc, const float* __restrict__ dB_heads,
                                           const float* __restrict__ dC_heads, SsdDims d, int b0, int64_t rows) {
  const int GN = d.G * d.N, hpg = d.H / d.G;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < rows * 2 * GN;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / (2 * GN);  // token row within the batch slice
    const int j = int(i % (2 * GN)), jj = j % GN, g = jj / d.N, n = jj % d.N;
    const float* src = (j < GN ? dB_heads : dC_heads) + (r * d.H + int64_t(g) * hpg) * d.N + n;
    float s = 0.f;
    for (int k = 0; k < hpg; ++k) s += src[int64_t(k) * d.N];
    dxbc[(int64_t(b0) * d.Tn + r) * d.CD + d.DI + j] = from_f32<T>(s);
  }
}

// dA[h] = sum over batches of dA_parts[b, h], in batch order (overwrites dA).
__global__ void mamba2_dA_reduce_kernel(float* __restrict__ dA, const float* __restrict__ dA_parts, int B, int H) {
  const int h = blockIdx.x * blockDim.x + threadIdx.x;
  if (h >= H) return;
  float s = 0.f;
  for (int b = 0; b < B; ++b) s += dA_parts[int64_t(b) * H + h];
  dA[h] = s;
}

SsdDims ssd_dims(const Mamba2Config& c, int64_t Tn) {
  return SsdDims{int(Tn),           int(c.n_heads()),  int(c.headdim),      int(c.d_state),      int(c.n_groups),
                 int(c.d_inner()), int(c.conv_dim()), int(c.chunk_size), int(c.n_chunks(Tn))};
}

// Checks the config and that the kernel's shared memory fits; returns the shapes string.
template <class K>
std::string ssd_prepare(Context& ctx, const Mamba2Config& c, const char* fn, K kernel, size_t smem, int64_t B,
                        int64_t Tn) {
  c.validate();
  if (c.chunk_size <= 0)
    throw std::invalid_argument(std::string(fn) + " (CUDA): only the chunked core (chunk_size > 0) runs on the GPU");
  const SsdDims d = ssd_dims(c, Tn);
  const std::string shapes = shape_str(std::string(fn) + " B, Tn, H, P, N, G, chunk", B, Tn, d.H, d.P, d.N, d.G, d.Q);
  int max_smem = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, ctx.device), shapes);
  if (smem > size_t(max_smem))
    throw std::invalid_argument(shapes + ": state and chunk need " + std::to_string(smem) +
                                " bytes of shared memory per block, more than the device's " +
                                std::to_string(max_smem));
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)), shapes);
  return shapes;
}

template <class T, class TD>
void ssd_forward(Context& ctx, const Mamba2Config& c, T* y, T* chunk_states, const T* xbc, const TD* dt, const TD* A,
                 const T* Dskip, int64_t B, int64_t Tn) {
  const SsdDims d = ssd_dims(c, Tn);
  const size_t smem = ssd_fwd_smem(d);
  const std::string shapes =
      ssd_prepare(ctx, c, "mamba2_chunk_forward", mamba2_chunk_forward_kernel<T, TD>, smem, B, Tn);
  if (B <= 0 || Tn <= 0) return;
  mamba2_chunk_forward_kernel<T, TD><<<dim3(unsigned(d.H), unsigned(B)), kThreads, smem, ctx.stream>>>(
      y, chunk_states, xbc, dt, A, Dskip, d);
  CUDA_CHECK_LAUNCH("mamba2_chunk_forward_kernel", shapes);
}

// Per-head dB, dC rows take 2 Tn H N floats of scratch per sequence: batches go in slices
// of as many sequences as the scratch holds (the results do not depend on the slicing).
template <class T, class TD>
void ssd_backward(Context& ctx, const Mamba2Config& c, T* dxbc, TD* ddt, float* dA, const T* dy, const T* xbc,
                  const TD* dt, const TD* A, const T* Dskip, const T* chunk_states, int64_t B, int64_t Tn) {
  const SsdDims d = ssd_dims(c, Tn);
  const size_t smem = ssd_bwd_smem(d);
  const std::string shapes =
      ssd_prepare(ctx, c, "mamba2_chunk_backward", mamba2_chunk_backward_kernel<T, TD>, smem, B, Tn);
  if (B <= 0 || Tn <= 0) {
    CUDA_CHECK(cudaMemsetAsync(dA, 0, sizeof(float) * size_t(d.H), ctx.stream), shapes);
    return;
  }
  ArenaScope scope(ctx.scratch);
  float* dA_parts = ctx.scratch.alloc<float>(B * d.H, "mamba2 backward dA per (batch, head)");
  const size_t per_seq = DeviceArena::round_up(sizeof(float) * size_t(Tn) * d.H * d.N);
  const size_t free_bytes = ctx.scratch.capacity() - ctx.scratch.used();
  const int64_t slice = std::clamp<int64_t>(int64_t(free_bytes / (2 * per_seq + 2 * DeviceArena::kAlign)), 1, B);
  float* dB_heads = ctx.scratch.alloc<float>(slice * Tn * d.H * d.N, "mamba2 backward dB per head");
  float* dC_heads = ctx.scratch.alloc<float>(slice * Tn * d.H * d.N, "mamba2 backward dC per head");
  for (int64_t b0 = 0; b0 < B; b0 += slice) {
    const int64_t nb = std::min(slice, B - b0);
    mamba2_chunk_backward_kernel<T, TD><<<dim3(unsigned(d.H), unsigned(nb)), kThreads, smem, ctx.stream>>>(
        dxbc, ddt, dB_heads, dC_heads, dA_parts, dy, xbc, dt, A, Dskip, chunk_states, d, int(b0));
    CUDA_CHECK_LAUNCH("mamba2_chunk_backward_kernel", shapes);
    mamba2_group_reduce_kernel<T><<<grid_stride_blocks(nb * Tn * 2 * d.G * d.N, kThreads), kThreads, 0, ctx.stream>>>(
        dxbc, dB_heads, dC_heads, d, int(b0), nb * Tn);
    CUDA_CHECK_LAUNCH("mamba2_group_reduce_kernel", shapes);
  }
  mamba2_dA_reduce_kernel<<<unsigned(ceil_div(d.H, kThreads)), kThreads, 0, ctx.stream>>>(dA, dA_parts, int(B), d.H);
  CUDA_CHECK_LAUNCH("mamba2_dA_reduce_kernel", shapes);
}

// ---- the full layer's elementwise and reduction kernels -----------------------------

__device__ __forceinline__ float softplus_f32(float x) { return x > 20.f ? x : log1pf(expf(x)); }

// dt = softplus(dt_raw + dt_bias), fp32.
__global__ void mamba2_dt_kernel(float* __restrict__ dt, const float* __restrict__ dt_raw,
                                 const bf16* __restrict__ dt_bias, int64_t BT, int H) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < BT * H; i += int64_t(gridDim.x) * blockDim.x)
    dt[i] = softplus_f32(dt_raw[i] + to_f32(dt_bias[i % H]));
}

// A = -exp(A_log), fp32.
__global__ void mamba2_A_kernel(float* __restrict__ A, const bf16* __restrict__ A_log, int H) {
  const int h = blockIdx.x * blockDim.x + threadIdx.x;
  if (h < H) A[h] = -expf(to_f32(A_log[h]));
}

// One warp per (token, group): y_gated = y silu(z); r = 1 / sqrt(mean(y_gated^2) + eps);
// y_norm = y_gated r norm_w.
__global__ void mamba2_gate_norm_forward_kernel(bf16* __restrict__ y_gated, bf16* __restrict__ y_norm,
                                                float* __restrict__ rstd, const bf16* __restrict__ y,
                                                const bf16* __restrict__ z, const bf16* __restrict__ norm_w,
                                                int64_t rows, int G, int GS, float eps) {
  const int lane = threadIdx.x % kWarp;
  const int64_t r = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;  // bt G + g
  if (r >= rows) return;
  const int64_t o = r * GS;  // rows of y, z: [BT, G GS]
  const int g = int(r % G);
  float ss = 0.f;
  for (int j = lane; j < GS; j += kWarp) {
    const float v = to_f32(y[o + j]) * silu_f32(to_f32(z[o + j]));
    ss += v * v;
  }
  const float rs = 1.f / sqrtf(warp_sum(ss) / float(GS) + eps);
  if (lane == 0) rstd[r] = rs;
  for (int j = lane; j < GS; j += kWarp) {
    const float v = to_f32(y[o + j]) * silu_f32(to_f32(z[o + j]));
    y_gated[o + j] = from_f32<bf16>(v);
    y_norm[o + j] = from_f32<bf16>(v * rs * to_f32(norm_w[g * GS + j]));
  }
}

// One warp per (token, group), v = y_gated, r = rstd, gw = d_ynorm norm_w:
//   dv = r (gw - v r mean(gw v r));  d_y = dv silu(z);  dz = dv y silu'(z)
// dz goes to its columns of d_zxbcdt (row stride DIP).
__global__ void mamba2_gate_norm_backward_kernel(bf16* __restrict__ d_y, bf16* __restrict__ d_zxbcdt,
                                                 const bf16* __restrict__ d_ynorm, const bf16* __restrict__ y_gated,
                                                 const bf16* __restrict__ y, const bf16* __restrict__ z,
                                                 const float* __restrict__ rstd, const bf16* __restrict__ norm_w,
                                                 int64_t rows, int G, int GS, int64_t DIP) {
  const int lane = threadIdx.x % kWarp;
  const int64_t r = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  if (r >= rows) return;
  const int64_t o = r * GS, bt = r / G;
  const int g = int(r % G);
  const float rs = rstd[r];
  float m = 0.f;
  for (int j = lane; j < GS; j += kWarp)
    m += to_f32(d_ynorm[o + j]) * to_f32(norm_w[g * GS + j]) * to_f32(y_gated[o + j]) * rs;
  m = warp_sum(m) / float(GS);
  for (int j = lane; j < GS; j += kWarp) {
    const float dv = rs * (to_f32(d_ynorm[o + j]) * to_f32(norm_w[g * GS + j]) - to_f32(y_gated[o + j]) * rs * m);
    const float zf = to_f32(z[o + j]);
    d_y[o + j] = from_f32<bf16>(dv * silu_f32(zf));
    d_zxbcdt[bt * DIP + int64_t(g) * GS + j] = from_f32<bf16>(dv * to_f32(y[o + j]) * silu_grad_f32(zf));
  }
}

// d(dt_raw) = ddt sigmoid(dt_raw + dt_bias) (softplus' = sigmoid) into its columns of
// d_zxbcdt; the conv input's gradient [BT, CD] into the xBC columns.
__global__ void mamba2_in_grad_kernel(bf16* __restrict__ d_zxbcdt, const bf16* __restrict__ d_xbc_in,
                                      const float* __restrict__ ddt, const float* __restrict__ dt_raw,
                                      const bf16* __restrict__ dt_bias, int64_t BT, int DI, int CD, int H) {
  const int W = CD + H;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < BT * W; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t bt = i / W;
    const int j = int(i % W);
    float v;
    if (j < CD) {
      v = to_f32(d_xbc_in[bt * CD + j]);
    } else {
      const int h = j - CD;
      v = ddt[bt * H + h] * sigmoid_f32(dt_raw[bt * H + h] + to_f32(dt_bias[h]));
    }
    d_zxbcdt[bt * (DI + W) + DI + j] = from_f32<bf16>(v);
  }
}

// grad.A_log += dA A (A = -exp(A_log): dA/dA_log = A).
__global__ void mamba2_A_log_grad_kernel(float* __restrict__ gA_log, const float* __restrict__ dA,
                                         const bf16* __restrict__ A_log, int H) {
  const int h = blockIdx.x * blockDim.x + threadIdx.x;
  if (h < H) gA_log[h] += dA[h] * -expf(to_f32(A_log[h]));
}

// Parameter gradients that are column sums over the B T token rows, deterministic:
// partial[chunk, col] = sum over a fixed chunk of rows of f(row, col), then
// dst[o] += sum over chunks (in order) of the `group` consecutive columns o group .. .
constexpr int kColRowChunk = 128;

struct NormWGradTerm {  // d_ynorm y_gated rstd  (grad.norm_w)
  const bf16 *d_ynorm, *y_gated;
  const float* rstd;
  int DI, GS, G;
  __device__ float operator()(int64_t bt, int i) const {
    return to_f32(d_ynorm[bt * DI + i]) * to_f32(y_gated[bt * DI + i]) * rstd[bt * G + i / GS];
  }
};
struct DGradTerm {  // d_y x  (grad.D, summed over each head's P columns)
  const bf16 *d_y, *xbc;
  int DI, CD;
  __device__ float operator()(int64_t bt, int i) const { return to_f32(d_y[bt * DI + i]) * to_f32(xbc[bt * CD + i]); }
};
struct DtBiasGradTerm {  // ddt sigmoid(dt_raw + dt_bias)  (grad.dt_bias)
  const float *ddt, *dt_raw;
  const bf16* dt_bias;
  int H;
  __device__ float operator()(int64_t bt, int h) const {
    return ddt[bt * H + h] * sigmoid_f32(dt_raw[bt * H + h] + to_f32(dt_bias[h]));
  }
};

template <class F>
__global__ void column_sum_partial_kernel(float* __restrict__ partial, F f, int64_t rows, int cols) {
  const int c = blockIdx.x * kThreads + threadIdx.x;
  if (c >= cols) return;
  const int64_t r0 = int64_t(blockIdx.y) * kColRowChunk, r1 = min(rows, r0 + kColRowChunk);
  float s = 0.f;
  for (int64_t r = r0; r < r1; ++r) s += f(r, c);
  partial[int64_t(blockIdx.y) * cols + c] = s;
}

__global__ void column_sum_finish_kernel(float* __restrict__ dst, const float* __restrict__ partial,
                                         int64_t n_chunks, int cols, int group) {
  const int o = blockIdx.x * kThreads + threadIdx.x;
  if (o >= cols / group) return;
  float s = 0.f;
  for (int64_t k = 0; k < n_chunks; ++k)
    for (int j = 0; j < group; ++j) s += partial[k * cols + int64_t(o) * group + j];
  dst[o] += s;
}

template <class F>
void add_column_sums(Context& ctx, float* dst, F f, int64_t rows, int cols, int group, const std::string& what) {
  ArenaScope scope(ctx.scratch);
  const int64_t n_chunks = ceil_div(rows, kColRowChunk);
  float* partial = ctx.scratch.alloc<float>(n_chunks * cols, "mamba2 parameter-gradient partial sums");
  column_sum_partial_kernel<F><<<dim3(unsigned(ceil_div(cols, kThreads)), unsigned(n_chunks)), kThreads, 0,
                                 ctx.stream>>>(partial, f, rows, cols);
  CUDA_CHECK_LAUNCH("column_sum_partial_kernel", what);
  column_sum_finish_kernel<<<unsigned(ceil_div(cols / group, kThreads)), kThreads, 0, ctx.stream>>>(
      dst, partial, n_chunks, cols, group);
  CUDA_CHECK_LAUNCH("column_sum_finish_kernel", what);
}

constexpr int kRowWarpsPerBlock = 8;  // the gate / norm kernels: one warp per (token, group)

}  // namespace

template <class T>
void mamba2_chunk_forward(Context& ctx, const Mamba2Config& c, T* y, T* chunk_states, const T* xbc, const T* dt,
                          const T* A, int64_t B, int64_t Tn) {
  ssd_forward<T, T>(ctx, c, y, chunk_states, xbc, dt, A, nullptr, B, Tn);
}

template <class T>
void mamba2_chunk_backward(Context& ctx, const Mamba2Config& c, T* dxbc, T* ddt, float* dA, const T* dy, const T* xbc,
                           const T* dt, const T* A, const T* chunk_states, int64_t B, int64_t Tn) {
  ssd_backward<T, T>(ctx, c, dxbc, ddt, dA, dy, xbc, dt, A, nullptr, chunk_states, B, Tn);
}

// ---- the full layer -----------------------------------------------------------------
// in_proj's row blocks z | xBC | dt are contiguous in W_in, so three GEMMs write z, xbc_in
// (bf16) and dt_raw (fp32) directly. dt stays fp32 from the projection on: it enters the
// decays as exp(A sum dt) over a whole chunk, where bf16's 2^-9 relative error of each dt
// would shift the log-decay by up to 2^-9 |A sum dt| (several percent of the decay for
// strongly decaying heads). A and ddt are fp32 for the same reason; rstd is fp32 as in
// the RMSNorm kernels.

void mamba2_forward(Context& ctx, const Mamba2Config& c, const Mamba2Params<bf16>& p, const Mamba2ActsCuda& a, bf16* y,
                    const bf16* x, int64_t B, int64_t Tn) {
  c.validate();
  if (c.chunk_size <= 0)
    throw std::invalid_argument("mamba2_forward (CUDA): only the chunked core (chunk_size > 0) runs on the GPU");
  const int64_t BT = B * Tn, D = c.d_model, DI = c.d_inner(), CD = c.conv_dim(), H = c.n_heads(), G = c.n_groups;
  if (BT <= 0) return;
  const std::string shapes = shape_str("mamba2_forward B, Tn, d_model, d_inner, H", B, Tn, D, DI, H);
  ArenaScope scope(ctx.scratch);
  float* A = ctx.scratch.alloc<float>(H, "mamba2 A");
  linear_forward<bf16, bf16>(ctx, a.z, x, p.in_proj, BT, D, DI);
  linear_forward<bf16, bf16>(ctx, a.xbc_in, x, p.in_proj + DI * D, BT, D, CD);
  linear_forward<bf16, float>(ctx, a.dt_raw, x, p.in_proj + (DI + CD) * D, BT, D, H);
  mamba2_dt_kernel<<<grid_stride_blocks(BT * H, kThreads), kThreads, 0, ctx.stream>>>(a.dt, a.dt_raw, p.dt_bias, BT,
                                                                                      int(H));
  CUDA_CHECK_LAUNCH("mamba2_dt_kernel", shapes);
  mamba2_A_kernel<<<unsigned(ceil_div(H, kThreads)), kThreads, 0, ctx.stream>>>(A, p.A_log, int(H));
  CUDA_CHECK_LAUNCH("mamba2_A_kernel", shapes);
  short_conv_forward<bf16>(ctx, a.xbc, a.xbc_pre, a.xbc_in, p.conv1d_weight, p.conv1d_bias, B, Tn, CD, c.conv_size,
                           true);
  ssd_forward<bf16, float>(ctx, c, a.y, a.chunk_states, a.xbc, a.dt, A, p.D, B, Tn);
  const int64_t rows = BT * G;
  mamba2_gate_norm_forward_kernel<<<unsigned(ceil_div(rows, kRowWarpsPerBlock)), kRowWarpsPerBlock * kWarp, 0,
                                    ctx.stream>>>(a.y_gated, a.y_norm, a.rstd, a.y, a.z, p.norm_w, rows, int(G),
                                                  int(DI / G), float(c.norm_eps));
  CUDA_CHECK_LAUNCH("mamba2_gate_norm_forward_kernel", shapes);
  linear_forward<bf16, bf16>(ctx, y, a.y_norm, p.out_proj, BT, DI, D);
}

void mamba2_backward(Context& ctx, const Mamba2Config& c, const Mamba2Params<bf16>& p, const Mamba2Params<float>& grad,
                     const Mamba2ActsCuda& a, bf16* dx, const bf16* dy, const bf16* x, int64_t B, int64_t Tn) {
  c.validate();
  if (c.chunk_size <= 0)
    throw std::invalid_argument("mamba2_backward (CUDA): only the chunked core (chunk_size > 0) runs on the GPU");
  const int64_t BT = B * Tn, D = c.d_model, DI = c.d_inner(), CD = c.conv_dim(), DIP = c.d_in_proj();
  const int64_t H = c.n_heads(), P = c.headdim, G = c.n_groups, GS = DI / G;
  if (BT <= 0) return;
  const std::string shapes = shape_str("mamba2_backward B, Tn, d_model, d_inner, H", B, Tn, D, DI, H);
  ArenaScope scope(ctx.scratch);
  bf16* d_zxbcdt = ctx.scratch.alloc<bf16>(BT * DIP, "mamba2 d_zxbcdt");
  bf16* d_y = ctx.scratch.alloc<bf16>(BT * DI, "mamba2 d_y");
  bf16* d_xbc = ctx.scratch.alloc<bf16>(BT * CD, "mamba2 d_xbc");
  float* ddt = ctx.scratch.alloc<float>(BT * H, "mamba2 ddt");
  float* dA = ctx.scratch.alloc<float>(H, "mamba2 dA");
  float* A = ctx.scratch.alloc<float>(H, "mamba2 A");
  {  // out_proj, norm_w, the group RMSNorm and the gate (d_ynorm lives only here)
    ArenaScope inner(ctx.scratch);
    bf16* d_ynorm = ctx.scratch.alloc<bf16>(BT * DI, "mamba2 d_ynorm");
    linear_backward<bf16, bf16>(ctx, d_ynorm, grad.out_proj, dy, a.y_norm, p.out_proj, BT, DI, D);
    add_column_sums(ctx, grad.norm_w, NormWGradTerm{d_ynorm, a.y_gated, a.rstd, int(DI), int(GS), int(G)}, BT,
                    int(DI), 1, shapes + " norm_w");
    const int64_t rows = BT * G;
    mamba2_gate_norm_backward_kernel<<<unsigned(ceil_div(rows, kRowWarpsPerBlock)), kRowWarpsPerBlock * kWarp, 0,
                                       ctx.stream>>>(d_y, d_zxbcdt, d_ynorm, a.y_gated, a.y, a.z, a.rstd, p.norm_w,
                                                     rows, int(G), int(GS), DIP);
    CUDA_CHECK_LAUNCH("mamba2_gate_norm_backward_kernel", shapes);
  }
  add_column_sums(ctx, grad.D, DGradTerm{d_y, a.xbc, int(DI), int(CD)}, BT, int(DI), int(P), shapes + " D");
  // The core backward with the D path (dx += D dy) folded into its dX; A recomputed.
  mamba2_A_kernel<<<unsigned(ceil_div(H, kThreads)), kThreads, 0, ctx.stream>>>(A, p.A_log, int(H));
  CUDA_CHECK_LAUNCH("mamba2_A_kernel", shapes);
  ssd_backward<bf16, float>(ctx, c, d_xbc, ddt, dA, d_y, a.xbc, a.dt, A, p.D, a.chunk_states, B, Tn);
  add_column_sums(ctx, grad.dt_bias, DtBiasGradTerm{ddt, a.dt_raw, p.dt_bias, int(H)}, BT, int(H), 1,
                  shapes + " dt_bias");
  mamba2_A_log_grad_kernel<<<unsigned(ceil_div(H, kThreads)), kThreads, 0, ctx.stream>>>(grad.A_log, dA, p.A_log,
                                                                                         int(H));
  CUDA_CHECK_LAUNCH("mamba2_A_log_grad_kernel", shapes);
  {
    ArenaScope inner(ctx.scratch);
    bf16* d_xbc_in = ctx.scratch.alloc<bf16>(BT * CD, "mamba2 d_xbc_in");
    short_conv_backward<bf16>(ctx, d_xbc_in, grad.conv1d_weight, grad.conv1d_bias, d_xbc, a.xbc_in, a.xbc_pre,
                              p.conv1d_weight, B, Tn, CD, c.conv_size, true);
    mamba2_in_grad_kernel<<<grid_stride_blocks(BT * (CD + H), kThreads), kThreads, 0, ctx.stream>>>(
        d_zxbcdt, d_xbc_in, ddt, a.dt_raw, p.dt_bias, BT, int(DI), int(CD), int(H));
    CUDA_CHECK_LAUNCH("mamba2_in_grad_kernel", shapes);
  }
  linear_backward<bf16, bf16>(ctx, dx, grad.in_proj, d_zxbcdt, x, p.in_proj, BT, D, DIP);
}

#define INSTANTIATE(T)                                                                                              \
  template void mamba2_chunk_forward<T>(Context&, const Mamba2Config&, T*, T*, const T*, const T*, const T*, int64_t, \
                                        int64_t);                                                                   \
  template void mamba2_chunk_backward<T>(Context&, const Mamba2Config&, T*, T*, float*, const T*, const T*,         \
                                         const T*, const T*, const T*, int64_t, int64_t);
INSTANTIATE(float)
INSTANTIATE(bf16)

}  // namespace hysim::cuda
