// AdamW on the GPU (core/cuda/adamw.cu) vs hysim::AdamW<float> (core/optimizer.cpp) on the
// same groups, parameters and gradients, over several steps with and without clipping.
//
// Tolerances: the same fp32 formulas per element; nvcc may contract a multiply-add into an
// FMA where the CPU rounds twice, so values may differ by a few ulps per step: 1e-6 (rel_l2
// and max_rel) on master weights, m and v after 4 steps (measured on an H200, 2026-11-23:
// 0, bit-identical). The gradient norm is a double sum in
// another order: 1e-12 relative. The bf16 copy must equal the rounding of the GPU's own
// master weights bit for bit.
// ZeRO-1 shards: AdamWs over [0, S) and [S, n) whose squared norms are summed (as the
// ranks' sum would) give the whole optimizer's master, m and v bit for bit (the same
// per-element formula) and its norm to 1e-12 (the chunks are cut at S: another order).
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
  gpu.set_master(ctx, p_cpu.data());
  float* master = gpu.master();
  bf16* params = dd.alloc_poisoned<bf16>(n);
  float* grad = dd.alloc_poisoned<float>(n);

  const double lrs[4] = {1e-3, 2e-3, 5e-4, 1e-3}, max_norms[4] = {10.0, 1e9, 0.0, 50.0};
  for (int s = 0; s < 4; ++s) {
    std::vector<float> g = random_floats(n, 10 + s, 0.3);
    for (int64_t i = 51137; i < 51140; ++i) g[i] *= 100.f;  // a hot group
    to_device(ctx, grad, g.data(), n);
    const double norm_cpu = cpu.update(p_cpu.data(), g.data(), lrs[s], max_norms[s]);
    const double norm_gpu = gpu.update(ctx, params, grad, lrs[s], max_norms[s]);
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
  const double nn = gpu.update(ctx, params, grad, 1e-3, 1.0);
  CHECK(!std::isfinite(nn));
  CHECK(gpu.step_count() == 4);
  CHECK(dd.download(master, n) == master_h);
}

TEST_CASE("AdamW CUDA: two ZeRO-1 shards together equal the whole optimizer") {
  std::vector<hysim::ParamGroup> groups = {{"w1", 0, 1000, true, {}},
                                           {"norm1", 1000, 37, false, {}},
                                           {"w2", 1137, 50000, true, {}},
                                           {"w3", 51240, 16384, true, {}}};
  hysim::AdamWConfig cfg;
  cfg.weight_decay = 0.1;
  const int64_t n = 51240 + 16384, S = 20000;  // the cut falls inside w2
  const std::vector<float> p0 = random_floats(n, 3, 0.5);
  Context ctx(size_t(1) << 20);
  DeviceData dd(ctx);
  AdamW whole(ctx, groups, cfg), lo(ctx, groups, cfg, 0, S), hi(ctx, groups, cfg, S, n);
  CHECK(lo.shard_size() == S);
  CHECK(hi.shard_lo() == S);
  CHECK(hi.shard_size() == n - S);
  for (AdamW* a : {&whole, &lo, &hi}) a->set_master(ctx, p0.data());
  bf16* params_whole = dd.alloc_poisoned<bf16>(n);
  bf16* params_shards = dd.alloc_poisoned<bf16>(n);
  float* grad = dd.alloc_poisoned<float>(n);
  for (int s = 0; s < 3; ++s) {
    const std::vector<float> g = random_floats(n, 20 + s, 0.3);
    to_device(ctx, grad, g.data(), n);
    const double norm = whole.update(ctx, params_whole, grad, 1e-3, 5.0);
    // The ranks' sum of squares, as NcclComm::sum would give it.
    const double sq = lo.grad_sq_sum(ctx, grad) + hi.grad_sq_sum(ctx, grad);
    auto ranks = [&](double) { return sq; };
    const double n_lo = lo.update(ctx, params_shards, grad, 1e-3, 5.0, ranks);
    const double n_hi = hi.update(ctx, params_shards, grad, 1e-3, 5.0, ranks);
    CHECK(n_lo == n_hi);
    CHECK(std::abs(n_lo - norm) <= 1e-12 * norm);
  }
  std::vector<float> joined = dd.download(lo.master(), S), tail = dd.download(hi.master(), n - S);
  joined.insert(joined.end(), tail.begin(), tail.end());
  const std::vector<float> want = dd.download(whole.master(), n);
  int64_t gaps = 0;  // 51137 .. 51240 belongs to no group: never updated, equal as well
  for (int64_t i = 0; i < n; ++i) gaps += joined[size_t(i)] != want[size_t(i)];
  CHECK(gaps == 0);
  std::vector<float> m = dd.download(lo.m(), S), m_tail = dd.download(hi.m(), n - S);
  m.insert(m.end(), m_tail.begin(), m_tail.end());
  CHECK(m == dd.download(whole.m(), n));
  std::vector<bf16> pw(n), ps(n);
  to_host(ctx, pw.data(), params_whole, n);
  to_host(ctx, ps.data(), params_shards, n);
  CHECK(std::memcmp(pw.data(), ps.data(), size_t(n) * sizeof(bf16)) == 0);
  CHECK_THROWS_WITH_AS(AdamW(ctx, groups, cfg, 2, n), doctest::Contains("multiple of 4"), std::invalid_argument);
  // A rank whose shard lies in the padding past the parameters (a small model over many
  // ranks) owns nothing: no chunks, a zero norm, a step that changes nothing.
  AdamW past(ctx, groups, cfg, n + 64, n + 128);
  CHECK(past.shard_size() == 0);
  CHECK(past.grad_sq_sum(ctx, grad) == 0.0);
  CHECK(past.update(ctx, params_shards, grad, 1e-3, 5.0, [](double s) { return s; }) == 0.0);
}
