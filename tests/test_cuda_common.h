// Shared by the GPU test suites (tests/test_cuda_*.cpp, ctest label `gpu`): a main that
// skips (exit 0, with a message) where no CUDA device is present, device buffers, random
// inputs and error measures.
//
// Error measures (GPU vs the CPU implementation in float on the same inputs):
//   rel_l2  = ||gpu - ref|| / ||ref||
//   max_rel = max |gpu - ref| / max |ref|   (as tests/gradcheck.h, robust to entries near 0)
// Outputs are poisoned with NaN (all bits set) before each GPU call, so an element a
// kernel fails to write makes both measures NaN and the check fails.
#pragma once
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "core/cuda/convert.h"
#include "core/rng.h"

namespace hysim::cuda::test {

inline std::vector<float> random_floats(int64_t n, uint64_t seed, double std = 1.0) {
  CounterRng r(seed, 11);
  std::vector<float> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = float(std * r.normal(i));
  return v;
}
// The values a bf16 tensor can hold: CPU references use these, so that the comparison
// measures the GPU's arithmetic and not the rounding of its inputs.
inline std::vector<float> round_to_bf16(const std::vector<float>& x) { return to_f32_host(to_bf16_host(x)); }

inline double rel_l2(const std::vector<float>& got, const std::vector<float>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = double(got[i]) - double(ref[i]);
    num += d * d;
    den += double(ref[i]) * double(ref[i]);
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-300);
}
inline double max_rel(const std::vector<float>& got, const std::vector<float>& ref) {
  double md = 0, mr = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = std::abs(double(got[i]) - double(ref[i]));
    md = std::isnan(d) || std::isnan(md) ? NAN : std::max(md, d);
    mr = std::max(mr, std::abs(double(ref[i])));
  }
  return md / std::max(mr, 1e-300);
}
// Prints both measures and returns the larger (NaN if any element is NaN).
inline double report(const char* what, const std::vector<float>& got, const std::vector<float>& ref, double tol) {
  const double a = rel_l2(got, ref), b = max_rel(got, ref);
  std::printf("  %-36s rel_l2 %.2e  max_rel %.2e  (tol %.0e)\n", what, a, b, tol);
  return std::isnan(a) || std::isnan(b) ? NAN : std::max(a, b);
}

// Device storage for tests: one arena per test case, values uploaded as T (float or bf16).
struct DeviceData {
  Context& ctx;
  DeviceArena arena;
  explicit DeviceData(Context& c, size_t bytes = size_t(64) << 20) : ctx(c), arena(bytes, "test") {}

  template <class T> T* upload(const std::vector<float>& v) {
    T* p = arena.alloc<T>(int64_t(v.size()), "test upload");
    if constexpr (std::is_same_v<T, float>) {
      to_device(ctx, p, v.data(), int64_t(v.size()));
    } else {
      const auto b = to_bf16_host(v);
      to_device(ctx, p, b.data(), int64_t(b.size()));
    }
    ctx.sync();  // the host vector may go away
    return p;
  }
  template <class T> T* alloc_poisoned(int64_t n) {
    T* p = arena.alloc<T>(n, "test output");
    poison(p, n);
    return p;
  }
  template <class T> void poison(T* p, int64_t n) {
    CUDA_CHECK(cudaMemsetAsync(p, 0xff, size_t(n) * sizeof(T), ctx.stream));  // NaN in fp32 and bf16
  }
  template <class T> std::vector<float> download(const T* p, int64_t n) {
    std::vector<T> h(n);
    to_host(ctx, h.data(), p, n);
    if constexpr (std::is_same_v<T, float>) return h;
    else return to_f32_host(h);
  }
};

}  // namespace hysim::cuda::test

// Skip (exit 0) without a GPU, so that `ctest -L gpu` is harmless on CPU-only machines.
int main(int argc, char** argv) {
  const int n = hysim::cuda::device_count();
  if (n == 0) {
    std::printf("SKIP: no CUDA device available (cudaGetDeviceCount failed or returned 0); GPU tests not run\n");
    return 0;
  }
  std::printf("device: %s\n", hysim::cuda::device_summary(0).c_str());
  doctest::Context ctx(argc, argv);
  return ctx.run();
}
