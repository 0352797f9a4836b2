// Mamba2 on the GPU (layers/mamba2.cu) vs the CPU (layers/mamba2.cpp, float) on the same
// inputs: the chunked SSD core forward and backward, and the full layer forward + backward.
//
// Tolerances (rel_l2 and max_rel, tests/test_cuda_common.h):
//  * core, fp32 storage: the same algorithm in fp32 with other summation orders (and the
//    state carried over all chunks): a few ulps; 1e-4 for y, chunk_states, dxbc, ddt.
//  * core, bf16 storage (CPU reference on the same bf16-rounded inputs and, for the
//    backward, the same bf16-rounded chunk_states): y, chunk_states, dxbc, ddt are stored
//    in bf16 (one rounding, 2^-9 = 1.95e-3 relative) on fp32 arithmetic: 4e-3.
//  * core dA (fp32 in both storages): a sum over all B T tokens of terms of both signs, so
//    its relative error is that of the terms times the cancellation: 1e-3.
//  * full layer (bf16 weights, inputs and activations; CPU in float on the same
//    bf16-representable weights and inputs): every stored activation (z, xbc, y, y_gated,
//    y_norm, the states, d_y, d_zxbcdt) is rounded to bf16 once and the errors compound
//    through the layer. How much one bf16 rounding moves the exact gradients was measured
//    with the CPU layer alone (float, the second layer shape below, x and all weights
//    perturbed by a uniform relative 2^-9): y 0.4-0.7%, dx up to 2.0%, conv1d_weight up
//    to 1.6%, other weights <= 1.0%, D 2-6% (grad D is a small difference of large terms:
//    with G = 1 and y dominated by D x, RMSNorm's scale invariance cancels most of it).
//    Tolerances: 3e-2 for y, dx and the weight gradients, 1e-1 for D.
#include "tests/test_cuda_common.h"

#include <cmath>
#include <map>
#include <string>

#include "core/cuda/layers.h"

using namespace hysim::cuda;
using namespace hysim::cuda::test;

