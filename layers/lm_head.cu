// LM head with fused softmax cross-entropy on the GPU. Math and stats as in
// layers/lm_head.cpp (see layers/lm_head.h):
//   l = x W^T, lse = log sum exp l, ce = lse - l[t], zl = z_loss lse^2
//   dJ/dl_j = m / sum m ((1 + 2 z_loss lse) softmax_j - [j == t])
// Rows are processed in chunks so that only chunk_rows x V logits exist at a time (fp32,
// plus their gradient in the storage type T): never the whole N x V.
// Per chunk: logits by cuBLASLt (T in, fp32 out), one block per row computes max/argmax,
// the sum of exponentials (online, one pass) and writes dlogits in T, then the two
// backward products (dx overwritten, dW accumulated in fp32) by cuBLASLt.
// Stats are per-row values summed on the host in row order (deterministic, as the CPU).
#include <algorithm>
#include <cfloat>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/cuda/device_util.cuh"
#include "core/cuda/gemm.h"
#include "core/cuda/layers.h"

namespace hysim::cuda {

namespace {

constexpr int kRowThreads = 512;  // one block per row; V ~ 1e5 gives ~200 elements per thread
constexpr int kSumThreads = 1024;
constexpr unsigned long long kNoError = ~0ull;
constexpr size_t kDefaultChunkBytes = size_t(1) << 30;  // chunk_rows <= 0: logits + dlogits within 1 GiB

// sum m_i over rows in a fixed order (one block, fixed tree) and the first bad target
// of a row with m_i != 0 (atomicMin on the packed (position, target) word, as embedding).
__global__ void lm_head_weight_sum_kernel(double* __restrict__ weight_sum, const int32_t* __restrict__ targets,
                                          const float* __restrict__ mask, int64_t N, int64_t V,
                                          unsigned long long* __restrict__ status) {
  __shared__ double part[kSumThreads];
  double s = 0;
  for (int64_t n = threadIdx.x; n < N; n += kSumThreads) {
    const double m = mask ? double(mask[n]) : 1.0;
    if (m == 0) continue;
    const int32_t t = targets[n];
    if (t < 0 || t >= V) atomicMin(status, (static_cast<unsigned long long>(n) << 32) | uint32_t(t));
    s += m;
  }
  part[threadIdx.x] = s;
  __syncthreads();
  for (int off = kSumThreads / 2; off > 0; off >>= 1) {
    if (threadIdx.x < off) part[threadIdx.x] += part[threadIdx.x + off];
    __syncthreads();
  }
  if (threadIdx.x == 0) *weight_sum = part[0];
}

// Running (max, sum of exp(l - max), first argmax) of a set of logits; merging two is
// associative, so any split over threads gives the same math (up to fp32 rounding).
struct SoftmaxAcc {
  float mx, sum;
  int32_t arg;
};
__device__ __forceinline__ SoftmaxAcc merge(SoftmaxAcc a, SoftmaxAcc b) {
  if (b.mx > a.mx || (b.mx == a.mx && b.arg < a.arg)) {  // b's max wins (first index on ties)
    const SoftmaxAcc t = a;
    a = b;
    b = t;
  }
  // a.mx >= b.mx; an empty accumulator has mx = -inf and sum 0.
  const float sb = b.sum == 0.f ? 0.f : b.sum * expf(b.mx - a.mx);
  return {a.mx, a.sum + sb, a.arg};
}
__device__ __forceinline__ void add(SoftmaxAcc& a, float l, int32_t j) {
  if (l > a.mx) {
    a.sum = a.sum * expf(a.mx - l) + 1.f;  // exp(-inf) = 0 covers the first element
    a.mx = l;
    a.arg = j;
  } else {
    a.sum += expf(l - a.mx);
  }
}

// One block per row of the chunk. logits [rows, V] fp32; dlogits [rows, V] in T.
template <class T>
__global__ void __launch_bounds__(kRowThreads)
    lm_head_row_kernel(T* __restrict__ dlogits, float* __restrict__ row_ce, float* __restrict__ row_z,
                       int32_t* __restrict__ row_correct, const float* __restrict__ logits,
                       const int32_t* __restrict__ targets, const float* __restrict__ mask, int64_t r0, int64_t V,
                       float z_loss, double inv_w, bool compute_grad) {
  const int64_t i = blockIdx.x, n = r0 + i;
  const float* l = logits + i * V;
  T* dl = dlogits + i * V;
  const float m = mask ? mask[n] : 1.f;
  if (m == 0.f) {
    if (threadIdx.x == 0) row_ce[n] = row_z[n] = 0.f, row_correct[n] = 0;
    if (compute_grad)
      for (int64_t j = threadIdx.x; j < V; j += kRowThreads) dl[j] = from_f32<T>(0.f);
    return;
  }
  SoftmaxAcc acc{-INFINITY, 0.f, INT32_MAX};
  if (V % 4 == 0) {  // rows start 16-byte aligned: float4 loads
    const float4* l4 = reinterpret_cast<const float4*>(l);
    for (int64_t q = threadIdx.x; q < V / 4; q += kRowThreads) {
      const float4 v = l4[q];
      const int32_t j = int32_t(4 * q);
      add(acc, v.x, j), add(acc, v.y, j + 1), add(acc, v.z, j + 2), add(acc, v.w, j + 3);
    }
  } else {
    for (int64_t j = threadIdx.x; j < V; j += kRowThreads) add(acc, l[j], int32_t(j));
  }
  // Block merge: warps by shuffles, then the warps' results by warp 0.
  for (int off = 16; off > 0; off >>= 1) {
    const SoftmaxAcc o{__shfl_xor_sync(0xffffffffu, acc.mx, off), __shfl_xor_sync(0xffffffffu, acc.sum, off),
                       __shfl_xor_sync(0xffffffffu, acc.arg, off)};
    acc = merge(acc, o);
  }
  __shared__ SoftmaxAcc warp_acc[kRowThreads / kWarp];
  __shared__ SoftmaxAcc row_acc;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  if (lane == 0) warp_acc[warp] = acc;
  __syncthreads();
  if (warp == 0) {
    acc = lane < kRowThreads / kWarp ? warp_acc[lane] : SoftmaxAcc{-INFINITY, 0.f, INT32_MAX};
    for (int off = 16; off > 0; off >>= 1) {
      const SoftmaxAcc o{__shfl_xor_sync(0xffffffffu, acc.mx, off), __shfl_xor_sync(0xffffffffu, acc.sum, off),
                         __shfl_xor_sync(0xffffffffu, acc.arg, off)};
      acc = merge(acc, o);
    }
    if (lane == 0) row_acc = acc;
  }
  __syncthreads();
  acc = row_acc;
  const int32_t t = targets[n];
  const float lse = acc.mx + logf(acc.sum);
  if (threadIdx.x == 0) {
    row_ce[n] = m * (lse - l[t]);
    row_z[n] = m * z_loss * lse * lse;
    row_correct[n] = acc.arg == t;
  }
  if (!compute_grad) return;
  // dl_j = a exp(l_j - max) - scale [j == t],  a = scale (1 + 2 z lse) / sum,  scale = m / sum m
  const float scale = float(double(m) * inv_w);
  const float a = scale * (1.f + 2.f * z_loss * lse) / acc.sum;
  for (int64_t j = threadIdx.x; j < V; j += kRowThreads) {
    float g = a * expf(l[j] - acc.mx);
    if (j == t) g -= scale;
    dl[j] = from_f32<T>(g);
  }
}

}  // namespace

template <class T>
LmHeadStats lm_head_loss(Context& ctx, T* dx, float* dW, const T* x, const T* W, const int32_t* targets,
                         const float* loss_mask, int64_t N, int64_t D, int64_t V, double z_loss, int64_t chunk_rows,
                         bool compute_grad) {
  LmHeadStats st;
  if (N <= 0) return st;
  if (N >= (int64_t(1) << 31) || V >= (int64_t(1) << 31))
    throw std::invalid_argument(shape_str("lm_head_loss: N and V must be < 2^31; N, D, V", N, D, V));
  const std::string shapes = shape_str("lm_head_loss N, D, V", N, D, V);
  ArenaScope scope(ctx.scratch);
  double* weight_sum_d = ctx.scratch.alloc<double>(1, "lm_head weight sum");
  lm_head_weight_sum_kernel<<<1, kSumThreads, 0, ctx.stream>>>(weight_sum_d, targets, loss_mask, N, V, ctx.status);
  CUDA_CHECK_LAUNCH("lm_head_weight_sum_kernel", shapes);
  // One sync before any output is touched: like the CPU, a bad target throws with dx/dW
  // unchanged, and the mean's denominator is known for the first chunk's gradients.
  unsigned long long status = kNoError;
  to_host(ctx, &st.weight_sum, weight_sum_d, 1);
  to_host(ctx, &status, ctx.status, 1);
  if (status != kNoError) {
    CUDA_CHECK(cudaMemsetAsync(ctx.status, 0xff, sizeof status, ctx.stream));
    throw std::out_of_range("lm_head: target " + std::to_string(int32_t(uint32_t(status & 0xffffffffu))) +
                            " at position " + std::to_string(int64_t(status >> 32)) +
                            " is outside the vocabulary [0, " + std::to_string(V) + ")");
  }
  if (st.weight_sum == 0) {
    if (compute_grad && dx) CUDA_CHECK(cudaMemsetAsync(dx, 0, size_t(N * D) * sizeof(T), ctx.stream), shapes);
    st.weight_sum = 0;
    return st;
  }
  const double inv_w = 1.0 / st.weight_sum;
  const int64_t row_bytes = V * int64_t(sizeof(float) + (compute_grad ? sizeof(T) : 0));
  const int64_t R = std::min(N, chunk_rows > 0 ? chunk_rows : std::max<int64_t>(1, kDefaultChunkBytes / row_bytes));
  float* logits = ctx.scratch.alloc<float>(R * V, "lm_head logits chunk");
  T* dlogits = compute_grad ? ctx.scratch.alloc<T>(R * V, "lm_head dlogits chunk") : nullptr;
  float* row_ce = ctx.scratch.alloc<float>(N, "lm_head row ce");
  float* row_z = ctx.scratch.alloc<float>(N, "lm_head row z");
  int32_t* row_correct = ctx.scratch.alloc<int32_t>(N, "lm_head row correct");

  for (int64_t r0 = 0; r0 < N; r0 += R) {
    const int64_t rows = std::min(R, N - r0);
    const T* xc = x + r0 * D;
    linear_forward<T, float>(ctx, logits, xc, W, rows, D, V);
    lm_head_row_kernel<T><<<unsigned(rows), kRowThreads, 0, ctx.stream>>>(
        dlogits, row_ce, row_z, row_correct, logits, targets, loss_mask, r0, V, float(z_loss), inv_w, compute_grad);
    CUDA_CHECK_LAUNCH("lm_head_row_kernel", shapes);
    // dx_chunk = dlogits W (overwrite), dW += dlogits^T x_chunk (fp32).
    if (compute_grad) linear_backward<T, T>(ctx, dx ? dx + r0 * D : nullptr, dW, dlogits, xc, W, rows, D, V);
  }
  std::vector<float> ce(N), z(N);
  std::vector<int32_t> correct(N);
  to_host(ctx, ce.data(), row_ce, N);
  to_host(ctx, z.data(), row_z, N);
  to_host(ctx, correct.data(), row_correct, N);
  double sum_ce = 0, sum_z = 0;
  for (int64_t n = 0; n < N; ++n) {
    sum_ce += ce[n];
    sum_z += z[n];
    st.n_correct += correct[n];
  }
  st.loss = sum_ce * inv_w;
  st.z_loss_term = sum_z * inv_w;
  return st;
}

#define INSTANTIATE(T)                                                                                             \
  template LmHeadStats lm_head_loss<T>(Context&, T*, float*, const T*, const T*, const int32_t*, const float*,   \
                                       int64_t, int64_t, int64_t, double, int64_t, bool);
INSTANTIATE(float)
INSTANTIATE(bf16)

}  // namespace hysim::cuda
