#include "layers/rmsnorm.h"

#include <cmath>
#include <vector>

namespace hysim {

template <class T> void rmsnorm_forward(T* out, T* rstd, const T* x, const T* w, int64_t N, int64_t C, double eps) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const T* xr = x + n * C;
    T* yr = out + n * C;
    double ss = 0;  // accumulate in double: the sum of squares is the one sensitive step
    for (int64_t c = 0; c < C; ++c) ss += double(xr[c]) * double(xr[c]);
    const T r = T(1.0 / std::sqrt(ss / double(C) + eps));
    if (rstd) rstd[n] = r;
    for (int64_t c = 0; c < C; ++c) yr[c] = xr[c] * r * w[c];
  }
}

// With xh = x r: dx = r (g - xh mean(g xh)), g = dout w;  dw = sum_n dout xh.
template <class T>
void rmsnorm_backward(T* dx, T* dw, const T* dout, const T* x, const T* w, const T* rstd, int64_t N, int64_t C,
                      bool accumulate_dx) {
  if (dx) {
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      const T* xr = x + n * C;
      const T* gr = dout + n * C;
      const T r = rstd[n];
      double m = 0;
      for (int64_t c = 0; c < C; ++c) m += double(gr[c] * w[c]) * double(xr[c] * r);
      const T mean = T(m / double(C));
      T* dr = dx + n * C;
      for (int64_t c = 0; c < C; ++c) {
        const T v = r * (gr[c] * w[c] - xr[c] * r * mean);
        dr[c] = accumulate_dx ? dr[c] + v : v;
      }
    }
  }
  if (dw) {
    // Reduce over rows per column block: deterministic (no atomics), parallel over C.
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < C; ++c) {
      T s = 0;
      for (int64_t n = 0; n < N; ++n) s += dout[n * C + c] * x[n * C + c] * rstd[n];
      dw[c] += s;
    }
  }
}

#define INSTANTIATE(T)                                                                                  \
  template void rmsnorm_forward<T>(T*, T*, const T*, const T*, int64_t, int64_t, double);              \
  template void rmsnorm_backward<T>(T*, T*, const T*, const T*, const T*, const T*, int64_t, int64_t, bool);
INSTANTIATE(float)
INSTANTIATE(double)

}  // namespace hysim
