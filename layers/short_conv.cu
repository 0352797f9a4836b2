// Causal depthwise short convolution on the GPU, the math of layers/short_conv.cpp:
//   pre[b,t,c] = bias[c] + sum_{j<K} w[c,j] x[b, t-(K-1)+j, c]   (x = 0 before t = 0)
//   out = silu(pre) if silu else pre
// Forward and dx: one thread per element (consecutive threads take consecutive channels:
// coalesced), taps summed in the CPU's order. dpre = dout silu'(pre) is recomputed where
// it is needed rather than stored. dw, dbias: deterministic two-pass column reduction
// (fixed row chunks, then the chunks in order; no atomics), as rmsnorm's dw.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "core/cuda/device_util.cuh"
#include "core/cuda/layers.h"

namespace hysim::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kRowChunk = 128;  // rows (b, t) per partial sum of dw (fixed: results do not depend on the device)
constexpr int kMaxTaps = 8;     // dw keeps one accumulator per tap in registers

template <class T>
__device__ __forceinline__ float dpre_at(const T* __restrict__ dout, const T* __restrict__ pre, int64_t i, bool silu) {
  const float d = to_f32(dout[i]);
  return silu ? d * silu_grad_f32(to_f32(pre[i])) : d;
}

template <class T>
__global__ void short_conv_forward_kernel(T* __restrict__ out, T* __restrict__ pre, const T* __restrict__ x,
                                          const T* __restrict__ w, const T* __restrict__ bias, int64_t N, int Tn,
                                          int64_t C, int K, bool silu) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < N * C; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i % C, n = i / C;
    const int t = int(n % Tn);
    float s = bias ? to_f32(bias[c]) : 0.f;
    for (int j = max(0, K - 1 - t); j < K; ++j) s += to_f32(w[c * K + j]) * to_f32(x[i + (j - (K - 1)) * C]);
    if (pre) pre[i] = from_f32<T>(s);
    out[i] = from_f32<T>(silu ? silu_f32(s) : s);
  }
}

// dx[t] = sum_j w[j] dpre[t + (K-1) - j]
template <class T>
__global__ void short_conv_dx_kernel(T* __restrict__ dx, const T* __restrict__ dout, const T* __restrict__ pre,
                                     const T* __restrict__ w, int64_t N, int Tn, int64_t C, int K, bool silu) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < N * C; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i % C, n = i / C;
    const int t = int(n % Tn);
    float s = 0.f;
    for (int j = 0; j < K; ++j)
      if (t + (K - 1) - j < Tn) s += to_f32(w[c * K + j]) * dpre_at(dout, pre, i + ((K - 1) - j) * C, silu);
    dx[i] = from_f32<T>(s);
  }
}

// partial[chunk, c, j] (j < K: dw taps, j = K: dbias) over the chunk's rows.
template <class T>
__global__ void short_conv_dw_partial_kernel(float* __restrict__ partial, const T* __restrict__ dout,
                                             const T* __restrict__ x, const T* __restrict__ pre, int64_t N, int Tn,
                                             int64_t C, int K, bool silu) {
  const int64_t c = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (c >= C) return;
  float acc[kMaxTaps + 1] = {};
  const int64_t n0 = int64_t(blockIdx.y) * kRowChunk, n1 = min(N, n0 + kRowChunk);
  for (int64_t n = n0; n < n1; ++n) {
    const int t = int(n % Tn);
    const float d = dpre_at(dout, pre, n * C + c, silu);
#pragma unroll
    for (int j = 0; j < kMaxTaps; ++j)
      if (j < K && t - (K - 1) + j >= 0) acc[j] += d * to_f32(x[(n - (K - 1) + j) * C + c]);
    acc[kMaxTaps] += d;
  }
  float* out = partial + (int64_t(blockIdx.y) * C + c) * (K + 1);
  for (int j = 0; j < K; ++j) out[j] = acc[j];
  out[K] = acc[kMaxTaps];
}

