// Causal depthwise short convolution on the GPU, the math of layers/short_conv.cpp:
//   pre[b,t,c] = bias[c] + sum_{j<K} w[c,j] x[b, t-(K-1)+j, c]   (x = 0 before t = 0)
//   out = silu(pre) if silu else pre
// A thread owns one channel of a chunk of kRowChunk rows (consecutive threads take consecutive
// channels: coalesced) and walks the rows with the K taps' inputs in a sliding window of
// registers, so that every element is read once (an element per thread with 64-bit index
// arithmetic and K re-reads ran 5x under the memory bandwidth). Taps summed in the CPU's order.
// The backward is one walk in reverse over the chunk: dx from a window of the next rows'
// dpre = dout silu'(pre) (recomputed, not stored), dw and dbias from a window of the previous
// rows' x, as per-chunk partial sums then added over the chunks in order (deterministic, no
// atomics), as rmsnorm's dw.
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
// Rows whose loads a thread issues together before using them: one row at a time left each
// thread waiting a full memory latency per row.
constexpr int kRowBatch = 4;

template <class T>
__device__ __forceinline__ float dpre_at(const T* __restrict__ dout, const T* __restrict__ pre, int64_t i, bool silu) {
  const float d = to_f32(dout[i]);
  return silu ? d * silu_grad_f32(to_f32(pre[i])) : d;
}

// Channel c of rows [n0, n1): window[m] holds x of row n - m and wr[m] = w[K-1-m] its tap
// (pre[n] = bias + sum_j w[j] x[n - (K-1) + j]); rows before the sequence's first token are 0
// (t - m < 0, t = n mod Tn). Register arrays are indexed by unrolled loop counters only.
template <class T>
__global__ void short_conv_forward_kernel(T* __restrict__ out, T* __restrict__ pre, const T* __restrict__ x,
                                          const T* __restrict__ w, const T* __restrict__ bias, int N, int Tn, int C,
                                          int K, bool silu) {
  const int c = int(blockIdx.x) * kThreads + int(threadIdx.x);
  if (c >= C) return;
  const int n0 = int(blockIdx.y) * kRowChunk, n1 = min(N, n0 + kRowChunk);
  float wr[kMaxTaps], window[kMaxTaps];
#pragma unroll
  for (int m = 0; m < kMaxTaps; ++m) {
    wr[m] = m < K ? to_f32(w[int64_t(c) * K + (K - 1 - m)]) : 0.f;
    window[m] = m > 0 && m < K && n0 - m >= 0 ? to_f32(x[int64_t(n0 - m) * C + c]) : 0.f;
  }
  const float b = bias ? to_f32(bias[c]) : 0.f;
  int t = n0 % Tn;
  for (int nb = n0; nb < n1; nb += kRowBatch) {
    float xb[kRowBatch];
#pragma unroll
    for (int u = 0; u < kRowBatch; ++u) xb[u] = nb + u < n1 ? to_f32(x[int64_t(nb + u) * C + c]) : 0.f;
#pragma unroll
    for (int u = 0; u < kRowBatch; ++u) {
      const int n = nb + u;
      if (n >= n1) break;
      const int64_t i = int64_t(n) * C + c;
      window[0] = xb[u];
      float s = b;
#pragma unroll
      for (int m = kMaxTaps - 1; m >= 0; --m)  // taps in the CPU's order (j = K-1-m ascending)
        if (m < K && t - m >= 0) s += wr[m] * window[m];
      if (pre) pre[i] = from_f32<T>(s);
      out[i] = from_f32<T>(silu ? silu_f32(s) : s);
#pragma unroll
      for (int m = kMaxTaps - 1; m > 0; --m) window[m] = window[m - 1];
      t = t + 1 == Tn ? 0 : t + 1;
    }
  }
}

// Channel c of rows [n0, n1), walked from the last: ahead[m] = dpre of row n + m, the input of
// tap K-1-m in dx[n] = sum_j w[j] dpre[n + (K-1) - j] (rows past the sequence's end are 0), and
// behind[m] = x of row n - m, the input of tap K-1-m in dw[j] += dpre[n] x[n - (K-1) + j].
// partial[chunk, c, j]: j < K dw, j = K dbias.
template <class T>
__global__ void short_conv_backward_kernel(T* __restrict__ dx, float* __restrict__ partial, const T* __restrict__ dout,
                                           const T* __restrict__ x, const T* __restrict__ pre,
                                           const T* __restrict__ w, int N, int Tn, int C, int K, bool silu) {
  const int c = int(blockIdx.x) * kThreads + int(threadIdx.x);
  if (c >= C) return;
  const int n0 = int(blockIdx.y) * kRowChunk, n1 = min(N, n0 + kRowChunk), last = n1 - 1;
  float wr[kMaxTaps], ahead[kMaxTaps], behind[kMaxTaps], acc[kMaxTaps] = {}, acc_bias = 0.f;  // acc[m]: tap K-1-m
#pragma unroll
  for (int m = 0; m < kMaxTaps; ++m) {
    wr[m] = m < K ? to_f32(w[int64_t(c) * K + (K - 1 - m)]) : 0.f;
    ahead[m] = m > 0 && m < K && last + m < N ? dpre_at(dout, pre, int64_t(last + m) * C + c, silu) : 0.f;
    behind[m] = m < K && last - m >= 0 ? to_f32(x[int64_t(last - m) * C + c]) : 0.f;
  }
  int t = last % Tn;
  for (int nb = last; nb >= n0; nb -= kRowBatch) {
    float db[kRowBatch], xb[kRowBatch];  // row n = nb - u: dpre[n], and x of row (n-1) - (K-1)
#pragma unroll
    for (int u = 0; u < kRowBatch; ++u) {
      const int n = nb - u;
      db[u] = n >= n0 ? dpre_at(dout, pre, int64_t(n) * C + c, silu) : 0.f;
      xb[u] = n >= n0 && n - K >= 0 ? to_f32(x[int64_t(n - K) * C + c]) : 0.f;
    }
#pragma unroll
    for (int u = 0; u < kRowBatch; ++u) {
      const int n = nb - u;
      if (n < n0) break;
      const float d = db[u];
      ahead[0] = d;
      float s = 0.f;
#pragma unroll
      for (int m = kMaxTaps - 1; m >= 0; --m) {
        if (m < K && t + m < Tn) s += wr[m] * ahead[m];
        if (m < K && t - m >= 0) acc[m] += d * behind[m];
      }
      acc_bias += d;
      dx[int64_t(n) * C + c] = from_f32<T>(s);
#pragma unroll
      for (int m = kMaxTaps - 1; m > 0; --m) ahead[m] = ahead[m - 1];
#pragma unroll
      for (int m = 0; m < kMaxTaps; ++m)
        behind[m] = m + 1 < K ? behind[m + 1 < kMaxTaps ? m + 1 : m] : (m + 1 == K ? xb[u] : 0.f);
      t = t == 0 ? Tn - 1 : t - 1;
    }
  }
  if (!partial) return;
  float* out = partial + (int64_t(blockIdx.y) * C + c) * (K + 1);
#pragma unroll
  for (int m = 0; m < kMaxTaps; ++m)
    if (m < K) out[K - 1 - m] = acc[m];
  out[K] = acc_bias;
}

