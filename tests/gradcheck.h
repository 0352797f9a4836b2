// Finite-difference gradient checking in fp64, shared by all layer tests.
//
// Convention: a test defines a scalar loss L = sum(out * R) with a fixed random R (so
// dL/dout = R), runs the layer's backward with dout = R, and compares every analytic
// gradient with the central difference (L(x + h) - L(x - h)) / 2h.
//
// Error measure: max_i |num_i - ana_i| / max_i |ana_i| over the checked entries of one
// tensor (a relative error of the tensor, robust to entries that are near zero).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "core/rng.h"

namespace hysim::test {

// Fill with N(0, std) from a counter-based stream (deterministic).
inline void fill_normal(double* p, int64_t n, uint64_t seed, double std = 1.0) {
  CounterRng r(seed, 7);
  for (int64_t i = 0; i < n; ++i) p[i] = std * r.normal(i);
}
inline std::vector<double> random_vec(int64_t n, uint64_t seed, double std = 1.0) {
  std::vector<double> v(n);
  fill_normal(v.data(), n, seed, std);
  return v;
}
inline double dot(const double* a, const double* b, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// Relative error of the analytic gradient `ana` of loss() w.r.t. the n values at x.
// Checks all entries when n <= max_checks, else max_checks entries spread evenly.
template <class LossFn>
double grad_rel_error(double* x, const double* ana, int64_t n, LossFn loss, const std::string& what = "",
                      int64_t max_checks = 64, double h = 1e-6) {
  const int64_t step = n <= max_checks ? 1 : (n + max_checks - 1) / max_checks;
  double max_diff = 0, max_ana = 0;
  for (int64_t i = 0; i < n; i += step) {
    const double x0 = x[i];
    x[i] = x0 + h;
    const double lp = loss();
    x[i] = x0 - h;
    const double lm = loss();
    x[i] = x0;
    const double num = (lp - lm) / (2 * h);
    max_diff = std::max(max_diff, std::abs(num - ana[i]));
    max_ana = std::max(max_ana, std::abs(ana[i]));
  }
  const double rel = max_diff / std::max(max_ana, 1e-300);
  if (!what.empty()) std::printf("  gradcheck %-28s n=%-6lld rel err %.2e (max |g| %.2e)\n", what.c_str(), (long long)n, rel, max_ana);
  return rel;
}

inline double max_abs_diff(const double* a, const double* b, int64_t n) {
  double m = 0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

}  // namespace hysim::test
