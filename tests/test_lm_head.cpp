#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "layers/lm_head.h"
#include "tests/gradcheck.h"

using namespace hysim;
using namespace hysim::test;

namespace {

struct Problem {
  int64_t N, D, V;
  std::vector<double> x, W;
  std::vector<int32_t> targets;
  std::vector<float> mask;
};

// Random problem; mask has zeros (with invalid targets -100 there) and fractional weights.
Problem make_problem(int64_t N, int64_t D, int64_t V, uint64_t seed, double w_std = 0.7) {
  Problem p{N, D, V, random_vec(N * D, seed), random_vec(V * D, seed + 1, w_std), {}, {}};
  CounterRng r(seed, 2);
  for (int64_t n = 0; n < N; ++n) {
    const int64_t k = n % 4;
    p.mask.push_back(k == 1 ? 0.f : k == 2 ? 0.5f : k == 3 ? 2.f : 1.f);
    p.targets.push_back(p.mask.back() == 0 ? -100 : int32_t(r.below(n, V)));
  }
  return p;
}

std::vector<double> naive_logits(const Problem& p, int64_t n) {
  std::vector<double> l(p.V);
  for (int64_t v = 0; v < p.V; ++v)
    for (int64_t d = 0; d < p.D; ++d) l[v] += p.W[v * p.D + d] * p.x[n * p.D + d];
  return l;
}

// Plain log-softmax in double, row by row.
LmHeadStats naive(const Problem& p, double z_loss) {
  LmHeadStats s;
  double ce = 0, z = 0;
  for (int64_t n = 0; n < p.N; ++n) {
    const double m = p.mask[n];
    if (m == 0) continue;
    const std::vector<double> l = naive_logits(p, n);
    const int64_t am = std::max_element(l.begin(), l.end()) - l.begin();
    const double mx = l[am];
    double se = 0;
    for (double lv : l) se += std::exp(lv - mx);
    const double lse = mx + std::log(se);
    const double logp_target = l[p.targets[n]] - lse;
    ce += m * -logp_target;
    z += m * z_loss * lse * lse;
    s.weight_sum += m;
    s.n_correct += am == p.targets[n];
  }
  s.loss = ce / s.weight_sum;
  s.z_loss_term = z / s.weight_sum;
  return s;
}

template <class T> struct Run {
  LmHeadStats st;
  std::vector<T> dx, dW;
};

template <class T>
Run<T> run(const Problem& p, double z_loss, int64_t chunk, bool grad = true, const float* mask_override = nullptr,
           bool use_mask = true) {
  const std::vector<T> x(p.x.begin(), p.x.end()), W(p.W.begin(), p.W.end());
  Run<T> r;
  r.dx.assign(p.N * p.D, T(0));
  r.dW.assign(p.V * p.D, T(0));
  const float* mask = mask_override ? mask_override : use_mask ? p.mask.data() : nullptr;
  r.st = lm_head_loss(r.dx.data(), r.dW.data(), x.data(), W.data(), p.targets.data(), mask, p.N, p.D, p.V, z_loss,
                      chunk, grad);
  return r;
}

template <class A, class B> double rel_diff(const std::vector<A>& a, const std::vector<B>& b) {
  double md = 0, mx = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    md = std::max(md, std::abs(double(a[i]) - double(b[i])));
    mx = std::max(mx, std::abs(double(b[i])));
  }
  return md / mx;
}

}  // namespace

