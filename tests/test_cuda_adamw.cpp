// AdamW on the GPU (core/cuda/adamw.cu) vs hysim::AdamW<float> (core/optimizer.cpp) on the
// same groups, parameters and gradients, over several steps with and without clipping.
//
// Tolerances: the same fp32 formulas per element; nvcc may contract a multiply-add into an
// FMA where the CPU rounds twice, so values may differ by a few ulps per step: 1e-6 (rel_l2
// and max_rel) on master weights, m and v after 4 steps (measured on an H200, 2026-11-23:
// 0, bit-identical). The gradient norm is a double sum in
// another order: 1e-12 relative. The bf16 copy must equal the rounding of the GPU's own
// master weights bit for bit.
#include "tests/test_cuda_common.h"

#include <cmath>
#include <cstring>

#include "core/cuda/adamw.h"

using namespace hysim::cuda;
using namespace hysim::cuda::test;

TEST_CASE("AdamW CUDA matches the CPU AdamW over steps with clipping, decay groups and a gap") {
  // Groups of various sizes (one spans several 2^14-element chunks), decay on and off, and
  // two gaps of 100 elements that belong to no group.
  std::vector<hysim::ParamGroup> groups = {{"w1", 0, 1000, true, {}},      {"norm1", 1000, 37, false, {}},
                                           {"w2", 1137, 50000, true, {}},  {"bias", 51137, 3, false, {}},
                                           {"w3", 51240, 16384, true, {}}};
  hysim::AdamWConfig cfg;
  cfg.weight_decay = 0.1;
  const int64_t n = 51240 + 16384;
  hysim::AdamW<float> cpu(groups, cfg);
  std::vector<float> p_cpu = random_floats(n, 1, 0.5);

  Context ctx(size_t(1) << 20);
  DeviceData dd(ctx);
  AdamW gpu(ctx, groups, cfg);
  CHECK(gpu.size() == n);
  float* master = dd.upload<float>(p_cpu);
  bf16* params = dd.alloc_poisoned<bf16>(n);
  float* grad = dd.alloc_poisoned<float>(n);

  const double lrs[4] = {1e-3, 2e-3, 5e-4, 1e-3}, max_norms[4] = {10.0, 1e9, 0.0, 50.0};
  for (int s = 0; s < 4; ++s) {
    std::vector<float> g = random_floats(n, 10 + s, 0.3);
    for (int64_t i = 51137; i < 51140; ++i) g[i] *= 100.f;  // a hot group
    to_device(ctx, grad, g.data(), n);
    const double norm_cpu = cpu.update(p_cpu.data(), g.data(), lrs[s], max_norms[s]);
    const double norm_gpu = gpu.update(ctx, master, params, grad, lrs[s], max_norms[s]);
    std::printf("  step %d: norm cpu %.12g gpu %.12g (max_norm %g)\n", s + 1, norm_cpu, norm_gpu, max_norms[s]);
    CHECK(std::abs(norm_gpu - norm_cpu) <= 1e-12 * norm_cpu);
  }
  CHECK(gpu.step_count() == cpu.step_count());
  const auto master_h = dd.download(master, n);
  CHECK(report("master weights after 4 steps", master_h, p_cpu, 1e-6) < 1e-6);
  CHECK(report("m", dd.download(gpu.m(), n), cpu.m(), 1e-6) < 1e-6);
  CHECK(report("v", dd.download(gpu.v(), n), cpu.v(), 1e-6) < 1e-6);
  // The bf16 copy is the rounding of the master weights (the gaps' elements untouched: NaN).
  std::vector<bf16> pb(n);
  to_host(ctx, pb.data(), params, n);
  const auto want = to_bf16_host(master_h);
  std::vector<char> covered(n, 0);
  for (const auto& gr : groups) std::fill(covered.begin() + gr.offset, covered.begin() + gr.offset + gr.numel, 1);
  int64_t mismatch = 0, gap_written = 0;
  for (int64_t i = 0; i < n; ++i) {
    const bool in_gap = !covered[i];
    if (in_gap) gap_written += !std::isnan(__bfloat162float(pb[i]));
    else mismatch += std::memcmp(&pb[i], &want[i], sizeof(bf16)) != 0;
  }
  CHECK(mismatch == 0);
  CHECK(gap_written == 0);

  // A non-finite gradient: nothing changes, the step count stays.
  std::vector<float> bad = random_floats(n, 99, 0.3);
  bad[12345] = NAN;
  to_device(ctx, grad, bad.data(), n);
  const double nn = gpu.update(ctx, master, params, grad, 1e-3, 1.0);
  CHECK(!std::isfinite(nn));
  CHECK(gpu.step_count() == 4);
  CHECK(dd.download(master, n) == master_h);
}
