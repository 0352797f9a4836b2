#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#include <omp.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "layers/gated_deltanet.h"
#include "tests/gradcheck.h"

using namespace hysim;
using namespace hysim::test;

namespace {

// The tiny grouped configuration of the gradient checks: H = 2 q/k heads, Hv = 4 value heads.
GdnConfig tiny_config(int64_t chunk, bool neg) {
  GdnConfig c;
  c.d_model = 8;
  c.n_heads = 2;
  c.n_v_heads = 4;
  c.d_head_k = 4;
  c.d_head_v = 6;
  c.conv_size = 4;
  c.chunk_size = chunk;
  c.allow_neg_eigval = neg;
  return c;
}

// One layer with its parameter/gradient store, activations and input/output buffers.
template <class T> struct GdnLayer {
  GdnConfig c;
  int64_t B, Tn;
  ParamStore<T> ps;
  GdnParams<T> p, g;
  ActStore<T> as;
  GdnActs<T> a;
  std::vector<T> x, y, dy, dx;
  GdnLayer(const GdnConfig& cfg, int64_t B_, int64_t T_, int64_t T_acts = 0) : c(cfg), B(B_), Tn(T_) {
    ps.build(p, g, [&](GdnParams<T>& pp, auto&& v) { visit_params(c, pp, v); });
    as.build(a, [&](GdnActs<T>& aa, auto&& v) { visit_acts(c, B, T_acts > 0 ? T_acts : Tn, aa, v); });
    const int64_t n = B * Tn * c.d_model;
    x.resize(n);
    y.resize(n);
    dy.resize(n);
    dx.resize(n);
  }
  void forward() { gdn_forward(c, p, a, y.data(), x.data(), B, Tn); }
  void backward() {
    ps.zero_grad();
    gdn_backward(c, p, g, a, dx.data(), dy.data(), x.data(), B, Tn);
  }
  int64_t n_x() const { return B * Tn * c.d_model; }
};

// O(1) random parameters (the default init_std = 0.02 would make every term tiny): projections
// N(0, 1/fan_in), conv N(0, 0.5^2), A_log and dt_bias so that alpha spreads over about (0.2, 0.9),
// o_norm around 1. Same values for every chunk size (the parameter layout does not depend on it).
void fill_params(GdnLayer<double>& L, uint64_t seed) {
  for (size_t i = 0; i < L.ps.specs.size(); ++i) {
    const ParamSpec& s = L.ps.specs[i];
    double* v = L.ps.value.data() + L.ps.offsets[i];
    const int64_t n = s.numel();
    fill_normal(v, n, seed * 100 + i, 1.0);
    double mul = 1, add = 0;
    if (s.name == "q_conv1d" || s.name == "k_conv1d" || s.name == "v_conv1d") mul = 0.5;
    else if (s.name == "A_log") mul = 0.3, add = -0.5;
    else if (s.name == "dt_bias") mul = 0.5;
    else if (s.name == "o_norm") mul = 0.3, add = 1.0;
    else mul = 1.0 / std::sqrt(double(s.shape.back()));
    for (int64_t j = 0; j < n; ++j) v[j] = add + mul * v[j];
  }
}

void fill_io(GdnLayer<double>& L, uint64_t seed) {
  fill_normal(L.x.data(), L.n_x(), seed);
  fill_normal(L.dy.data(), L.n_x(), seed + 1);
}

template <class T> void copy_values(GdnLayer<T>& dst, const GdnLayer<double>& src) {
  for (size_t i = 0; i < src.ps.value.size(); ++i) dst.ps.value[i] = T(src.ps.value[i]);
  for (int64_t i = 0; i < src.n_x(); ++i) dst.x[i] = T(src.x[i]), dst.dy[i] = T(src.dy[i]);
}

template <class T> double max_abs(const std::vector<T>& a) {
  double m = 0;
  for (T v : a) m = std::max(m, std::abs(double(v)));
  return m;
}
template <class T, class U> double max_diff(const std::vector<T>& a, const std::vector<U>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(double(a[i]) - double(b[i])));
  return m;
}

