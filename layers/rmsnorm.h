// RMSNorm: y = x / sqrt(mean(x^2) + eps) * w, over the last dimension C.
// Used for block norms, the final norm and QK-norm (over the full q/k projections).
#pragma once
#include <cstdint>

#include "core/params.h"

namespace hysim {

struct RMSNormConfig {
  int64_t dim = 0;
  double eps = 1e-6;
};

template <class T> struct RMSNormParams {
  T* w = nullptr;
};

template <class T, class V> void visit_params(const RMSNormConfig& c, RMSNormParams<T>& p, V&& v) {
  v(p.w, ParamSpec{"w", {c.dim}, Init::ones(), false});
}

// x, out: [N, C]; rstd: [N] saved for the backward.
template <class T> void rmsnorm_forward(T* out, T* rstd, const T* x, const T* w, int64_t N, int64_t C, double eps);
// dx = (overwritten; or += when accumulate_dx); dw += ...
template <class T>
void rmsnorm_backward(T* dx, T* dw, const T* dout, const T* x, const T* w, const T* rstd, int64_t N, int64_t C,
                      bool accumulate_dx = false);

inline int64_t rmsnorm_flops(int64_t N, int64_t C) { return 4 * N * C; }

}  // namespace hysim