namespace {

// x ~ N(0, 1); B, C ~ N(0, 1 / N) so that C B^T is O(1); dt = softplus(.) / 10 (as after
// dt_bias), A = -exp(U(0, 2)) per head: decays per token of about 0.01 to 0.5.
struct SsdInputs {
  std::vector<float> xbc, dt, A;
};
SsdInputs ssd_inputs(const hysim::Mamba2Config& c, int64_t B, int64_t Tn, uint64_t seed, bool bf) {
  const int64_t H = c.n_heads(), CD = c.conv_dim(), DI = c.d_inner(), N = c.d_state;
  auto round = [&](std::vector<float> x) { return bf ? round_to_bf16(x) : x; };
  auto xbc = random_floats(B * Tn * CD, seed);
  for (int64_t r = 0; r < B * Tn; ++r)
    for (int64_t i = DI; i < CD; ++i) xbc[r * CD + i] /= float(std::sqrt(double(N)));
  auto dt = random_floats(B * Tn * H, seed + 1), A = random_floats(H, seed + 2);
  for (auto& v : dt) v = float(0.1 * std::log1p(std::exp(double(v))));
  for (auto& v : A) v = float(-std::exp(1.0 + 0.5 * double(v)));
  return {round(xbc), round(dt), round(A)};
}

hysim::Mamba2Config ssd_config(int64_t d_model, int64_t expand, int64_t P, int64_t G, int64_t N, int64_t chunk) {
  hysim::Mamba2Config c;
  c.d_model = d_model, c.expand = expand, c.headdim = P, c.n_groups = G, c.d_state = N, c.chunk_size = chunk;
  c.validate();
  return c;
}

template <class T>
void check_ssd(int64_t B, int64_t Tn, int64_t d_model, int64_t expand, int64_t P, int64_t G, int64_t N, int64_t chunk,
               uint64_t seed) {
  const bool bf = std::is_same_v<T, bf16>;
  const double tol = bf ? 4e-3 : 1e-4;
  const auto c = ssd_config(d_model, expand, P, G, N, chunk);
  const int64_t H = c.n_heads(), DI = c.d_inner(), NC = c.n_chunks(Tn);
  std::printf(" %s B=%lld T=%lld H=%lld P=%lld G=%lld N=%lld chunk=%lld\n", bf ? "bf16" : "fp32", (long long)B,
              (long long)Tn, (long long)H, (long long)P, (long long)G, (long long)N, (long long)chunk);
  const auto [xbc, dt, A] = ssd_inputs(c, B, Tn, seed, bf);

  std::vector<float> y_ref(B * Tn * DI), cs_ref(B * H * NC * P * N);
  hysim::mamba2_chunk_forward(c, y_ref.data(), cs_ref.data(), xbc.data(), dt.data(), A.data(), B, Tn);

  Context ctx(size_t(1) << 20);
  DeviceData dd(ctx);
  const T *xbc_d = dd.upload<T>(xbc), *dt_d = dd.upload<T>(dt), *A_d = dd.upload<T>(A);
  T* y = dd.alloc_poisoned<T>(B * Tn * DI);
  T* cs = dd.alloc_poisoned<T>(int64_t(cs_ref.size()));
  mamba2_chunk_forward(ctx, c, y, cs, xbc_d, dt_d, A_d, B, Tn);
  CHECK(report("y", dd.download(y, B * Tn * DI), y_ref, tol) < tol);
  CHECK(report("chunk_states", dd.download(cs, int64_t(cs_ref.size())), cs_ref, tol) < tol);
}

// The core backward vs the CPU's mamba2_chunk_backward on the same xbc, dt, A, dy and
// chunk_states (the CPU forward's, rounded to T): dxbc, ddt, dA; then again for the same
// bits (deterministic) and no scratch left held. scratch_bytes small forces batch slices.
template <class T>
void check_ssd_backward(int64_t B, int64_t Tn, int64_t d_model, int64_t expand, int64_t P, int64_t G, int64_t N,
                        int64_t chunk, uint64_t seed, size_t scratch_bytes = size_t(64) << 20) {
  const bool bf = std::is_same_v<T, bf16>;
  const double tol = bf ? 4e-3 : 1e-4, tol_dA = 1e-3;
  const auto c = ssd_config(d_model, expand, P, G, N, chunk);
  const int64_t H = c.n_heads(), CD = c.conv_dim(), DI = c.d_inner(), NC = c.n_chunks(Tn);
  std::printf(" backward %s B=%lld T=%lld H=%lld P=%lld G=%lld N=%lld chunk=%lld scratch=%zu\n", bf ? "bf16" : "fp32",
              (long long)B, (long long)Tn, (long long)H, (long long)P, (long long)G, (long long)N, (long long)chunk,
              scratch_bytes);
  const auto [xbc, dt, A] = ssd_inputs(c, B, Tn, seed, bf);
  auto dy = random_floats(B * Tn * DI, seed + 3);
  std::vector<float> y_ref(B * Tn * DI), cs(B * H * NC * P * N);
  hysim::mamba2_chunk_forward(c, y_ref.data(), cs.data(), xbc.data(), dt.data(), A.data(), B, Tn);
  if (bf) cs = round_to_bf16(cs), dy = round_to_bf16(dy);
  std::vector<float> dxbc_ref(B * Tn * CD), ddt_ref(B * Tn * H), dA_ref(H);
  hysim::mamba2_chunk_backward(c, dxbc_ref.data(), ddt_ref.data(), dA_ref.data(), dy.data(), xbc.data(), dt.data(),
                               A.data(), cs.data(), B, Tn);

  Context ctx(scratch_bytes);
  DeviceData dd(ctx);
  const T *xbc_d = dd.upload<T>(xbc), *dt_d = dd.upload<T>(dt), *A_d = dd.upload<T>(A), *dy_d = dd.upload<T>(dy),
          *cs_d = dd.upload<T>(cs);
  T* dxbc = dd.alloc_poisoned<T>(B * Tn * CD);
  T* ddt = dd.alloc_poisoned<T>(B * Tn * H);
  float* dA = dd.alloc_poisoned<float>(H);
  mamba2_chunk_backward(ctx, c, dxbc, ddt, dA, dy_d, xbc_d, dt_d, A_d, cs_d, B, Tn);
  const auto dxbc1 = dd.download(dxbc, B * Tn * CD), ddt1 = dd.download(ddt, B * Tn * H), dA1 = dd.download(dA, H);
  CHECK(report("dxbc", dxbc1, dxbc_ref, tol) < tol);
  CHECK(report("ddt", ddt1, ddt_ref, tol) < tol);
  CHECK(report("dA", dA1, dA_ref, tol_dA) < tol_dA);
  dd.poison(dxbc, B * Tn * CD), dd.poison(ddt, B * Tn * H), dd.poison(dA, H);
  mamba2_chunk_backward(ctx, c, dxbc, ddt, dA, dy_d, xbc_d, dt_d, A_d, cs_d, B, Tn);
  CHECK(dd.download(dxbc, B * Tn * CD) == dxbc1);
  CHECK(dd.download(ddt, B * Tn * H) == ddt1);
  CHECK(dd.download(dA, H) == dA1);
  CHECK(ctx.scratch.used() == 0);
}

// The full layer vs the CPU layer in float on the same bf16-representable weights, x and
// dy: y, dx and every parameter gradient; a second backward doubles the gradients exactly
// (they accumulate, deterministically) and rewrites the same dx.
void check_mamba2_layer(int64_t B, int64_t Tn, int64_t d_model, int64_t expand, int64_t P, int64_t G, int64_t N,
                        int64_t chunk, uint64_t seed) {
  auto c = ssd_config(d_model, expand, P, G, N, chunk);
  const int64_t BT = B * Tn, D = c.d_model, DI = c.d_inner();
  std::printf(" layer B=%lld T=%lld D=%lld H=%lld P=%lld G=%lld N=%lld chunk=%lld\n", (long long)B, (long long)Tn,
              (long long)D, (long long)c.n_heads(), (long long)P, (long long)G, (long long)N, (long long)chunk);
  // Weights: projections ~ N(0, 1 / fan_in); conv ~ N(0, 0.5^2), bias ~ N(0, 0.2^2);
  // dt_bias ~ -2.5 + N(0, 0.5^2) (dt = softplus(dt_raw + dt_bias) of about 0.02 to 0.5);
  // A_log ~ 1 + N(0, 0.5^2); D, norm_w ~ 1 + N(0, 0.1^2).
  std::map<std::string, std::vector<float>> w, gw;
  hysim::Mamba2Params<float> p_c, g_c;
  uint64_t k = seed * 100;
  hysim::visit_params(c, p_c, [&](float*& ptr, const hysim::ParamSpec& s) {
    const std::string& n = s.name;
    const double std = n == "in_proj"         ? 1.0 / std::sqrt(double(D))
                       : n == "out_proj"      ? 1.0 / std::sqrt(double(DI))
                       : n == "conv1d_weight" ? 0.5
                       : n == "conv1d_bias"   ? 0.2
                       : n == "dt_bias" || n == "A_log" ? 0.5
                                                        : 0.1;
    const float offset = n == "dt_bias" ? -2.5f : n == "A_log" || n == "D" || n == "norm_w" ? 1.f : 0.f;
    auto v = random_floats(s.numel(), ++k, std);
    for (auto& x : v) x += offset;
    w[n] = round_to_bf16(v);
    ptr = w[n].data();
  });
  hysim::visit_params(c, g_c, [&](float*& ptr, const hysim::ParamSpec& s) {
    gw[s.name].assign(s.numel(), 0.f);
    ptr = gw[s.name].data();
  });
  const auto x = round_to_bf16(random_floats(BT * D, seed + 1)), dy = round_to_bf16(random_floats(BT * D, seed + 2));
  std::vector<std::vector<float>> store;
  hysim::Mamba2Acts<float> a_c;
  hysim::visit_acts(c, B, Tn, a_c, [&](float*& ptr, const char*, int64_t n) {
    store.emplace_back(std::max<int64_t>(n, 1));
    ptr = store.back().data();
  });
  std::vector<float> y_ref(BT * D), dx_ref(BT * D);
  hysim::mamba2_forward(c, p_c, a_c, y_ref.data(), x.data(), B, Tn);
  hysim::mamba2_backward(c, p_c, g_c, a_c, dx_ref.data(), dy.data(), x.data(), B, Tn);

  Context ctx(size_t(64) << 20);
  DeviceData dd(ctx);
  hysim::Mamba2Params<bf16> p;
  hysim::Mamba2Params<float> g;
  hysim::visit_params(c, p, [&](bf16*& ptr, const hysim::ParamSpec& s) { ptr = dd.upload<bf16>(w[s.name]); });
  hysim::visit_params(c, g, [&](float*& ptr, const hysim::ParamSpec& s) {
    ptr = dd.upload<float>(std::vector<float>(s.numel(), 0.f));
  });
  Mamba2ActsCuda a;
  visit_acts(c, B, Tn, a, [&](auto*& ptr, const char*, int64_t n) {
    ptr = dd.alloc_poisoned<std::remove_pointer_t<std::remove_reference_t<decltype(ptr)>>>(std::max<int64_t>(n, 1));
  });
  const bf16 *x_d = dd.upload<bf16>(x), *dy_d = dd.upload<bf16>(dy);
  bf16* y = dd.alloc_poisoned<bf16>(BT * D);
  bf16* dx = dd.alloc_poisoned<bf16>(BT * D);
  mamba2_forward(ctx, c, p, a, y, x_d, B, Tn);
  mamba2_backward(ctx, c, p, g, a, dx, dy_d, x_d, B, Tn);
  const double tol = 3e-2, tol_D = 1e-1;
  CHECK(report("layer y", dd.download(y, BT * D), y_ref, tol) < tol);
  const auto dx1 = dd.download(dx, BT * D);
  CHECK(report("layer dx", dx1, dx_ref, tol) < tol);
  std::map<std::string, std::vector<float>> g1;
  hysim::visit_params(c, g, [&](float*& ptr, const hysim::ParamSpec& s) {
    g1[s.name] = dd.download(ptr, s.numel());
    const double t = s.name == "D" ? tol_D : tol;
    CHECK(report(("grad " + s.name).c_str(), g1[s.name], gw[s.name], t) < t);
  });
  dd.poison(dx, BT * D);
  mamba2_backward(ctx, c, p, g, a, dx, dy_d, x_d, B, Tn);
  CHECK(dd.download(dx, BT * D) == dx1);
  hysim::visit_params(c, g, [&](float*& ptr, const hysim::ParamSpec& s) {
    auto twice = g1[s.name];
    for (auto& v : twice) v *= 2.f;
    CHECK_MESSAGE(dd.download(ptr, s.numel()) == twice, "grad ", s.name, " does not accumulate exactly");
  });
  CHECK(ctx.scratch.used() == 0);
  // Only the chunked core runs on the GPU.
  c.chunk_size = 0;
  CHECK_THROWS_AS(mamba2_forward(ctx, c, p, a, y, x_d, B, Tn), std::invalid_argument);
}

}  // namespace