TEST_CASE("lm_head: loss, z-term, weight sum and accuracy equal a naive log-softmax") {
  Problem p = make_problem(13, 6, 17, 1, 1.5);
  // Make every third counted row's target its argmax, so that n_correct is exercised.
  for (int64_t n = 0; n < p.N; n += 3) {
    const std::vector<double> l = naive_logits(p, n);
    if (p.mask[n] != 0) p.targets[n] = int32_t(std::max_element(l.begin(), l.end()) - l.begin());
  }
  for (double z_loss : {0.0, 0.05}) {
    CAPTURE(z_loss);
    const LmHeadStats ref = naive(p, z_loss);
    const LmHeadStats s = run<double>(p, z_loss, 4).st;
    std::printf("  lm_head loss %.15f naive %.15f (z-term %.3e)\n", s.loss, ref.loss, s.z_loss_term);
    CHECK(s.loss == doctest::Approx(ref.loss).epsilon(1e-13));
    CHECK(s.z_loss_term == doctest::Approx(ref.z_loss_term).epsilon(1e-13));
    CHECK(s.weight_sum == ref.weight_sum);
    CHECK(s.n_correct == ref.n_correct);
    CHECK(ref.n_correct > 0);  // the accuracy count is exercised
    if (z_loss > 0) CHECK(s.z_loss_term > 1e-3);
  }
  // No mask = every row weight 1 (all targets must then be valid).
  Problem q = make_problem(9, 4, 11, 2);
  for (auto& t : q.targets) t = t < 0 ? 3 : t;
  Run<double> none = run<double>(q, 0.01, 4, true, nullptr, false);
  std::fill(q.mask.begin(), q.mask.end(), 1.f);
  Run<double> ones = run<double>(q, 0.01, 4);
  CHECK(none.st.weight_sum == 9);
  CHECK(none.st.loss == doctest::Approx(ones.st.loss).epsilon(1e-15));
  CHECK(rel_diff(none.dx, ones.dx) < 1e-14);
  CHECK(rel_diff(none.dW, ones.dW) < 1e-14);
}

TEST_CASE("lm_head: fp64 gradients of x and W with z-loss and a mask with zeros") {
  Problem p = make_problem(7, 5, 11, 3);
  const double z_loss = 0.1;
  Run<double> r = run<double>(p, z_loss, 3);  // 3 chunks, the last one short
  auto objective = [&] {
    const LmHeadStats s = lm_head_loss((double*)nullptr, (double*)nullptr, p.x.data(), p.W.data(), p.targets.data(),
                                       p.mask.data(), p.N, p.D, p.V, z_loss, 3, false);
    return s.loss + s.z_loss_term;
  };
  CHECK(grad_rel_error(p.x.data(), r.dx.data(), p.N * p.D, objective, "lm_head.x") < 1e-6);
  CHECK(grad_rel_error(p.W.data(), r.dW.data(), p.V * p.D, objective, "lm_head.W", 1000) < 1e-6);
  // Rows that don't count get exactly zero gradient.
  for (int64_t n = 0; n < p.N; ++n)
    if (p.mask[n] == 0)
      for (int64_t d = 0; d < p.D; ++d) CHECK(r.dx[n * p.D + d] == 0.0);
}

TEST_CASE("lm_head: several chunks (N not divisible) give the results of one chunk") {
  const Problem p = make_problem(10, 6, 23, 4);
  const Run<double> one = run<double>(p, 0.02, 0);
  CHECK(one.st.weight_sum > 0);
  for (int64_t chunk : {1, 3, 4, 10, 64}) {
    CAPTURE(chunk);
    const Run<double> r = run<double>(p, 0.02, chunk);
    CHECK(r.st.loss == doctest::Approx(one.st.loss).epsilon(1e-14));
    CHECK(r.st.z_loss_term == doctest::Approx(one.st.z_loss_term).epsilon(1e-14));
    CHECK(r.st.weight_sum == one.st.weight_sum);
    CHECK(r.st.n_correct == one.st.n_correct);
    CHECK(rel_diff(r.dx, one.dx) < 1e-14);
    CHECK(rel_diff(r.dW, one.dW) < 1e-14);
  }
}

TEST_CASE("lm_head: dx is overwritten, dW accumulates") {
  const Problem p = make_problem(6, 4, 9, 5);
  const std::vector<double> x = p.x, W = p.W;
  std::vector<double> dx(p.N * p.D, 7.0), dW(p.V * p.D, 0.0);
  const Run<double> ref = run<double>(p, 0.0, 2);
  for (int k = 0; k < 2; ++k)
    lm_head_loss(dx.data(), dW.data(), x.data(), W.data(), p.targets.data(), p.mask.data(), p.N, p.D, p.V, 0.0, 2,
                 true);
  CHECK(rel_diff(dx, ref.dx) < 1e-14);
  for (size_t i = 0; i < dW.size(); ++i) CHECK(dW[i] == doctest::Approx(2 * ref.dW[i]).epsilon(1e-14));
}

