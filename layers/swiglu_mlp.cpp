#include "layers/swiglu_mlp.h"

#include <vector>

#include "core/cpu/gemm.h"
#include "core/cpu/math.h"

namespace hysim {

template <class T>
void swiglu_forward(const SwiGLUConfig& c, const SwiGLUParams<T>& p, const SwiGLUActs<T>& a, T* y, const T* x,
                    int64_t B, int64_t Tn) {
  const int64_t N = B * Tn, D = c.d_model, F = c.d_hidden;
  cpu::linear_forward(a.gate, x, p.gate_proj, N, D, F);
  cpu::linear_forward(a.up, x, p.up_proj, N, D, F);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N * F; ++i) a.h[i] = cpu::silu(a.gate[i]) * a.up[i];
  cpu::linear_forward(y, a.h, p.down_proj, N, F, D);
}

// dh = dy Wd;  dgate = dh * up * silu'(gate);  dup = dh * silu(gate);  dx = dgate Wg + dup Wu.
template <class T>
void swiglu_backward(const SwiGLUConfig& c, const SwiGLUParams<T>& p, const SwiGLUParams<T>& grad,
                     const SwiGLUActs<T>& a, T* dx, const T* dy, const T* x, int64_t B, int64_t Tn) {
  const int64_t N = B * Tn, D = c.d_model, F = c.d_hidden;
  std::vector<T> dgate(N * F), dup(N * F);
  // dh goes into dup's storage; the elementwise step below turns it into dup in place.
  cpu::linear_backward(dup.data(), grad.down_proj, dy, a.h, p.down_proj, N, F, D);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N * F; ++i) {
    const T g = a.gate[i], dh = dup[i];
    dgate[i] = dh * a.up[i] * cpu::silu_grad(g);
    dup[i] = dh * cpu::silu(g);
  }
  cpu::linear_backward(dx, grad.gate_proj, dgate.data(), x, p.gate_proj, N, D, F);
  cpu::linear_backward(dx, grad.up_proj, dup.data(), x, p.up_proj, N, D, F, /*accumulate_dx=*/true);
}

#define INSTANTIATE(T)                                                                                         \
  template void swiglu_forward<T>(const SwiGLUConfig&, const SwiGLUParams<T>&, const SwiGLUActs<T>&, T*,      \
                                  const T*, int64_t, int64_t);                                                 \
  template void swiglu_backward<T>(const SwiGLUConfig&, const SwiGLUParams<T>&, const SwiGLUParams<T>&,       \
                                   const SwiGLUActs<T>&, T*, const T*, const T*, int64_t, int64_t);
INSTANTIATE(float)
INSTANTIATE(double)

}  // namespace hysim
