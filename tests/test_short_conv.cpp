#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "layers/short_conv.h"
#include "tests/gradcheck.h"

using namespace hysim;
using namespace hysim::test;

TEST_CASE("short_conv: fp64 gradients, with and without SiLU and bias") {
  const int64_t B = 2, T = 7, C = 5, K = 4;
  for (bool silu : {false, true})
    for (bool with_bias : {false, true}) {
      CAPTURE(silu);
      CAPTURE(with_bias);
      auto x = random_vec(B * T * C, 1), w = random_vec(C * K, 2), bias = random_vec(C, 3);
      auto R = random_vec(B * T * C, 4);
      std::vector<double> y(B * T * C), pre(B * T * C), dx(B * T * C), dw(C * K, 0.0), db(C, 0.0);
      const double* bp = with_bias ? bias.data() : nullptr;
      auto loss = [&] {
        short_conv_forward(y.data(), pre.data(), x.data(), w.data(), bp, B, T, C, K, silu);
        return dot(y.data(), R.data(), B * T * C);
      };
      loss();
      short_conv_backward(dx.data(), dw.data(), with_bias ? db.data() : nullptr, R.data(), x.data(), pre.data(),
                          w.data(), B, T, C, K, silu);
      CHECK(grad_rel_error(x.data(), dx.data(), B * T * C, loss, "short_conv.x") < 1e-6);
      CHECK(grad_rel_error(w.data(), dw.data(), C * K, loss, "short_conv.w") < 1e-6);
      if (with_bias) CHECK(grad_rel_error(bias.data(), db.data(), C, loss, "short_conv.bias") < 1e-6);
    }
}

TEST_CASE("short_conv: causal (output at t does not depend on inputs after t)") {
  const int64_t B = 1, T = 6, C = 3, K = 4;
  auto x = random_vec(B * T * C, 5), w = random_vec(C * K, 6);
  std::vector<double> y1(T * C), y2(T * C);
  short_conv_forward(y1.data(), (double*)nullptr, x.data(), w.data(), (const double*)nullptr, B, T, C, K, false);
  for (int64_t c = 0; c < C; ++c) x[4 * C + c] += 1.0;  // change t = 4
  short_conv_forward(y2.data(), (double*)nullptr, x.data(), w.data(), (const double*)nullptr, B, T, C, K, false);
  for (int64_t i = 0; i < 4 * C; ++i) CHECK(y1[i] == y2[i]);
  CHECK(y1[4 * C] != y2[4 * C]);
}
