// AdamW on the GPU (core/cuda/adamw.cu): one update (grad norm + clip + step, writing the
// bf16 copy) over 1.26e9 parameters (the 1B ladder model's size) in 250 groups, decay on
// four of five (the kernels run over a table of 2^14-element chunks whatever the groups). Timed with CUDA
// events (median after warm-up). Prints `RESULT <name> <ms>` for bench/gpu/adamw_peer.py.
//   bench_gpu_adamw
#include <algorithm>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "core/cuda/adamw.h"
#include "core/rng.h"

using namespace hysim::cuda;

int main() {
  if (device_count() == 0) {
    std::printf("SKIP: no CUDA device\n");
    return 0;
  }
  std::printf("device: %s\n", device_summary().c_str());
  Context ctx(size_t(16) << 20);
  const int64_t n = int64_t(1200) << 20;  // 1.26e9 parameters
  const int n_groups = 250;
  std::vector<hysim::ParamGroup> groups;
  for (int i = 0; i < n_groups; ++i) {
    const int64_t lo = n * i / n_groups, hi = n * (i + 1) / n_groups;
    std::string name = "p";
    name += std::to_string(i);
    groups.push_back({name, lo, hi - lo, i % 5 != 0, {}});
  }
  DeviceArena arena(size_t(n) * (4 + 2) + (size_t(1) << 20), "bench");
  float* grad = arena.alloc<float>(n);
  bf16* params = arena.alloc<bf16>(n);
  // Random-looking, finite gradient without a host upload of 5 GB: bits of a counter.
  std::vector<float> chunk(1 << 20);
  hysim::CounterRng r(3, 1);
  for (size_t i = 0; i < chunk.size(); ++i) chunk[i] = float(0.01 * r.normal(int64_t(i)));
  for (int64_t o = 0; o < n; o += int64_t(chunk.size())) to_device(ctx, grad + o, chunk.data(), int64_t(chunk.size()));
  AdamW opt(ctx, groups);
  for (int i = 0; i < 3; ++i) opt.update(ctx, params, grad, 1e-3, 1.0);  // warm-up
  std::vector<float> t;
  cudaEvent_t a, b;
  CUDA_CHECK(cudaEventCreate(&a));
  CUDA_CHECK(cudaEventCreate(&b));
  for (int i = 0; i < 10; ++i) {
    CUDA_CHECK(cudaEventRecord(a, ctx.stream));
    opt.update(ctx, params, grad, 1e-3, 1.0);
    CUDA_CHECK(cudaEventRecord(b, ctx.stream));
    CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms);
  }
  std::sort(t.begin(), t.end());
  const double ms = t[t.size() / 2];
  // Bytes: norm reads g (4); step reads g, m, v, master (16), writes m, v, master (12), bf16 (2).
  std::printf("adamw update, %lld params, %d groups: %.3f ms, %.0f GB/s (34 B/param)\n", (long long)n, n_groups, ms,
              34.0 * double(n) / ms / 1e6);
  std::printf("RESULT adamw_1p26B %.4f\n", ms);
  return 0;
}
