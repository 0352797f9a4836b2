#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#include <omp.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <vector>

#include "core/optimizer.h"
#include "core/schedule.h"
#include "tests/gradcheck.h"

using namespace hysim;
using namespace hysim::test;

namespace {

template <class T> std::vector<T> to(const std::vector<double>& v) { return std::vector<T>(v.begin(), v.end()); }

// max |a - b| / max |b| (relative to the vector's scale, as in gradcheck.h).
double max_rel_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double d = 0, m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    d = std::max(d, std::abs(a[i] - b[i]));
    m = std::max(m, std::abs(b[i]));
  }
  return d / m;
}
// The values as T holds them, back in double: hand computations start from the same inputs.
template <class T> std::vector<double> rounded(const std::vector<double>& v) {
  std::vector<double> r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = double(T(v[i]));
  return r;
}

}  // namespace

TEST_CASE_TEMPLATE("adamw: two steps match a hand computation", T, float, double) {
  // Group "w" [0, 6) decays, group "b" [6, 9) does not; element 9 belongs to no group.
  const std::vector<ParamGroup> groups = {{"w", 0, 6, true, {2, 3}}, {"b", 6, 3, false, {}}};
  AdamWConfig cfg;
  cfg.beta1 = 0.9;
  cfg.beta2 = 0.95;
  cfg.eps = 1e-8;
  cfg.weight_decay = 0.1;
  const double lr1 = 1e-2, lr2 = 5e-3;
  const std::vector<double> p0 = rounded<T>(random_vec(10, 1)), g1 = rounded<T>(random_vec(10, 2)),
                            g2 = rounded<T>(random_vec(10, 3));

  AdamW<T> opt(groups, cfg);
  CHECK(opt.size() == 9);
  std::vector<T> p = to<T>(p0), g = to<T>(g1);
  opt.step(p.data(), g.data(), lr1);
  CHECK(opt.step_count() == 1);

  // Step 1 from m = v = 0: bias correction makes m_hat = g, v_hat = g^2, so
  // p1 = p0 (1 - lr wd [decayed groups]) - lr g / (|g| + eps).
  std::vector<double> expect1(10), m(10), v(10);
  for (int i = 0; i < 10; ++i) {
    const double decay = i < 6 ? lr1 * 0.1 : 0.0;
    expect1[i] = i < 9 ? p0[i] * (1 - decay) - lr1 * g1[i] / (std::abs(g1[i]) + 1e-8) : p0[i];
    m[i] = 0.1 * g1[i];
    v[i] = 0.05 * g1[i] * g1[i];
  }
  const double tol = std::is_same_v<T, float> ? 1e-6 : 1e-14;
  const double err1 = max_rel_diff(std::vector<double>(p.begin(), p.end()), expect1);
  std::printf("  adamw<%s> step 1 max rel err %.2e\n", std::is_same_v<T, float> ? "float" : "double", err1);
  CHECK(err1 < tol);
  CHECK(p[9] == T(p0[9]));  // not in any group: untouched

  // Step 2: the general formula with bias corrections 1 - beta^2.
  g = to<T>(g2);
  opt.step(p.data(), g.data(), lr2);
  CHECK(opt.step_count() == 2);
  std::vector<double> expect2(10);
  for (int i = 0; i < 10; ++i) {
    if (i == 9) { expect2[i] = p0[i]; continue; }
    m[i] = 0.9 * m[i] + 0.1 * g2[i];
    v[i] = 0.95 * v[i] + 0.05 * g2[i] * g2[i];
    const double m_hat = m[i] / (1 - 0.9 * 0.9), v_hat = v[i] / (1 - 0.95 * 0.95);
    const double decay = i < 6 ? lr2 * 0.1 : 0.0;
    expect2[i] = expect1[i] * (1 - decay) - lr2 * m_hat / (std::sqrt(v_hat) + 1e-8);
  }
  const double err2 = max_rel_diff(std::vector<double>(p.begin(), p.end()), expect2);
  std::printf("  adamw<%s> step 2 max rel err %.2e\n", std::is_same_v<T, float> ? "float" : "double", err2);
  CHECK(err2 < tol);
  for (int i = 0; i < 9; ++i) {
    CHECK(std::abs(opt.m()[i] - m[i]) <= tol * std::abs(m[i]));
    CHECK(std::abs(opt.v()[i] - v[i]) <= tol * std::abs(v[i]));
  }
}