// Per-tensor max abs difference of the parameter gradients of two layers with the same layout.
template <class T, class U> double max_grad_diff(const GdnLayer<T>& A, const GdnLayer<U>& B, bool relative) {
  double worst = 0;
  for (size_t i = 0; i < A.ps.specs.size(); ++i) {
    double d = 0, m = 0;
    for (int64_t j = 0; j < A.ps.specs[i].numel(); ++j) {
      const int64_t k = A.ps.offsets[i] + j;
      d = std::max(d, std::abs(double(A.ps.grad[k]) - double(B.ps.grad[k])));
      m = std::max(m, std::abs(double(B.ps.grad[k])));
    }
    worst = std::max(worst, relative ? d / std::max(m, 1e-300) : d);
  }
  return worst;
}

// Core inputs: random q, k (L2-normalised per head), v, beta in (0, beta_max), g = log alpha,
// alpha in about (0.1, 1).
struct CoreInputs {
  GdnConfig c;
  int64_t B, Tn;
  std::vector<double> q, k, v, beta, g;
  CoreInputs(const GdnConfig& cfg, int64_t B_, int64_t T_, uint64_t seed) : c(cfg), B(B_), Tn(T_) {
    const int64_t BT = B * Tn;
    q = random_vec(BT * c.d_qk(), seed);
    k = random_vec(BT * c.d_qk(), seed + 1);
    v = random_vec(BT * c.d_v(), seed + 2);
    beta = random_vec(BT * c.n_v_heads, seed + 3);
    g = random_vec(BT * c.n_v_heads, seed + 4);
    for (auto* x : {&q, &k})
      for (int64_t r = 0; r < BT * c.n_heads; ++r) {
        double ss = 0;
        for (int64_t i = 0; i < c.d_head_k; ++i) ss += (*x)[r * c.d_head_k + i] * (*x)[r * c.d_head_k + i];
        for (int64_t i = 0; i < c.d_head_k; ++i) (*x)[r * c.d_head_k + i] /= std::sqrt(ss);
      }
    const double beta_max = c.allow_neg_eigval ? 2.0 : 1.0;
    for (auto& b : beta) b = beta_max / (1 + std::exp(-b));
    for (auto& x : g) x = -std::exp(0.7 * x - 0.7);
  }
};

struct CoreGrads {
  std::vector<double> o, dq, dk, dv, dbeta, dg;
};

CoreGrads run_core(const CoreInputs& in, const std::vector<double>& d_o) {
  const GdnConfig& c = in.c;
  const int64_t BT = in.B * in.Tn;
  CoreGrads r;
  r.o.assign(BT * c.d_v(), 0.0);
  r.dq.assign(BT * c.d_qk(), 0.0);
  r.dk.assign(BT * c.d_qk(), 0.0);
  r.dv.assign(BT * c.d_v(), 0.0);
  r.dbeta.assign(BT * c.n_v_heads, 0.0);
  r.dg.assign(BT * c.n_v_heads, 0.0);
  if (c.chunk_size > 0) {
    std::vector<double> states(in.B * c.n_v_heads * c.n_chunks(in.Tn) * c.d_head_v * c.d_head_k);
    gdn_chunk_forward(c, r.o.data(), states.data(), in.q.data(), in.k.data(), in.v.data(), in.beta.data(),
                      in.g.data(), in.B, in.Tn);
    gdn_chunk_backward(c, r.dq.data(), r.dk.data(), r.dv.data(), r.dbeta.data(), r.dg.data(), d_o.data(),
                       in.q.data(), in.k.data(), in.v.data(), in.beta.data(), in.g.data(), states.data(), in.B, in.Tn);
  } else {
    gdn_recurrent_forward(c, r.o.data(), in.q.data(), in.k.data(), in.v.data(), in.beta.data(), in.g.data(), in.B,
                          in.Tn);
    gdn_recurrent_backward(c, r.dq.data(), r.dk.data(), r.dv.data(), r.dbeta.data(), r.dg.data(), d_o.data(),
                           in.q.data(), in.k.data(), in.v.data(), in.beta.data(), in.g.data(), in.B, in.Tn);
  }
  return r;
}

}  // namespace