TEST_CASE("mamba2 chunked SSD forward CUDA fp32 storage matches the CPU") {
  check_ssd<float>(2, 150, 64, 2, 32, 2, 16, 64, 1);   // 4 heads in 2 groups, last chunk short
  check_ssd<float>(1, 200, 128, 2, 64, 1, 128, 64, 2);  // headdim 64, d_state 128 (Mamba2's usual)
  check_ssd<float>(1, 40, 32, 2, 16, 1, 8, 16, 3);      // small chunks
}

TEST_CASE("mamba2 chunked SSD forward CUDA bf16 storage matches the CPU") {
  check_ssd<bf16>(2, 130, 64, 2, 32, 1, 32, 64, 4);
  check_ssd<bf16>(1, 200, 128, 2, 64, 2, 64, 64, 5);
  check_ssd<bf16>(1, 40, 32, 2, 16, 1, 8, 16, 6);  // tensor-core tiles ragged: chunk 16, d_state 8
}

TEST_CASE("mamba2 chunked SSD backward CUDA fp32 storage matches the CPU") {
  check_ssd_backward<float>(2, 150, 64, 2, 32, 2, 16, 64, 11);   // 4 heads in 2 groups, last chunk short
  check_ssd_backward<float>(1, 200, 128, 2, 64, 1, 128, 64, 12);  // Olmo-like heads: headdim 64, d_state 128, chunk 64
  check_ssd_backward<float>(1, 40, 32, 2, 16, 2, 8, 16, 13);      // small chunks, 2 groups of 2 heads
  check_ssd_backward<float>(3, 150, 64, 2, 32, 2, 16, 64, 14, 100000);  // scratch for one sequence: 3 slices
}