__global__ void short_conv_dw_finish_kernel(float* __restrict__ dw, float* __restrict__ dbias,
                                            const float* __restrict__ partial, int64_t n_chunks, int64_t C, int K) {
  const int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;  // c (K + 1) + j
  if (i >= C * (K + 1)) return;
  float s = 0.f;
  for (int64_t k = 0; k < n_chunks; ++k) s += partial[k * C * (K + 1) + i];
  const int64_t c = i / (K + 1);
  const int j = int(i % (K + 1));
  if (j < K) {
    if (dw) dw[c * K + j] += s;
  } else if (dbias) {
    dbias[c] += s;
  }
}

}  // namespace

template <class T>
void short_conv_forward(Context& ctx, T* out, T* pre, const T* x, const T* w, const T* bias, int64_t B, int64_t Tn,
                        int64_t C, int64_t K, bool silu) {
  if (B <= 0 || Tn <= 0 || C <= 0) return;
  if (K <= 0) throw std::invalid_argument(shape_str("short_conv_forward (CUDA): kernel size must be > 0, B, Tn, C, K",
                                                    B, Tn, C, K));
  const int64_t N = B * Tn;
  short_conv_forward_kernel<T><<<grid_stride_blocks(N * C, kThreads), kThreads, 0, ctx.stream>>>(
      out, pre, x, w, bias, N, int(Tn), C, int(K), silu);
  CUDA_CHECK_LAUNCH("short_conv_forward_kernel", shape_str("B, Tn, C, K", B, Tn, C, K));
}

template <class T>
void short_conv_backward(Context& ctx, T* dx, float* dw, float* dbias, const T* dout, const T* x, const T* pre,
                         const T* w, int64_t B, int64_t Tn, int64_t C, int64_t K, bool silu) {
  if (B <= 0 || Tn <= 0 || C <= 0) return;
  const std::string shapes = shape_str("short_conv_backward B, Tn, C, K", B, Tn, C, K);
  if (K <= 0 || K > kMaxTaps)
    throw std::invalid_argument(shapes + ": kernel size must be in [1, " + std::to_string(kMaxTaps) + "] on the GPU");
  if (silu && !pre) throw std::invalid_argument(shapes + ": pre (saved by the forward) is needed with silu");
  const int64_t N = B * Tn;
  short_conv_dx_kernel<T>
      <<<grid_stride_blocks(N * C, kThreads), kThreads, 0, ctx.stream>>>(dx, dout, pre, w, N, int(Tn), C, int(K), silu);
  CUDA_CHECK_LAUNCH("short_conv_dx_kernel", shapes);
  if (!dw && !dbias) return;
  ArenaScope scope(ctx.scratch);
  const int64_t n_chunks = ceil_div(N, kRowChunk);
  float* partial = ctx.scratch.alloc<float>(n_chunks * C * (K + 1), "short_conv dw partial sums");
  short_conv_dw_partial_kernel<T><<<dim3(unsigned(ceil_div(C, kThreads)), unsigned(n_chunks)), kThreads, 0,
                                    ctx.stream>>>(partial, dout, x, pre, N, int(Tn), C, int(K), silu);
  CUDA_CHECK_LAUNCH("short_conv_dw_partial_kernel", shapes);
  short_conv_dw_finish_kernel<<<unsigned(ceil_div(C * (K + 1), kThreads)), kThreads, 0, ctx.stream>>>(
      dw, dbias, partial, n_chunks, C, int(K));
  CUDA_CHECK_LAUNCH("short_conv_dw_finish_kernel", shapes);
}

#define INSTANTIATE(T)                                                                                             \
  template void short_conv_forward<T>(Context&, T*, T*, const T*, const T*, const T*, int64_t, int64_t, int64_t,   \
                                      int64_t, bool);                                                              \
  template void short_conv_backward<T>(Context&, T*, float*, float*, const T*, const T*, const T*, const T*, int64_t, \
                                       int64_t, int64_t, int64_t, bool);
INSTANTIATE(float)
INSTANTIATE(bf16)

}  // namespace hysim::cuda