TEST_CASE_TEMPLATE("adamw: weight decay only on flagged groups", T, float, double) {
  const std::vector<ParamGroup> groups = {{"decayed", 0, 4, true, {}}, {"norm", 4, 4, false, {}}};
  AdamWConfig cfg;
  cfg.weight_decay = 0.5;
  AdamW<T> opt(groups, cfg);
  const std::vector<double> p0 = random_vec(8, 4);
  std::vector<T> p = to<T>(p0), g(8, T(0));  // zero gradient: the Adam term is exactly 0
  opt.step(p.data(), g.data(), 0.1);
  const double eps = std::numeric_limits<T>::epsilon();
  for (int i = 0; i < 4; ++i) CHECK(std::abs(double(p[i]) - 0.95 * double(T(p0[i]))) <= 2 * eps * std::abs(p0[i]));
  for (int i = 4; i < 8; ++i) CHECK(p[i] == T(p0[i]));
}

TEST_CASE_TEMPLATE("clip_grad_norm: returns the pre-clip norm and scales the norm to max_norm", T, float, double) {
  const int64_t n = 100000;  // several blocks of the blocked sum
  const std::vector<double> g0 = random_vec(n, 5);
  double ref = 0;
  for (double x : g0) ref += double(T(x)) * double(T(x));
  ref = std::sqrt(ref);
  std::vector<T> g = to<T>(g0);
  const double tol = std::is_same_v<T, float> ? 1e-6 : 1e-13;
  CHECK(std::abs(grad_norm(g.data(), n) - ref) <= 1e-13 * ref);

  const double pre = clip_grad_norm(g.data(), n, ref / 3);
  CHECK(pre == grad_norm(to<T>(g0).data(), n));
  const double post = grad_norm(g.data(), n);
  std::printf("  clip<%s>: norm %.6f -> %.6f (target %.6f, rel err %.2e)\n", std::is_same_v<T, float> ? "float" : "double",
              pre, post, ref / 3, std::abs(post - ref / 3) / (ref / 3));
  CHECK(std::abs(post - ref / 3) <= tol * ref);
  for (int64_t i = 0; i < n; i += 997) CHECK(std::abs(double(g[i]) - g0[i] / 3) <= tol * std::abs(g0[i]) + 1e-30);

  // Below the threshold, or max_norm 0 (off): bit-identical gradients.
  std::vector<T> h = to<T>(g0);
  CHECK(clip_grad_norm(h.data(), n, 2 * ref) == pre);
  CHECK(clip_grad_norm(h.data(), n, 0.0) == pre);
  CHECK(h == to<T>(g0));

  // The norm does not depend on the number of threads.
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  const double one = grad_norm(h.data(), n);
  omp_set_num_threads(3);
  const double three = grad_norm(h.data(), n);
  omp_set_num_threads(threads);
  CHECK(one == three);
}

TEST_CASE_TEMPLATE("adamw: a non-finite gradient norm is reported and nothing changes", T, float, double) {
  AdamW<T> opt({{"w", 0, 5, true, {}}}, {});
  std::vector<T> p = to<T>(random_vec(5, 6)), g = to<T>(random_vec(5, 7));
  CHECK(std::isfinite(opt.update(p.data(), g.data(), 1e-2, 1.0)));
  CHECK(opt.step_count() == 1);
  const std::vector<T> p1 = p, m1 = opt.m(), v1 = opt.v();
  for (T bad : {std::numeric_limits<T>::quiet_NaN(), std::numeric_limits<T>::infinity()}) {
    g = to<T>(random_vec(5, 8));
    g[2] = bad;
    const std::vector<T> g_before = g;
    const double norm = opt.update(p.data(), g.data(), 1e-2, 1.0);
    CHECK(!std::isfinite(norm));
    CHECK(std::isnan(norm) == std::isnan(bad));
    CHECK(opt.step_count() == 1);
    CHECK(p == p1);
    CHECK(opt.m() == m1);
    CHECK(opt.v() == v1);
    for (int i = 0; i < 5; ++i) CHECK((g[i] == g_before[i] || (std::isnan(g[i]) && std::isnan(g_before[i]))));
  }
}