TEST_CASE("mamba2 chunked SSD backward CUDA bf16 storage matches the CPU") {
  check_ssd_backward<bf16>(2, 130, 64, 2, 32, 1, 32, 64, 15);
  check_ssd_backward<bf16>(1, 200, 128, 2, 64, 2, 64, 64, 16);
  check_ssd_backward<bf16>(2, 100, 128, 2, 64, 1, 128, 64, 17);
  check_ssd_backward<bf16>(1, 40, 32, 2, 16, 2, 8, 16, 18);  // ragged tensor-core tiles
}

TEST_CASE("mamba2 chunked SSD CUDA: refuses the recurrent mode and shapes whose chunk does not fit") {
  Context ctx(size_t(1) << 20);
  auto c = ssd_config(64, 2, 64, 1, 512, 64);  // d_state 512: the backward's chunk needs ~700 KB
  try {
    mamba2_chunk_backward<bf16>(ctx, c, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 1, 64);
    FAIL("no exception");
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()).find("shared memory") != std::string::npos);
  }
  c = ssd_config(64, 2, 16, 1, 16, 0);
  CHECK_THROWS_AS(mamba2_chunk_forward<float>(ctx, c, nullptr, nullptr, nullptr, nullptr, nullptr, 1, 8),
                  std::invalid_argument);
}

TEST_CASE("mamba2 layer CUDA (in_proj, conv, SSD, gate, group RMSNorm, out_proj) matches the CPU layer") {
  check_mamba2_layer(2, 75, 64, 2, 16, 2, 16, 32, 21);     // 8 heads in 2 groups, last chunk 11 tokens
  check_mamba2_layer(1, 130, 128, 2, 64, 1, 128, 64, 22);  // headdim 64, d_state 128, chunk 64
}