TEST_CASE("gated_deltanet: fp64 gradients of every parameter and x (recurrent and chunked)") {
  const int64_t B = 2;
  struct Case { int64_t chunk, Tn; };
  // chunk 0 = recurrence; chunk 4 with T = 8 (whole chunks) and T = 13 (last chunk partial)
  for (Case cs : {Case{0, 9}, Case{4, 8}, Case{4, 13}})
    for (bool neg : {false, true}) {
      CAPTURE(cs.chunk);
      CAPTURE(cs.Tn);
      CAPTURE(neg);
      std::printf("chunk %lld, T %lld, allow_neg_eigval %d\n", (long long)cs.chunk, (long long)cs.Tn, int(neg));
      GdnLayer<double> L(tiny_config(cs.chunk, neg), B, cs.Tn);
      fill_params(L, 11);
      fill_io(L, 21);
      auto loss = [&] {
        L.forward();
        return dot(L.y.data(), L.dy.data(), L.n_x());
      };
      loss();
      L.backward();
      double worst = 0;
      for (size_t i = 0; i < L.ps.specs.size(); ++i) {
        const double e = grad_rel_error(L.ps.value.data() + L.ps.offsets[i], L.ps.grad.data() + L.ps.offsets[i],
                                        L.ps.specs[i].numel(), loss, L.ps.specs[i].name, 1 << 20);
        CHECK_MESSAGE(e < 1e-6, L.ps.specs[i].name);
        CHECK(max_abs(std::vector<double>(L.ps.grad.begin() + L.ps.offsets[i],
                                          L.ps.grad.begin() + L.ps.offsets[i] + L.ps.specs[i].numel())) > 1e-3);
        worst = std::max(worst, e);
      }
      const double ex = grad_rel_error(L.x.data(), L.dx.data(), L.n_x(), loss, "x", 1 << 20);
      CHECK(ex < 1e-6);
      std::printf("  worst rel err %.2e\n", std::max(worst, ex));
    }
}

TEST_CASE("gated_deltanet: core gradients by finite differences (recurrent and chunked, grouped heads)") {
  // The same check one level down: q, k, v, beta, g of the core, with d_o as the loss weights.
  for (int64_t chunk : {0, 4})
    for (bool neg : {false, true}) {
      CAPTURE(chunk);
      CAPTURE(neg);
      GdnConfig c = tiny_config(chunk, neg);
      CoreInputs in(c, 2, 11, 31);
      const auto d_o = random_vec(2 * 11 * c.d_v(), 37);
      const CoreGrads r = run_core(in, d_o);
      auto loss = [&] {
        std::vector<double> o(r.o.size()), st(2 * c.n_v_heads * c.n_chunks(11) * c.d_head_v * c.d_head_k);
        if (chunk > 0)
          gdn_chunk_forward(c, o.data(), st.data(), in.q.data(), in.k.data(), in.v.data(), in.beta.data(),
                            in.g.data(), 2, 11);
        else
          gdn_recurrent_forward(c, o.data(), in.q.data(), in.k.data(), in.v.data(), in.beta.data(), in.g.data(), 2,
                                11);
        return dot(o.data(), d_o.data(), int64_t(o.size()));
      };
      const int64_t all = 1 << 20;
      CHECK(grad_rel_error(in.q.data(), r.dq.data(), int64_t(in.q.size()), loss, "core.q", all) < 1e-6);
      CHECK(grad_rel_error(in.k.data(), r.dk.data(), int64_t(in.k.size()), loss, "core.k", all) < 1e-6);
      CHECK(grad_rel_error(in.v.data(), r.dv.data(), int64_t(in.v.size()), loss, "core.v", all) < 1e-6);
      CHECK(grad_rel_error(in.beta.data(), r.dbeta.data(), int64_t(in.beta.size()), loss, "core.beta", all) < 1e-6);
      CHECK(grad_rel_error(in.g.data(), r.dg.data(), int64_t(in.g.size()), loss, "core.g", all) < 1e-6);
    }
}

