#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#include <omp.h>

#include <stdexcept>
#include <string>

#include "layers/embedding.h"
#include "tests/gradcheck.h"

using namespace hysim;
using namespace hysim::test;

TEST_CASE("embedding: forward gathers rows of wte") {
  const int64_t V = 7, D = 5, N = 6;
  auto wte = random_vec(V * D, 1);
  const std::vector<int32_t> tok = {3, 0, 6, 3, 1, 3};
  std::vector<double> out(N * D, -1.0);
  embedding_forward(out.data(), tok.data(), wte.data(), N, D, V);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < D; ++c) CHECK(out[n * D + c] == wte[tok[n] * D + c]);
}

TEST_CASE("embedding: fp64 gradient of wte, repeated tokens accumulate") {
  const int64_t V = 9, D = 6, N = 11;
  auto wte = random_vec(V * D, 2), R = random_vec(N * D, 3);
  const std::vector<int32_t> tok = {4, 4, 0, 8, 2, 4, 8, 1, 0, 5, 4};  // 3, 6, 7 unused
  std::vector<double> out(N * D), dwte(V * D, 0.0);
  auto loss = [&] {
    embedding_forward(out.data(), tok.data(), wte.data(), N, D, V);
    return dot(out.data(), R.data(), N * D);
  };
  loss();
  embedding_backward(dwte.data(), R.data(), tok.data(), N, D);
  CHECK(grad_rel_error(wte.data(), dwte.data(), V * D, loss, "embedding.wte") < 1e-6);
  for (int32_t unused : {3, 6, 7})
    for (int64_t c = 0; c < D; ++c) CHECK(dwte[unused * D + c] == 0.0);
  // Accumulates: a second backward doubles the gradient.
  auto once = dwte;
  embedding_backward(dwte.data(), R.data(), tok.data(), N, D);
  for (int64_t i = 0; i < V * D; ++i) CHECK(dwte[i] == doctest::Approx(2 * once[i]).epsilon(1e-15));
}

TEST_CASE("embedding: out-of-range tokens throw, naming token and position") {
  const int64_t V = 5, D = 3;
  auto wte = random_vec(V * D, 4);
  std::vector<double> out(4 * D);
  for (int32_t bad : {5, -1, 1000}) {
    const std::vector<int32_t> tok = {0, 4, bad, 1};
    CAPTURE(bad);
    try {
      embedding_forward(out.data(), tok.data(), wte.data(), 4, D, V);
      FAIL("no exception for token " << bad);
    } catch (const std::out_of_range& e) {
      const std::string msg = e.what();
      CHECK(msg.find("token " + std::to_string(bad)) != std::string::npos);
      CHECK(msg.find("position 2") != std::string::npos);
    }
  }
  const std::vector<int32_t> ok = {0, 4, 2, 1};
  CHECK_NOTHROW(embedding_forward(out.data(), ok.data(), wte.data(), 4, D, V));
}

TEST_CASE("embedding: backward is the same with 1 and 2 threads (float, many collisions)") {
  const int64_t V = 13, D = 200, N = 500;  // D spans several column blocks
  std::vector<int32_t> tok(N);
  CounterRng r(5, 1);
  for (int64_t n = 0; n < N; ++n) tok[n] = int32_t(r.below(n, V));
  auto dout_d = random_vec(N * D, 6);
  std::vector<float> dout(dout_d.begin(), dout_d.end());
  std::vector<float> g1(V * D, 0.5f), g2(V * D, 0.5f);
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  embedding_backward(g1.data(), dout.data(), tok.data(), N, D);
  omp_set_num_threads(2);
  embedding_backward(g2.data(), dout.data(), tok.data(), N, D);
  omp_set_num_threads(saved);
  CHECK(g1 == g2);
  // And it is the plain serial sum (checked in double).
  std::vector<double> ref(V * D, 0.5);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < D; ++c) ref[tok[n] * D + c] += double(dout[n * D + c]);
  double err = 0;
  for (int64_t i = 0; i < V * D; ++i) err = std::max(err, std::abs(ref[i] - double(g1[i])));
  CHECK(err < 1e-4);
}