TEST_CASE_TEMPLATE("adamw: converges on an ill-conditioned quadratic", T, float, double) {
  // f(p) = 1/2 sum a_i (p_i - c_i)^2, curvatures a_i from 0.01 to 100.
  const int64_t n = 32, steps = 3000;
  std::vector<double> a(n), c = random_vec(n, 9);
  for (int64_t i = 0; i < n; ++i) a[i] = std::pow(10.0, -2 + 4 * double(i) / double(n - 1));
  auto loss = [&](const std::vector<T>& p) {
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s += 0.5 * a[i] * (double(p[i]) - c[i]) * (double(p[i]) - c[i]);
    return s;
  };
  AdamWConfig cfg;
  cfg.weight_decay = 0;
  AdamW<T> opt({{"p", 0, n, false, {}}}, cfg);
  ScheduleConfig sched;
  sched.lr = 0.1;
  sched.min_lr_ratio = 1e-3;
  sched.warmup_steps = 10;
  sched.total_steps = steps;
  std::vector<T> p(n, T(0)), g(n);
  const double loss0 = loss(p);
  for (int64_t s = 0; s < steps; ++s) {
    for (int64_t i = 0; i < n; ++i) g[i] = T(a[i] * (double(p[i]) - c[i]));
    opt.update(p.data(), g.data(), lr_cosine(sched, s), 1.0);
  }
  double max_err = 0;
  for (int64_t i = 0; i < n; ++i) max_err = std::max(max_err, std::abs(double(p[i]) - c[i]));
  std::printf("  quadratic<%s>: loss %.3e -> %.3e, max |p - c| %.2e\n", std::is_same_v<T, float> ? "float" : "double",
              loss0, loss(p), max_err);
  CHECK(loss(p) < 1e-8 * loss0);
  CHECK(max_err < 1e-3);
}

TEST_CASE("adamw: groups from a ParamStore; state export and reload resume exactly") {
  ParamStore<float> store;
  struct P {
    float *w = nullptr, *g = nullptr;
  } values, grads;
  store.build(values, grads, [](P& p, auto&& v) {
    v(p.w, ParamSpec{"layer.w", {3, 4}, Init::normal(0.5), true});
    v(p.g, ParamSpec{"layer.gain", {4}, Init::ones(), false});
  });
  store.init(1);
  const std::vector<ParamGroup> groups = param_groups(store);
  REQUIRE(groups.size() == 2);
  CHECK(groups[0].name == "layer.w");
  CHECK(groups[0].offset == 0);
  CHECK(groups[0].numel == 12);
  CHECK(groups[0].weight_decay);
  CHECK(groups[1].name == "layer.gain");
  CHECK(groups[1].offset == 12);
  CHECK(!groups[1].weight_decay);

  AdamW<float> a(groups);
  std::vector<float> pa = store.value;
  for (int s = 0; s < 3; ++s) {
    std::vector<float> g = to<float>(random_vec(16, 10 + s));
    a.update(pa.data(), g.data(), 1e-2, 1.0);
  }
  const std::vector<NamedTensor> state = a.state_tensors();
  REQUIRE(state.size() == 4);
  CHECK(state[0].name == "adam_m/layer.w");
  CHECK(state[0].shape == Shape{3, 4});
  CHECK(state[3].name == "adam_v/layer.gain");

  AdamW<float> b(groups);
  b.load_state_tensors(state);
  b.set_step_count(a.step_count());
  std::vector<float> pb = pa, g = to<float>(random_vec(16, 20)), g2 = g;
  a.update(pa.data(), g.data(), 1e-2, 1.0);
  b.update(pb.data(), g2.data(), 1e-2, 1.0);
  CHECK(pa == pb);

  std::vector<NamedTensor> partial(state.begin(), state.begin() + 3);
  CHECK_THROWS_WITH_AS(b.load_state_tensors(partial), doctest::Contains("adam_v/layer.gain"), std::runtime_error);
}

TEST_CASE("adamw: invalid groups are rejected") {
  CHECK_THROWS_AS(AdamW<float>({{"a", 0, 4, true, {}}, {"b", 3, 4, true, {}}}), std::invalid_argument);
  CHECK_THROWS_AS(AdamW<float>({{"a", 0, 4, true, {}}, {"a", 4, 4, true, {}}}), std::invalid_argument);
  CHECK_THROWS_AS(AdamW<float>({{"a", 0, 4, true, {3}}}), std::invalid_argument);
  CHECK_NOTHROW(AdamW<float>({{"a", 4, 4, true, {}}, {"b", 0, 4, true, {2, 2}}}));
}
