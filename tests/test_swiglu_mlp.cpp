#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "layers/swiglu_mlp.h"
#include "tests/gradcheck.h"

using namespace hysim;
using namespace hysim::test;

namespace {

// Parameters and activations of one layer, laid out by its own visit functions.
template <class T> struct Layer {
  SwiGLUConfig c;
  ParamStore<T> store;
  SwiGLUParams<T> p, g;
  ActStore<T> act_store;
  SwiGLUActs<T> a;
  Layer(const SwiGLUConfig& cfg, int64_t B, int64_t Tn) : c(cfg) {
    store.build(p, g, [&](SwiGLUParams<T>& pp, auto&& v) { visit_params(c, pp, v); });
    act_store.build(a, [&](SwiGLUActs<T>& aa, auto&& v) { visit_acts(c, B, Tn, aa, v); });
  }
};

SwiGLUConfig tiny() {
  SwiGLUConfig c;
  c.d_model = 6;
  c.d_hidden = 10;
  return c;
}

}  // namespace

TEST_CASE("swiglu: parameter names and shapes follow HF") {
  Layer<double> L(tiny(), 1, 1);
  REQUIRE(L.store.specs.size() == 3);
  CHECK(L.store.specs[0].name == "gate_proj");
  CHECK(L.store.specs[0].shape == Shape{10, 6});
  CHECK(L.store.specs[1].name == "up_proj");
  CHECK(L.store.specs[1].shape == Shape{10, 6});
  CHECK(L.store.specs[2].name == "down_proj");
  CHECK(L.store.specs[2].shape == Shape{6, 10});
  CHECK(swiglu_flops(tiny(), 2, 3) == 6 * (6 * 6 * 10) + 5 * 6 * 10);
}

TEST_CASE("swiglu: forward equals the naive formula") {
  const int64_t B = 2, T = 3;
  Layer<double> L(tiny(), B, T);
  const int64_t N = B * T, D = 6, F = 10;
  fill_normal(L.store.value.data(), L.store.size(), 1, 0.5);
  auto x = random_vec(N * D, 2);
  std::vector<double> y(N * D);
  swiglu_forward(L.c, L.p, L.a, y.data(), x.data(), B, T);
  double err = 0;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < D; ++o) {
      double s = 0;
      for (int64_t f = 0; f < F; ++f) {
        double g = 0, u = 0;
        for (int64_t i = 0; i < D; ++i) {
          g += L.p.gate_proj[f * D + i] * x[n * D + i];
          u += L.p.up_proj[f * D + i] * x[n * D + i];
        }
        s += L.p.down_proj[o * F + f] * (g / (1 + std::exp(-g))) * u;
      }
      err = std::max(err, std::abs(s - y[n * D + o]));
    }
  CHECK(err < 1e-13);
}

TEST_CASE("swiglu: fp64 gradients of x and all three weights") {
  const int64_t B = 2, T = 3;
  Layer<double> L(tiny(), B, T);
  const int64_t N = B * T, D = 6;
  // std 0.7: pre-activations of order 1, where silu is far from linear.
  fill_normal(L.store.value.data(), L.store.size(), 3, 0.7);
  auto x = random_vec(N * D, 4), R = random_vec(N * D, 5);
  std::vector<double> y(N * D), dx(N * D);
  auto loss = [&] {
    swiglu_forward(L.c, L.p, L.a, y.data(), x.data(), B, T);
    return dot(y.data(), R.data(), N * D);
  };
  loss();
  L.store.zero_grad();
  swiglu_backward(L.c, L.p, L.g, L.a, dx.data(), R.data(), x.data(), B, T);
  CHECK(grad_rel_error(x.data(), dx.data(), N * D, loss, "swiglu.x") < 1e-6);
  CHECK(grad_rel_error(L.p.gate_proj, L.g.gate_proj, 60, loss, "swiglu.gate_proj") < 1e-6);
  CHECK(grad_rel_error(L.p.up_proj, L.g.up_proj, 60, loss, "swiglu.up_proj") < 1e-6);
  CHECK(grad_rel_error(L.p.down_proj, L.g.down_proj, 60, loss, "swiglu.down_proj") < 1e-6);

  // dx is overwritten, parameter grads accumulate.
  const std::vector<double> g1 = L.store.grad, dx1 = dx;
  loss();
  std::fill(dx.begin(), dx.end(), 1e9);
  swiglu_backward(L.c, L.p, L.g, L.a, dx.data(), R.data(), x.data(), B, T);
  CHECK(max_abs_diff(dx.data(), dx1.data(), N * D) < 1e-14);
  for (size_t i = 0; i < g1.size(); ++i) CHECK(L.store.grad[i] == doctest::Approx(2 * g1[i]).epsilon(1e-13));
}