// Column i = c (K + 1) + j of the partials: tap j < K of channel c, or its bias (j = K).
struct AddTapGrads {
  float *dw, *dbias;
  int K;
  __device__ void operator()(int64_t i, float s) const {
    const int64_t c = i / (K + 1);
    const int j = int(i % (K + 1));
    if (j < K) {
      if (dw) dw[c * K + j] += s;
    } else if (dbias) {
      dbias[c] += s;
    }
  }
};

// The kernels' limits: K taps in registers, 32-bit element indices, row chunks on grid.y.
void check_shapes(const std::string& shapes, int64_t N, int64_t C, int64_t K) {
  if (K <= 0 || K > kMaxTaps)
    throw std::invalid_argument(shapes + ": kernel size must be in [1, " + std::to_string(kMaxTaps) + "] on the GPU");
  if (N * C >= (int64_t(1) << 31) || ceil_div(N, kRowChunk) > 65535)
    throw std::invalid_argument(shapes + ": too large for the GPU kernels (B Tn C < 2^31, B Tn <= 65535 x " +
                                std::to_string(kRowChunk) + ")");
}

}  // namespace

template <class T>
void short_conv_forward(Context& ctx, T* out, T* pre, const T* x, const T* w, const T* bias, int64_t B, int64_t Tn,
                        int64_t C, int64_t K, bool silu) {
  if (B <= 0 || Tn <= 0 || C <= 0) return;
  const std::string shapes = shape_str("short_conv_forward B, Tn, C, K", B, Tn, C, K);
  check_shapes(shapes, B * Tn, C, K);
  const int64_t N = B * Tn;
  const dim3 grid(unsigned(ceil_div(C, kThreads)), unsigned(ceil_div(N, kRowChunk)));
  short_conv_forward_kernel<T><<<grid, kThreads, 0, ctx.stream>>>(out, pre, x, w, bias, int(N), int(Tn), int(C),
                                                                  int(K), silu);
  CUDA_CHECK_LAUNCH("short_conv_forward_kernel", shapes);
}

template <class T>
void short_conv_backward(Context& ctx, T* dx, float* dw, float* dbias, const T* dout, const T* x, const T* pre,
                         const T* w, int64_t B, int64_t Tn, int64_t C, int64_t K, bool silu) {
  if (B <= 0 || Tn <= 0 || C <= 0) return;
  const std::string shapes = shape_str("short_conv_backward B, Tn, C, K", B, Tn, C, K);
  check_shapes(shapes, B * Tn, C, K);
  if (silu && !pre) throw std::invalid_argument(shapes + ": pre (saved by the forward) is needed with silu");
  const int64_t N = B * Tn;
  ArenaScope scope(ctx.scratch);
  const int64_t n_chunks = ceil_div(N, kRowChunk);
  float* partial =
      dw || dbias ? ctx.scratch.alloc<float>(n_chunks * C * (K + 1), "short_conv dw partial sums") : nullptr;
  const dim3 grid(unsigned(ceil_div(C, kThreads)), unsigned(n_chunks));
  short_conv_backward_kernel<T><<<grid, kThreads, 0, ctx.stream>>>(dx, partial, dout, x, pre, w, int(N), int(Tn),
                                                                   int(C), int(K), silu);
  CUDA_CHECK_LAUNCH("short_conv_backward_kernel", shapes);
  if (!partial) return;
  column_sums(ctx.stream, partial, n_chunks, C * (K + 1), AddTapGrads{dw, dbias, int(K)});
  CUDA_CHECK_LAUNCH("short_conv dw column sums", shapes);
}

#define INSTANTIATE(T)                                                                                             \
  template void short_conv_forward<T>(Context&, T*, T*, const T*, const T*, const T*, int64_t, int64_t, int64_t,   \
                                      int64_t, bool);                                                              \
  template void short_conv_backward<T>(Context&, T*, float*, float*, const T*, const T*, const T*, const T*, int64_t, \
                                       int64_t, int64_t, int64_t, bool);
INSTANTIATE(float)
INSTANTIATE(bf16)

}  // namespace hysim::cuda
