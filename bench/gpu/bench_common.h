// Shared by the GPU benchmarks (bench/gpu/bench_*.cpp): the median time of some stream
// work measured with CUDA events, and deterministic device inputs.
#pragma once
#include <algorithm>
#include <cstdint>
#include <functional>
#include <type_traits>
#include <vector>

#include "core/cuda/layers.h"
#include "core/rng.h"

namespace hysim::cuda::bench {

// Median over `reps` timed calls of f (all its work on ctx.stream), after `warmup` calls.
inline double median_ms(Context& ctx, const std::function<void()>& f, int warmup = 3, int reps = 15) {
  for (int i = 0; i < warmup; ++i) f();
  cudaEvent_t a, b;
  CUDA_CHECK(cudaEventCreate(&a));
  CUDA_CHECK(cudaEventCreate(&b));
  std::vector<float> t;
  for (int i = 0; i < reps; ++i) {
    CUDA_CHECK(cudaEventRecord(a, ctx.stream));
    f();
    CUDA_CHECK(cudaEventRecord(b, ctx.stream));
    CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// A device copy of h as T (float or bf16), allocated from the arena.
template <class T> T* upload(Context& ctx, DeviceArena& arena, const std::vector<float>& h) {
  T* p = arena.alloc<T>(int64_t(h.size()), "bench data");
  if constexpr (std::is_same_v<T, float>) {
    to_device(ctx, p, h.data(), int64_t(h.size()));
  } else {
    const auto b = to_bf16_host(h);
    to_device(ctx, p, b.data(), int64_t(b.size()));
  }
  ctx.sync();
  return p;
}

// n bf16 values N(0, std^2), a pure function of seed.
inline bf16* random_bf16(Context& ctx, DeviceArena& arena, int64_t n, uint64_t seed, double std = 1.0) {
  std::vector<float> h(n);
  hysim::CounterRng r(seed, 3);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) h[i] = float(std * r.normal(i));
  return upload<bf16>(ctx, arena, h);
}

}  // namespace hysim::cuda::bench
