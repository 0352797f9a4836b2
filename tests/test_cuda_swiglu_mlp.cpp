// SwiGLU MLP on the GPU (layers/swiglu_mlp.cu) vs the CPU implementation
// (layers/swiglu_mlp.cpp, float) on the same inputs and weights.
//
// Tolerances:
//  * fp32 storage: fp32 GEMMs (no TF32) and fp32 elementwise; differences come from
//    summation order (K <= 172) and expf vs std::exp: a few ulps, below 1e-5.
//  * bf16 storage (CPU reference on the same bf16-rounded x, weights, dy): the GPU also
//    stores gate, up, h, dgate, dup and dx in bf16, so each output carries one to three
//    bf16 roundings (2^-9 = 1.95e-3 each) partly averaged by the projections: 1e-2
//    (rel_l2 and max_rel). Weight gradients are fp32 but come from bf16 h / dgate / dup.
#include "tests/test_cuda_common.h"

#include "core/cuda/layers.h"


using namespace hysim::cuda;
using namespace hysim::cuda::test;

template <class T> void check_swiglu(int64_t B, int64_t Tn, int64_t D, int64_t F, uint64_t seed, double tol) {
  const bool bf = std::is_same_v<T, bf16>;
  std::printf(" %s B=%lld T=%lld D=%lld F=%lld\n", bf ? "bf16" : "fp32", (long long)B, (long long)Tn, (long long)D,
              (long long)F);
  Context ctx(64 << 20);
  DeviceData dd(ctx);
  auto round = [&](std::vector<float> v) { return bf ? round_to_bf16(v) : v; };
  const int64_t N = B * Tn;
  hysim::SwiGLUConfig cfg;
  cfg.d_model = D;
  cfg.d_hidden = F;
  // Weights ~ N(0, 1/fan_in) so that gate is O(1): silu is then neither linear nor flat.
  const auto x = round(random_floats(N * D, seed)), dy = round(random_floats(N * D, seed + 1));
  const auto wg = round(random_floats(F * D, seed + 2, 1.0 / std::sqrt(double(D))));
  const auto wu = round(random_floats(F * D, seed + 3, 1.0 / std::sqrt(double(D))));
  const auto wd = round(random_floats(D * F, seed + 4, 1.0 / std::sqrt(double(F))));
  const auto g0 = random_floats(F * D, seed + 5, 0.1), u0 = random_floats(F * D, seed + 6, 0.1),
             d0 = random_floats(D * F, seed + 7, 0.1);

  // CPU reference (float).
  std::vector<float> wg_c = wg, wu_c = wu, wd_c = wd, gate(N * F), up(N * F), h(N * F), y_ref(N * D), dx_ref(N * D);
  std::vector<float> dg_ref = g0, du_ref = u0, dd_ref = d0;
  hysim::SwiGLUParams<float> p_c{wg_c.data(), wu_c.data(), wd_c.data()}, g_c{dg_ref.data(), du_ref.data(), dd_ref.data()};
  hysim::SwiGLUActs<float> a_c{gate.data(), up.data(), h.data()};
  hysim::swiglu_forward(cfg, p_c, a_c, y_ref.data(), x.data(), B, Tn);
  hysim::swiglu_backward(cfg, p_c, g_c, a_c, dx_ref.data(), dy.data(), x.data(), B, Tn);

  // GPU.
  hysim::SwiGLUParams<T> p{dd.upload<T>(wg), dd.upload<T>(wu), dd.upload<T>(wd)};
  hysim::SwiGLUParams<float> g{dd.upload<float>(g0), dd.upload<float>(u0), dd.upload<float>(d0)};
  hysim::SwiGLUActs<T> a{dd.alloc_poisoned<T>(N * F), dd.alloc_poisoned<T>(N * F), dd.alloc_poisoned<T>(N * F)};
  const T *x_d = dd.upload<T>(x), *dy_d = dd.upload<T>(dy);
  T* y = dd.alloc_poisoned<T>(N * D);
  T* dx = dd.alloc_poisoned<T>(N * D);
  hysim::cuda::swiglu_forward(ctx, cfg, p, a, y, x_d, B, Tn);
  hysim::cuda::swiglu_backward(ctx, cfg, p, g, a, dx, dy_d, x_d, B, Tn);
  CHECK(report("acts.gate", dd.download(a.gate, N * F), gate, tol) < tol);
  CHECK(report("acts.up", dd.download(a.up, N * F), up, tol) < tol);
  CHECK(report("acts.h", dd.download(a.h, N * F), h, tol) < tol);
  CHECK(report("y", dd.download(y, N * D), y_ref, tol) < tol);
  CHECK(report("dx", dd.download(dx, N * D), dx_ref, tol) < tol);
  CHECK(report("grad.gate_proj (accumulated)", dd.download(g.gate_proj, F * D), dg_ref, tol) < tol);
  CHECK(report("grad.up_proj (accumulated)", dd.download(g.up_proj, F * D), du_ref, tol) < tol);
  CHECK(report("grad.down_proj (accumulated)", dd.download(g.down_proj, D * F), dd_ref, tol) < tol);
  CHECK(ctx.scratch.used() == 0);
}

TEST_CASE("swiglu CUDA fp32 storage matches the CPU") {
  check_swiglu<float>(2, 19, 64, 172, 1, 1e-5);   // the config's defaults; odd N, F
  check_swiglu<float>(2, 64, 256, 688, 2, 1e-5);
}

TEST_CASE("swiglu CUDA bf16 storage matches the CPU within bf16 rounding") {
  check_swiglu<bf16>(2, 19, 64, 172, 3, 1e-2);
  check_swiglu<bf16>(2, 64, 256, 688, 4, 1e-2);
}