TEST_CASE("swiglu: acts sized for a longer T are reused, stale contents don't matter") {
  const int64_t B = 2, Tmax = 5, T = 3;
  Layer<double> big(tiny(), B, Tmax), exact(tiny(), B, T);
  fill_normal(big.store.value.data(), big.store.size(), 6, 0.5);
  exact.store.value = big.store.value;
  std::fill(big.act_store.data.begin(), big.act_store.data.end(), std::numeric_limits<double>::quiet_NaN());
  const int64_t N = B * T, D = 6;
  auto x = random_vec(N * D, 7), R = random_vec(N * D, 8);
  std::vector<double> y1(N * D), y2(N * D), dx1(N * D), dx2(N * D);
  swiglu_forward(big.c, big.p, big.a, y1.data(), x.data(), B, T);
  swiglu_forward(exact.c, exact.p, exact.a, y2.data(), x.data(), B, T);
  swiglu_backward(big.c, big.p, big.g, big.a, dx1.data(), R.data(), x.data(), B, T);
  swiglu_backward(exact.c, exact.p, exact.g, exact.a, dx2.data(), R.data(), x.data(), B, T);
  // (Not bitwise: Eigen's small-product path rounds differently with buffer alignment.)
  auto finite = [](const std::vector<double>& v) {
    return std::all_of(v.begin(), v.end(), [](double e) { return std::isfinite(e); });
  };
  CHECK((finite(y1) && finite(dx1) && finite(big.store.grad)));
  CHECK(max_abs_diff(y1.data(), y2.data(), N * D) < 1e-14);
  CHECK(max_abs_diff(dx1.data(), dx2.data(), N * D) < 1e-14);
  CHECK(max_abs_diff(big.store.grad.data(), exact.store.grad.data(), big.store.size()) < 1e-14);
}

TEST_CASE("swiglu: float agrees with double; 1 and 2 threads give identical results") {
  SwiGLUConfig c;
  c.d_model = 24;
  c.d_hidden = 40;
  const int64_t B = 3, T = 7, N = B * T, D = c.d_model;
  Layer<double> Ld(c, B, T);
  fill_normal(Ld.store.value.data(), Ld.store.size(), 9, 0.3);
  auto x = random_vec(N * D, 10), R = random_vec(N * D, 11);
  std::vector<double> yd(N * D), dxd(N * D);
  Ld.store.zero_grad();
  swiglu_forward(Ld.c, Ld.p, Ld.a, yd.data(), x.data(), B, T);
  swiglu_backward(Ld.c, Ld.p, Ld.g, Ld.a, dxd.data(), R.data(), x.data(), B, T);

  const std::vector<float> xf(x.begin(), x.end()), Rf(R.begin(), R.end());
  auto run_float = [&](int threads, std::vector<float>& y, std::vector<float>& dx, std::vector<float>& grads) {
    Layer<float> L(c, B, T);
    std::copy(Ld.store.value.begin(), Ld.store.value.end(), L.store.value.begin());
    y.assign(N * D, 0.f);
    dx.assign(N * D, 0.f);
    const int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
    swiglu_forward(L.c, L.p, L.a, y.data(), xf.data(), B, T);
    swiglu_backward(L.c, L.p, L.g, L.a, dx.data(), Rf.data(), xf.data(), B, T);
    omp_set_num_threads(saved);
    grads = L.store.grad;
  };
  std::vector<float> y1, dx1, g1, y2, dx2, g2;
  run_float(1, y1, dx1, g1);
  run_float(2, y2, dx2, g2);
  CHECK(y1 == y2);
  CHECK(dx1 == dx2);
  CHECK(g1 == g2);

  auto rel = [](const std::vector<float>& f, const std::vector<double>& d) {
    double md = 0, mx = 0;
    for (size_t i = 0; i < d.size(); ++i) {
      md = std::max(md, std::abs(double(f[i]) - d[i]));
      mx = std::max(mx, std::abs(d[i]));
    }
    return md / mx;
  };
  const double ey = rel(y1, yd), edx = rel(dx1, dxd), eg = rel(g1, Ld.store.grad);
  std::printf("  swiglu float vs double: y %.1e  dx %.1e  grads %.1e\n", ey, edx, eg);
  CHECK(ey < 1e-5);
  CHECK(edx < 1e-5);
  CHECK(eg < 1e-5);
}
