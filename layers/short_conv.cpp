#include "layers/short_conv.h"

#include <vector>

#include "core/cpu/math.h"

namespace hysim {

template <class T>
void short_conv_forward(T* out, T* pre, const T* x, const T* w, const T* bias, int64_t B, int64_t Tn, int64_t C,
                        int64_t K, bool silu) {
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < Tn; ++t) {
      const T* xb = x + b * Tn * C;
      const int64_t o = (b * Tn + t) * C;
      for (int64_t c = 0; c < C; ++c) {
        T s = bias ? bias[c] : T(0);
        for (int64_t j = 0; j < K; ++j) {
          const int64_t ts = t - (K - 1) + j;
          if (ts >= 0) s += w[c * K + j] * xb[ts * C + c];
        }
        if (pre) pre[o + c] = s;
        out[o + c] = silu ? cpu::silu(s) : s;
      }
    }
}

template <class T>
void short_conv_backward(T* dx, T* dw, T* dbias, const T* dout, const T* x, const T* pre, const T* w, int64_t B,
                         int64_t Tn, int64_t C, int64_t K, bool silu) {
  const int64_t N = B * Tn * C;
  std::vector<T> dpre(N);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N; ++i) dpre[i] = silu ? dout[i] * cpu::silu_grad(pre[i]) : dout[i];
  // dx[t] = sum_j w[j] dpre[t + (K-1) - j]
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < Tn; ++t) {
      const T* gb = dpre.data() + b * Tn * C;
      for (int64_t c = 0; c < C; ++c) {
        T s = 0;
        for (int64_t j = 0; j < K; ++j) {
          const int64_t to = t + (K - 1) - j;
          if (to < Tn) s += w[c * K + j] * gb[to * C + c];
        }
        dx[(b * Tn + t) * C + c] = s;
      }
    }
  // Parameter grads: parallel over channels, fixed summation order (deterministic).
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t j = 0; j < K; ++j) {
      T s = 0;
      for (int64_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < Tn; ++t) {
          const int64_t ts = t - (K - 1) + j;
          if (ts >= 0) s += dpre[(b * Tn + t) * C + c] * x[(b * Tn + ts) * C + c];
        }
      dw[c * K + j] += s;
    }
    if (dbias) {
      T s = 0;
      for (int64_t i = 0; i < B * Tn; ++i) s += dpre[i * C + c];
      dbias[c] += s;
    }
  }
}

#define INSTANTIATE(T)                                                                                         \
  template void short_conv_forward<T>(T*, T*, const T*, const T*, const T*, int64_t, int64_t, int64_t, int64_t, \
                                      bool);                                                                   \
  template void short_conv_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*, int64_t, int64_t,   \
                                       int64_t, int64_t, bool);
INSTANTIATE(float)
INSTANTIATE(double)

}  // namespace hysim
