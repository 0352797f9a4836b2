#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "layers/rmsnorm.h"
#include "tests/gradcheck.h"

using namespace hysim;
using namespace hysim::test;

TEST_CASE("rmsnorm: fp64 gradients of x and w") {
  const int64_t N = 5, C = 12;
  auto x = random_vec(N * C, 1), w = random_vec(C, 2), R = random_vec(N * C, 3);
  std::vector<double> y(N * C), rstd(N), dx(N * C), dw(C, 0.0);
  auto loss = [&] {
    rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), N, C, 1e-5);
    return dot(y.data(), R.data(), N * C);
  };
  loss();
  rmsnorm_backward(dx.data(), dw.data(), R.data(), x.data(), w.data(), rstd.data(), N, C);
  CHECK(grad_rel_error(x.data(), dx.data(), N * C, loss, "rmsnorm.x") < 1e-6);
  CHECK(grad_rel_error(w.data(), dw.data(), C, loss, "rmsnorm.w") < 1e-6);
}

TEST_CASE("rmsnorm: output has unit RMS when w = 1") {
  const int64_t N = 3, C = 64;
  auto x = random_vec(N * C, 4, 5.0);
  std::vector<double> w(C, 1.0), y(N * C), rstd(N);
  rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), N, C, 0.0);
  for (int64_t n = 0; n < N; ++n) {
    double ss = 0;
    for (int64_t c = 0; c < C; ++c) ss += y[n * C + c] * y[n * C + c];
    CHECK(ss / C == doctest::Approx(1.0).epsilon(1e-12));
  }
}
