// SwiGLU MLP on the GPU: three cuBLASLt projections (core/cuda/gemm.h) around fused
// elementwise kernels. Math as in layers/swiglu_mlp.cpp:
//   gate = x Wg^T, up = x Wu^T, h = silu(gate) up, y = h Wd^T
//   dh = dy Wd; dgate = dh up silu'(gate); dup = dh silu(gate); dx = dgate Wg + dup Wu
// dh is produced in fp32 (one rounding fewer before the elementwise step).
#include "core/cuda/device_util.cuh"
#include "core/cuda/gemm.h"
#include "core/cuda/layers.h"

namespace hysim::cuda {

namespace {

constexpr int kThreads = 256;

// h = silu(gate) up, element i; i8: 8 elements from 8 i8 (n % 8 == 0, aligned: load8 / store8).
template <class T>
__global__ void swiglu_act_kernel(T* __restrict__ h, const T* __restrict__ gate, const T* __restrict__ up, int64_t n,
                                  bool by8) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  if (by8) {
    for (int64_t i = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * 8; i < n; i += stride * 8) {
      float g[8], u[8], o[8];
      load8(gate + i, g), load8(up + i, u);
#pragma unroll
      for (int j = 0; j < 8; ++j) o[j] = g[j] * sigmoid_f32(g[j]) * u[j];
      store8(h + i, o);
    }
    return;
  }
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += stride) {
    const float g = to_f32(gate[i]);
    h[i] = from_f32<T>(g * sigmoid_f32(g) * to_f32(up[i]));
  }
}

// d silu/dg = s (1 + g (1 - s)), s = sigmoid(g).
__device__ __forceinline__ void swiglu_grad(float d, float g, float u, float& dgate, float& dup) {
  const float s = sigmoid_f32(g);
  dgate = d * u * (s * (1.f + g * (1.f - s)));
  dup = d * g * s;
}
template <class T>
__global__ void swiglu_act_backward_kernel(T* __restrict__ dgate, T* __restrict__ dup, const float* __restrict__ dh,
                                           const T* __restrict__ gate, const T* __restrict__ up, int64_t n, bool by8) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  if (by8) {
    for (int64_t i = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * 8; i < n; i += stride * 8) {
      float d[8], g[8], u[8], dg[8], du[8];
      load8(dh + i, d), load8(gate + i, g), load8(up + i, u);
#pragma unroll
      for (int j = 0; j < 8; ++j) swiglu_grad(d[j], g[j], u[j], dg[j], du[j]);
      store8(dgate + i, dg), store8(dup + i, du);
    }
    return;
  }
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += stride) {
    float dg, du;
    swiglu_grad(dh[i], to_f32(gate[i]), to_f32(up[i]), dg, du);
    dgate[i] = from_f32<T>(dg), dup[i] = from_f32<T>(du);
  }
}

}  // namespace

template <class T>
void swiglu_forward(Context& ctx, const SwiGLUConfig& c, const SwiGLUParams<T>& p, const SwiGLUActs<T>& a, T* y,
                    const T* x, int64_t B, int64_t Tn) {
  const int64_t N = B * Tn, D = c.d_model, F = c.d_hidden;
  if (N <= 0) return;
  linear_forward<T, T>(ctx, a.gate, x, p.gate_proj, N, D, F);
  linear_forward<T, T>(ctx, a.up, x, p.up_proj, N, D, F);
  const bool by8 = (N * F) % 8 == 0 && aligned16(a.h, a.gate, a.up);
  swiglu_act_kernel<T><<<grid_stride_blocks(by8 ? N * F / 8 : N * F, kThreads), kThreads, 0, ctx.stream>>>(
      a.h, a.gate, a.up, N * F, by8);
  CUDA_CHECK_LAUNCH("swiglu_act_kernel", shape_str("N, F", N, F));
  linear_forward<T, T>(ctx, y, a.h, p.down_proj, N, F, D);
}

template <class T>
void swiglu_backward(Context& ctx, const SwiGLUConfig& c, const SwiGLUParams<T>& p, const SwiGLUParams<float>& grad,
                     const SwiGLUActs<T>& a, T* dx, const T* dy, const T* x, int64_t B, int64_t Tn) {
  const int64_t N = B * Tn, D = c.d_model, F = c.d_hidden;
  if (N <= 0) return;
  ArenaScope scope(ctx.scratch);
  float* dh = ctx.scratch.alloc<float>(N * F, "swiglu dh");
  T* dgate = ctx.scratch.alloc<T>(N * F, "swiglu dgate");
  T* dup = ctx.scratch.alloc<T>(N * F, "swiglu dup");
  linear_backward<T, float>(ctx, dh, grad.down_proj, dy, a.h, p.down_proj, N, F, D);
  const bool by8 = (N * F) % 8 == 0 && aligned16(dgate, dup, dh, a.gate, a.up);
  swiglu_act_backward_kernel<T><<<grid_stride_blocks(by8 ? N * F / 8 : N * F, kThreads), kThreads, 0, ctx.stream>>>(
      dgate, dup, dh, a.gate, a.up, N * F, by8);
  CUDA_CHECK_LAUNCH("swiglu_act_backward_kernel", shape_str("N, F", N, F));
  linear_backward<T, T>(ctx, dx, grad.gate_proj, dgate, x, p.gate_proj, N, D, F);
  linear_backward<T, T>(ctx, dx, grad.up_proj, dup, x, p.up_proj, N, D, F, /*accumulate_dx=*/true);
}

#define INSTANTIATE(T)                                                                                         \
  template void swiglu_forward<T>(Context&, const SwiGLUConfig&, const SwiGLUParams<T>&, const SwiGLUActs<T>&, \
                                  T*, const T*, int64_t, int64_t);                                             \
  template void swiglu_backward<T>(Context&, const SwiGLUConfig&, const SwiGLUParams<T>&,                      \
                                   const SwiGLUParams<float>&, const SwiGLUActs<T>&, T*, const T*, const T*,  \
                                   int64_t, int64_t);
INSTANTIATE(float)
INSTANTIATE(bf16)

}  // namespace hysim::cuda
