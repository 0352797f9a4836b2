// RMSNorm on the GPU: one warp per row for the forward and for dx; dw by a two-pass
// deterministic column reduction. Math as in layers/rmsnorm.cpp:
//   y = x r w,  r = 1 / sqrt(mean(x^2) + eps)
//   dx = r (g - xh mean(g xh)),  g = dout w,  xh = x r;   dw += sum_n dout xh
#include "core/cuda/device_util.cuh"
#include "core/cuda/layers.h"

namespace hysim::cuda {

namespace {

constexpr int kRowsPerBlock = 8;  // warps per block, one row each
constexpr int kDwRowChunk = 64;   // rows per partial sum of dw (fixed: results do not depend on the device)
constexpr int kDwThreads = 256;

template <class T>
__global__ void rmsnorm_forward_kernel(T* __restrict__ out, float* __restrict__ rstd, const T* __restrict__ x,
                                       const T* __restrict__ w, int64_t N, int64_t C, float eps) {
  const int lane = threadIdx.x % kWarp;
  const int64_t n = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  if (n >= N) return;
  const T* xr = x + n * C;
  float ss = 0.f;
  for (int64_t c = lane; c < C; c += kWarp) {
    const float v = to_f32(xr[c]);
    ss += v * v;
  }
  ss = warp_sum(ss);
  const float r = 1.f / sqrtf(ss / float(C) + eps);
  if (lane == 0 && rstd) rstd[n] = r;
  T* yr = out + n * C;
  for (int64_t c = lane; c < C; c += kWarp) yr[c] = from_f32<T>(to_f32(xr[c]) * r * to_f32(w[c]));
}

template <class T>
__global__ void rmsnorm_backward_dx_kernel(T* __restrict__ dx, const T* __restrict__ dout, const T* __restrict__ x,
                                           const T* __restrict__ w, const float* __restrict__ rstd, int64_t N,
                                           int64_t C, bool accumulate_dx) {
  const int lane = threadIdx.x % kWarp;
  const int64_t n = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  if (n >= N) return;
  const T* xr = x + n * C;
  const T* gr = dout + n * C;
  const float r = rstd[n];
  float m = 0.f;
  for (int64_t c = lane; c < C; c += kWarp) m += to_f32(gr[c]) * to_f32(w[c]) * (to_f32(xr[c]) * r);
  const float mean = warp_sum(m) / float(C);
  T* dr = dx + n * C;
  for (int64_t c = lane; c < C; c += kWarp) {
    float v = r * (to_f32(gr[c]) * to_f32(w[c]) - to_f32(xr[c]) * r * mean);
    if (accumulate_dx) v += to_f32(dr[c]);
    dr[c] = from_f32<T>(v);
  }
}

// partial[chunk, c] = sum over the chunk's rows of dout x r (consecutive threads take
// consecutive columns: coalesced).
template <class T>
__global__ void rmsnorm_dw_partial_kernel(float* __restrict__ partial, const T* __restrict__ dout,
                                          const T* __restrict__ x, const float* __restrict__ rstd, int64_t N,
                                          int64_t C) {
  const int64_t c = int64_t(blockIdx.x) * kDwThreads + threadIdx.x;
  if (c >= C) return;
  const int64_t n0 = int64_t(blockIdx.y) * kDwRowChunk, n1 = min(N, n0 + kDwRowChunk);
  float s = 0.f;
  for (int64_t n = n0; n < n1; ++n) s += to_f32(dout[n * C + c]) * to_f32(x[n * C + c]) * rstd[n];
  partial[int64_t(blockIdx.y) * C + c] = s;
}

struct AddTo {  // dw[c] += the column's sum (column_sums)
  float* dst;
  __device__ void operator()(int64_t c, float s) const { dst[c] += s; }
};

}  // namespace

template <class T>
void rmsnorm_forward(Context& ctx, T* out, float* rstd, const T* x, const T* w, int64_t N, int64_t C, double eps) {
  if (N <= 0 || C <= 0) return;
  const int64_t blocks = ceil_div(N, kRowsPerBlock);
  rmsnorm_forward_kernel<T><<<unsigned(blocks), kRowsPerBlock * kWarp, 0, ctx.stream>>>(out, rstd, x, w, N, C,
                                                                                         float(eps));
  CUDA_CHECK_LAUNCH("rmsnorm_forward_kernel", shape_str("N, C", N, C));
}

template <class T>
void rmsnorm_backward(Context& ctx, T* dx, float* dw, const T* dout, const T* x, const T* w, const float* rstd,
                      int64_t N, int64_t C, bool accumulate_dx) {
  if (N <= 0 || C <= 0) return;
  if (dx) {
    const int64_t blocks = ceil_div(N, kRowsPerBlock);
    rmsnorm_backward_dx_kernel<T><<<unsigned(blocks), kRowsPerBlock * kWarp, 0, ctx.stream>>>(dx, dout, x, w, rstd,
                                                                                               N, C, accumulate_dx);
    CUDA_CHECK_LAUNCH("rmsnorm_backward_dx_kernel", shape_str("N, C", N, C));
  }
  if (dw) {
    ArenaScope scope(ctx.scratch);
    const int64_t n_chunks = ceil_div(N, kDwRowChunk);
    float* partial = ctx.scratch.alloc<float>(n_chunks * C, "rmsnorm dw partial sums");
    const dim3 grid(unsigned(ceil_div(C, kDwThreads)), unsigned(n_chunks));
    rmsnorm_dw_partial_kernel<T><<<grid, kDwThreads, 0, ctx.stream>>>(partial, dout, x, rstd, N, C);
    CUDA_CHECK_LAUNCH("rmsnorm_dw_partial_kernel", shape_str("N, C", N, C));
    column_sums(ctx.stream, partial, n_chunks, C, AddTo{dw});
    CUDA_CHECK_LAUNCH("rmsnorm dw column sums", shape_str("N, C", N, C));
  }
}

#define INSTANTIATE(T)                                                                                         \
  template void rmsnorm_forward<T>(Context&, T*, float*, const T*, const T*, int64_t, int64_t, double);       \
  template void rmsnorm_backward<T>(Context&, T*, float*, const T*, const T*, const T*, const float*, int64_t, \
                                    int64_t, bool);
INSTANTIATE(float)
INSTANTIATE(bf16)

}  // namespace hysim::cuda