TEST_CASE("gated_deltanet: chunked == recurrent, output and all gradients, T = 1..300") {
  const int64_t B = 1, Tmax = 300;
  double worst_layer = 0, worst_core = 0;
  int64_t n_cases = 0;
  for (int64_t chunk : {8, 16, 64})
    for (bool neg : {false, true}) {
      // layer level: every T for chunk 16, the edge cases and a spread for 8 and 64
      std::vector<int64_t> Ts;
      if (chunk == 16)
        for (int64_t t = 1; t <= Tmax; ++t) Ts.push_back(t);
      else
        Ts = {1, 2, chunk - 1, chunk, chunk + 1, 2 * chunk - 1, 2 * chunk, 2 * chunk + 1, 97, 200, 255, 299, 300};
      GdnLayer<double> rec(tiny_config(0, neg), B, Tmax), chk(tiny_config(chunk, neg), B, Tmax);
      fill_params(rec, 41);
      fill_io(rec, 51);
      chk.ps.value = rec.ps.value;
      chk.x = rec.x;
      chk.dy = rec.dy;
      for (int64_t Tn : Ts) {
        CAPTURE(chunk);
        CAPTURE(neg);
        CAPTURE(Tn);
        rec.Tn = chk.Tn = Tn;  // acts were sized for Tmax: the forward runs on a prefix
        rec.forward();
        rec.backward();
        chk.forward();
        chk.backward();
        const int64_t n = Tn * rec.c.d_model;
        double d = 0;
        for (int64_t i = 0; i < n; ++i) {
          d = std::max(d, std::abs(rec.y[i] - chk.y[i]));
          d = std::max(d, std::abs(rec.dx[i] - chk.dx[i]));
        }
        d = std::max(d, max_grad_diff(chk, rec, false));
        CHECK(d < 1e-10);
        worst_layer = std::max(worst_layer, d);
        ++n_cases;
      }
      // core level (q, k, v, beta, g straight in, B = 2, grouped heads)
      for (int64_t Tn : {int64_t(1), chunk - 1, chunk, chunk + 1, int64_t(300)}) {
        CAPTURE(chunk);
        CAPTURE(neg);
        CAPTURE(Tn);
        GdnConfig cr = tiny_config(0, neg), cc = tiny_config(chunk, neg);
        CoreInputs in_r(cr, 2, Tn, 61), in_c(cc, 2, Tn, 61);
        const auto d_o = random_vec(2 * Tn * cr.d_v(), 67);
        const CoreGrads a = run_core(in_r, d_o), b = run_core(in_c, d_o);
        const double d = std::max({max_diff(a.o, b.o), max_diff(a.dq, b.dq), max_diff(a.dk, b.dk),
                                   max_diff(a.dv, b.dv), max_diff(a.dbeta, b.dbeta), max_diff(a.dg, b.dg)});
        CHECK(d < 1e-10);
        CHECK(max_abs(a.o) > 0.1);
        worst_core = std::max(worst_core, d);
      }
    }
  std::printf("chunked vs recurrent: %lld layer cases, max abs diff %.2e (layer), %.2e (core)\n", (long long)n_cases,
              worst_layer, worst_core);
}

