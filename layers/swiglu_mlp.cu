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

// h = silu(gate) up.
template <class T> struct SwigluAct {
  T* h;
  const T *gate, *up;
  template <int W> __device__ void apply(int64_t i) const {
    float g[W], u[W], o[W];
    load_w<W>(gate + i, g), load_w<W>(up + i, u);
#pragma unroll
    for (int j = 0; j < W; ++j) o[j] = g[j] * sigmoid_f32(g[j]) * u[j];
    store_w<W>(h + i, o);
  }
};

// dgate = dh u silu'(g), dup = dh silu(g).
template <class T> struct SwigluActBackward {
  T *dgate, *dup;
  const float* dh;
  const T *gate, *up;
  template <int W> __device__ void apply(int64_t i) const {
    float d[W], g[W], u[W], dg[W], du[W];
    load_w<W>(dh + i, d), load_w<W>(gate + i, g), load_w<W>(up + i, u);
#pragma unroll
    for (int j = 0; j < W; ++j) {
      dg[j] = d[j] * u[j] * silu_grad_f32(g[j]);
      du[j] = d[j] * g[j] * sigmoid_f32(g[j]);
    }
    store_w<W>(dgate + i, dg), store_w<W>(dup + i, du);
  }
};

}  // namespace

template <class T>
void swiglu_forward(Context& ctx, const SwiGLUConfig& c, const SwiGLUParams<T>& p, const SwiGLUActs<T>& a, T* y,
                    const T* x, int64_t B, int64_t Tn) {
  const int64_t N = B * Tn, D = c.d_model, F = c.d_hidden;
  if (N <= 0) return;
  linear_forward<T, T>(ctx, a.gate, x, p.gate_proj, N, D, F);
  linear_forward<T, T>(ctx, a.up, x, p.up_proj, N, D, F);
  launch_elementwise(ctx.stream, SwigluAct<T>{a.h, a.gate, a.up}, N * F, a.h, a.gate, a.up);
  CUDA_CHECK_LAUNCH("swiglu activation", shape_str("N, F", N, F));
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
  launch_elementwise(ctx.stream, SwigluActBackward<T>{dgate, dup, dh, a.gate, a.up}, N * F, dgate, dup, dh, a.gate,
                     a.up);
  CUDA_CHECK_LAUNCH("swiglu activation backward", shape_str("N, F", N, F));
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