TEST_CASE("lm_head: float agrees with double") {
  const Problem p = make_problem(20, 16, 50, 6);
  const Run<double> d = run<double>(p, 1e-2, 7);
  const Run<float> f = run<float>(p, 1e-2, 7);
  const double el = std::abs(f.st.loss - d.st.loss) / d.st.loss;
  const double ez = std::abs(f.st.z_loss_term - d.st.z_loss_term) / d.st.z_loss_term;
  const double edx = rel_diff(f.dx, d.dx), edW = rel_diff(f.dW, d.dW);
  std::printf("  lm_head float vs double: loss %.1e  z %.1e  dx %.1e  dW %.1e\n", el, ez, edx, edW);
  CHECK(el < 1e-6);
  CHECK(ez < 1e-5);
  CHECK(edx < 1e-5);
  CHECK(edW < 1e-5);
  CHECK(f.st.n_correct == d.st.n_correct);
}

TEST_CASE("lm_head: identical results with 1 and 2 OpenMP threads") {
  const Problem p = make_problem(37, 16, 300, 7);
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const Run<float> a = run<float>(p, 1e-3, 8);
  omp_set_num_threads(2);
  const Run<float> b = run<float>(p, 1e-3, 8);
  omp_set_num_threads(saved);
  CHECK(a.st.loss == b.st.loss);
  CHECK(a.st.z_loss_term == b.st.z_loss_term);
  CHECK(a.st.n_correct == b.st.n_correct);
  CHECK(a.dx == b.dx);
  CHECK(a.dW == b.dW);
}

TEST_CASE("lm_head: eval mode gives the same stats and touches no gradient") {
  const Problem p = make_problem(11, 5, 13, 8);
  const Run<double> g = run<double>(p, 0.03, 4);
  const std::vector<double> x = p.x, W = p.W;
  std::vector<double> dx(p.N * p.D, 3.0), dW(p.V * p.D, 4.0);
  const LmHeadStats s = lm_head_loss(dx.data(), dW.data(), x.data(), W.data(), p.targets.data(), p.mask.data(), p.N,
                                     p.D, p.V, 0.03, 4, false);
  CHECK(s.loss == doctest::Approx(g.st.loss).epsilon(1e-14));
  CHECK(s.z_loss_term == doctest::Approx(g.st.z_loss_term).epsilon(1e-14));
  CHECK(s.n_correct == g.st.n_correct);
  CHECK(std::all_of(dx.begin(), dx.end(), [](double v) { return v == 3.0; }));
  CHECK(std::all_of(dW.begin(), dW.end(), [](double v) { return v == 4.0; }));
}

TEST_CASE("lm_head: all rows masked gives zero stats and zero dx") {
  const Problem p = make_problem(5, 4, 7, 9);
  const std::vector<float> zeros(p.N, 0.f);
  const Run<double> r = run<double>(p, 0.1, 2, true, zeros.data());
  CHECK(r.st.weight_sum == 0);
  CHECK(r.st.loss == 0);
  CHECK(r.st.n_correct == 0);
  CHECK(std::all_of(r.dx.begin(), r.dx.end(), [](double v) { return v == 0.0; }));
  CHECK(std::all_of(r.dW.begin(), r.dW.end(), [](double v) { return v == 0.0; }));
}

TEST_CASE("lm_head: a counted target outside the vocabulary throws") {
  Problem p = make_problem(6, 4, 7, 10);
  CHECK_NOTHROW(run<double>(p, 0.0, 4));  // -100 on masked rows is fine
  p.targets[0] = 7;                        // mask[0] == 1
  CHECK_THROWS_AS(run<double>(p, 0.0, 4), std::out_of_range);
  p.targets[0] = -1;
  CHECK_THROWS_AS(run<double>(p, 0.0, 4), std::out_of_range);
}

TEST_CASE("lm_head: logits equal x W^T") {
  const Problem p = make_problem(5, 6, 9, 11);
  std::vector<double> logits(p.N * p.V);
  lm_head_logits(logits.data(), p.x.data(), p.W.data(), p.N, p.D, p.V);
  double err = 0;
  for (int64_t n = 0; n < p.N; ++n)
    for (int64_t v = 0; v < p.V; ++v) {
      double s = 0;
      for (int64_t d = 0; d < p.D; ++d) s += p.x[n * p.D + d] * p.W[v * p.D + d];
      err = std::max(err, std::abs(s - logits[n * p.V + v]));
    }
  CHECK(err < 1e-13);
  CHECK(lm_head_flops(p.N, p.D, p.V) == 2 * 5 * 6 * 9);
}