TEST_CASE("gated_deltanet: delta rule closed forms (orthonormal keys, decay, beta = 0)") {
  // One head, dk = 4, dv = 3, orthonormal keys e_0..e_3 written once each with beta = 1 and a
  // constant alpha. Since e_j is orthogonal to every later key, the later (I - k k^T) factors
  // leave S e_0 alone and S_t e_0 = alpha^t v_0: a query e_0 reads back v_0 decayed. Then key e_0
  // is written again (t = 4): the delta rule replaces the value (S e_0 = v_4, not v_4 + alpha^4 v_0).
  GdnConfig c;
  c.d_model = 4;
  c.n_heads = 1;
  c.n_v_heads = 1;
  c.d_head_k = 4;
  c.d_head_v = 3;
  const int64_t Tn = 6, dk = 4, dv = 3;
  const double alpha = 0.5, scale = 0.5;  // scale = dk^-0.5
  for (int64_t chunk : {0, 2, 4, 64}) {
    CAPTURE(chunk);
    c.chunk_size = chunk;
    std::vector<double> q(Tn * dk, 0.0), k(Tn * dk, 0.0), v = random_vec(Tn * dv, 71), beta(Tn, 1.0),
        g(Tn, std::log(alpha)), o(Tn * dv), st(c.n_chunks(Tn) * dv * dk + 1);
    const int64_t key_of[Tn] = {0, 1, 2, 3, 0, 1};
    for (int64_t t = 0; t < Tn; ++t) {
      k[t * dk + key_of[t]] = 1;
      q[t * dk + 0] = 1;  // every query reads key e_0
    }
    auto run = [&] {
      if (chunk > 0) gdn_chunk_forward(c, o.data(), st.data(), q.data(), k.data(), v.data(), beta.data(), g.data(), 1, Tn);
      else gdn_recurrent_forward(c, o.data(), q.data(), k.data(), v.data(), beta.data(), g.data(), 1, Tn);
    };
    run();
    for (int64_t t = 0; t < Tn; ++t)
      for (int64_t i = 0; i < dv; ++i) {
        // t < 4: alpha^t v_0; t = 4: v_4 (overwritten); t = 5: alpha v_4 (e_1 is orthogonal to e_0)
        const double want = t < 4 ? std::pow(alpha, double(t)) * v[i] : t == 4 ? v[4 * dv + i] : alpha * v[4 * dv + i];
        CHECK(o[t * dv + i] == doctest::Approx(scale * want).epsilon(1e-13));
      }
    // beta = 0: nothing is ever written, the state stays zero and so does every output
    std::fill(beta.begin(), beta.end(), 0.0);
    run();
    for (double x : o) CHECK(x == 0.0);
  }
}

TEST_CASE("gated_deltanet: grouped value heads read q/k head hv / (Hv / H)") {
  // H = 2, Hv = 4: value heads 0, 1 read q/k head 0 and value heads 2, 3 read head 1 (as fla's
  // repeat(q, '... h d -> ... (h g) d')). A zero query in head 1 silences exactly value heads 2, 3.
  for (int64_t chunk : {0, 4}) {
    CAPTURE(chunk);
    GdnConfig c = tiny_config(chunk, true);
    CoreInputs in(c, 1, 9, 141);
    for (int64_t t = 0; t < 9; ++t)
      for (int64_t i = 0; i < c.d_head_k; ++i) in.q[t * c.d_qk() + c.d_head_k + i] = 0;
    const CoreGrads r = run_core(in, random_vec(9 * c.d_v(), 143));
    for (int64_t hv = 0; hv < 4; ++hv) {
      double m = 0;
      for (int64_t t = 0; t < 9; ++t)
        for (int64_t i = 0; i < c.d_head_v; ++i) m = std::max(m, std::abs(r.o[t * c.d_v() + hv * c.d_head_v + i]));
      CAPTURE(hv);
      if (hv < 2) CHECK(m > 0.1);
      else CHECK(m == 0.0);
    }
  }
}

TEST_CASE("gated_deltanet: acts reused, prefix length, grads accumulate") {
  // Acts sized for T = 20 and filled with NaN, run on T = 13: same as a fresh layer of T = 13.
  for (int64_t chunk : {0, 4}) {
    CAPTURE(chunk);
    GdnLayer<double> fresh(tiny_config(chunk, true), 2, 13), reused(tiny_config(chunk, true), 2, 13, 20);
    fill_params(fresh, 81);
    fill_io(fresh, 91);
    reused.ps.value = fresh.ps.value;
    reused.x = fresh.x;
    reused.dy = fresh.dy;
    std::fill(reused.as.data.begin(), reused.as.data.end(), std::numeric_limits<double>::quiet_NaN());
    std::fill(reused.dx.begin(), reused.dx.end(), std::numeric_limits<double>::quiet_NaN());
    fresh.forward();
    fresh.backward();
    reused.forward();
    reused.backward();
    CHECK(max_diff(fresh.y, reused.y) == 0.0);
    CHECK(max_diff(fresh.dx, reused.dx) == 0.0);
    CHECK(max_grad_diff(fresh, reused, false) == 0.0);
    // a second backward without zero_grad doubles the parameter gradients and overwrites dx
    const std::vector<double> g1 = reused.ps.grad, dx1 = reused.dx;
    gdn_backward(reused.c, reused.p, reused.g, reused.a, reused.dx.data(), reused.dy.data(), reused.x.data(), 2, 13);
    for (size_t i = 0; i < g1.size(); ++i) CHECK(reused.ps.grad[i] == doctest::Approx(2 * g1[i]).epsilon(1e-14));
    CHECK(max_diff(dx1, reused.dx) == 0.0);
  }
}

TEST_CASE("gated_deltanet: float agrees with double") {
  for (int64_t chunk : {0, 16})
    for (bool neg : {false, true}) {
      CAPTURE(chunk);
      CAPTURE(neg);
      GdnLayer<double> Ld(tiny_config(chunk, neg), 2, 70);
      GdnLayer<float> Lf(tiny_config(chunk, neg), 2, 70);
      fill_params(Ld, 101);
      fill_io(Ld, 111);
      copy_values(Lf, Ld);
      Ld.forward();
      Ld.backward();
      Lf.forward();
      Lf.backward();
      const double ey = max_diff(Lf.y, Ld.y) / max_abs(Ld.y), edx = max_diff(Lf.dx, Ld.dx) / max_abs(Ld.dx);
      const double eg = max_grad_diff(Lf, Ld, true);
      std::printf("float vs double (chunk %lld, neg %d): y %.2e, dx %.2e, worst param grad %.2e\n", (long long)chunk,
                  int(neg), ey, edx, eg);
      CHECK(ey < 1e-4);
      CHECK(edx < 1e-4);
      CHECK(eg < 1e-4);
    }
}

TEST_CASE("gated_deltanet: identical results with 1 and 2 OpenMP threads") {
  auto check = [](auto tag, int64_t chunk) {
    using T = decltype(tag);
    CAPTURE(chunk);
    GdnLayer<double> ref(tiny_config(chunk, true), 2, 70);  // B T = 140 > one GEMM row block
    fill_params(ref, 121);
    fill_io(ref, 131);
    GdnLayer<T> a(tiny_config(chunk, true), 2, 70), b(tiny_config(chunk, true), 2, 70);
    copy_values(a, ref);
    copy_values(b, ref);
    const int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    a.forward();
    a.backward();
    omp_set_num_threads(2);
    b.forward();
    b.backward();
    omp_set_num_threads(saved);
    CHECK(max_diff(a.y, b.y) == 0.0);
    CHECK(max_diff(a.dx, b.dx) == 0.0);
    CHECK(max_grad_diff(a, b, false) == 0.0);
  };
  for (int64_t chunk : {0, 16}) {
    check(double(0), chunk);
    check(float(0), chunk);
  }
}
