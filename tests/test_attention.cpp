#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "layers/attention.h"
#include "tests/gradcheck.h"

using namespace hysim;
using namespace hysim::test;

// B = 2, T = 11, D = 8, H = 4, Hkv = 2, dh = 4, tile 4: three query/key tiles, the last one short.
static AttentionConfig tiny_config(int64_t window, bool rope, bool qk_norm, int64_t n_kv_heads = 2) {
  AttentionConfig c;
  c.d_model = 8;
  c.n_heads = 4;
  c.n_kv_heads = n_kv_heads;
  c.d_head = 4;
  c.qk_norm = qk_norm;
  c.rope = rope;
  c.rope_theta = 10.0;  // small theta: every frequency turns noticeably over 11 positions
  c.window = window;
  c.tile = 4;
  return c;
}

// One layer with its parameters, gradients and activations. Acts start as NaN so that
// any read of an act the forward did not write shows up.
template <class T> struct Layer {
  AttentionConfig c;
  ParamStore<T> store;
  AttentionParams<T> p, g;
  ActStore<T> acts;
  AttentionActs<T> a;
  Layer(const AttentionConfig& cfg, int64_t B, int64_t Tmax) : c(cfg) {
    store.build(p, g, [&](AttentionParams<T>& q, auto&& v) { visit_params(c, q, v); });
    acts.build(a, [&](AttentionActs<T>& q, auto&& v) { visit_acts(c, B, Tmax, q, v); });
    std::fill(acts.data.begin(), acts.data.end(), std::numeric_limits<T>::quiet_NaN());
  }
  void forward(T* y, const T* x, int64_t B, int64_t Tn) { attention_forward(c, p, a, y, x, B, Tn); }
  void backward(T* dx, const T* dy, const T* x, int64_t B, int64_t Tn) {
    store.zero_grad();
    attention_backward(c, p, g, a, dx, dy, x, B, Tn);
  }
};

// Weights large enough that the softmax is far from uniform; norm weights around 1.
static void randomise(Layer<double>& L, uint64_t seed) {
  L.store.init(seed);
  CounterRng r(seed, 321);
  int64_t k = 0;
  const int64_t D = L.c.d_model, QD = L.c.q_dim(), KD = L.c.kv_dim();
  for (int64_t i = 0; i < QD * D; ++i) L.p.q_proj[i] = 0.5 * r.normal(k++);
  for (int64_t i = 0; i < KD * D; ++i) L.p.k_proj[i] = 0.5 * r.normal(k++);
  for (int64_t i = 0; i < KD * D; ++i) L.p.v_proj[i] = 0.5 * r.normal(k++);
  for (int64_t i = 0; i < D * QD; ++i) L.p.o_proj[i] = 0.5 * r.normal(k++);
  if (L.c.qk_norm) {
    for (int64_t i = 0; i < L.c.q_dim(); ++i) L.p.q_norm[i] = 1.0 + 0.3 * r.normal(k++);
    for (int64_t i = 0; i < L.c.kv_dim(); ++i) L.p.k_norm[i] = 1.0 + 0.3 * r.normal(k++);
  }
}

struct Result {
  std::vector<double> y, dx, grads;
};

template <class T>
static Result run_layer(Layer<T>& L, const std::vector<double>& x, const std::vector<double>& R, int64_t B,
                        int64_t Tn) {
  const int64_t n = B * Tn * L.c.d_model;
  std::vector<T> xt(x.begin(), x.begin() + n), Rt(R.begin(), R.begin() + n), y(n), dx(n);
  L.forward(y.data(), xt.data(), B, Tn);
  L.backward(dx.data(), Rt.data(), xt.data(), B, Tn);
  return {std::vector<double>(y.begin(), y.end()), std::vector<double>(dx.begin(), dx.end()),
          std::vector<double>(L.store.grad.begin(), L.store.grad.end())};
}

static double rel_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0;
  for (double v : a) m = std::max(m, std::abs(v));
  return max_abs_diff(a.data(), b.data(), a.size()) / std::max(m, 1e-300);
}

// ---- naive O(T^2) reference, written from the math (HF conventions), not from the layer ----

// HF apply_rotary_pos_emb: x * cos(emb) + rotate_half(x) * sin(emb), emb = cat(freqs, freqs),
// freqs_i = pos * theta^(-2i/dh), rotate_half(x) = cat(-x[dh/2:], x[:dh/2]).
static void naive_rope(double* head, int64_t pos, int64_t dh, double theta) {
  std::vector<double> emb(dh), rot(dh), out(dh);
  for (int64_t i = 0; i < dh; ++i) emb[i] = double(pos) / std::pow(theta, double(2 * (i % (dh / 2))) / double(dh));
  for (int64_t i = 0; i < dh / 2; ++i) {
    rot[i] = -head[i + dh / 2];
    rot[i + dh / 2] = head[i];
  }
  for (int64_t i = 0; i < dh; ++i) out[i] = head[i] * std::cos(emb[i]) + rot[i] * std::sin(emb[i]);
  std::copy(out.begin(), out.end(), head);
}

static void naive_rmsnorm(double* r, const double* w, int64_t n, double eps) {
  double ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += r[i] * r[i];
  const double s = 1.0 / std::sqrt(ss / double(n) + eps);
  for (int64_t i = 0; i < n; ++i) r[i] *= s * w[i];
}

static bool kept(const AttentionConfig& c, int64_t t, int64_t j) { return j <= t && (c.window <= 0 || t - j < c.window); }

// Full softmax attention with the T x T probability matrix; q, o: [B, T, H, dh], k, v: [B, T, Hkv, dh].
static void naive_core_forward(const AttentionConfig& c, double* o, const double* q, const double* k,
                               const double* v, int64_t B, int64_t Tn) {
  const int64_t H = c.n_heads, Hkv = c.n_kv_heads, dh = c.d_head;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h * Hkv / H;
      for (int64_t t = 0; t < Tn; ++t) {
        std::vector<double> s(Tn, -INFINITY);
        double mx = -INFINITY, sum = 0;
        for (int64_t j = 0; j < Tn; ++j)
          if (kept(c, t, j)) {
            s[j] = dot(q + ((b * Tn + t) * H + h) * dh, k + ((b * Tn + j) * Hkv + g) * dh, dh) / std::sqrt(double(dh));
            mx = std::max(mx, s[j]);
          }
        for (int64_t j = 0; j < Tn; ++j) sum += std::exp(s[j] - mx);
        double* ot = o + ((b * Tn + t) * H + h) * dh;
        std::fill(ot, ot + dh, 0.0);
        for (int64_t j = 0; j < Tn; ++j)
          for (int64_t i = 0; i < dh; ++i) ot[i] += std::exp(s[j] - mx) / sum * v[((b * Tn + j) * Hkv + g) * dh + i];
      }
    }
}

// Softmax backward on the materialised P: dP = dO V^T, dS = P (dP - rowsum(P dP)).
static void naive_core_backward(const AttentionConfig& c, double* dq, double* dk, double* dv, const double* dout,
                                const double* q, const double* k, const double* v, int64_t B, int64_t Tn) {
  const int64_t H = c.n_heads, Hkv = c.n_kv_heads, dh = c.d_head;
  const double scale = 1.0 / std::sqrt(double(dh));
  std::fill(dq, dq + B * Tn * H * dh, 0.0);
  std::fill(dk, dk + B * Tn * Hkv * dh, 0.0);
  std::fill(dv, dv + B * Tn * Hkv * dh, 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h * Hkv / H;
      auto Q = [&](int64_t t) { return q + ((b * Tn + t) * H + h) * dh; };
      auto K = [&](int64_t j) { return k + ((b * Tn + j) * Hkv + g) * dh; };
      auto V = [&](int64_t j) { return v + ((b * Tn + j) * Hkv + g) * dh; };
      auto dO = [&](int64_t t) { return dout + ((b * Tn + t) * H + h) * dh; };
      std::vector<double> P(Tn * Tn, 0.0), dP(Tn * Tn, 0.0);
      for (int64_t t = 0; t < Tn; ++t) {
        double mx = -INFINITY, sum = 0;
        for (int64_t j = 0; j < Tn; ++j)
          if (kept(c, t, j)) mx = std::max(mx, scale * dot(Q(t), K(j), dh));
        for (int64_t j = 0; j < Tn; ++j)
          if (kept(c, t, j)) sum += P[t * Tn + j] = std::exp(scale * dot(Q(t), K(j), dh) - mx);
        for (int64_t j = 0; j < Tn; ++j) P[t * Tn + j] /= sum;
        for (int64_t j = 0; j < Tn; ++j) dP[t * Tn + j] = dot(dO(t), V(j), dh);
      }
      for (int64_t t = 0; t < Tn; ++t) {
        double rowsum = 0;
        for (int64_t j = 0; j < Tn; ++j) rowsum += P[t * Tn + j] * dP[t * Tn + j];
        for (int64_t j = 0; j < Tn; ++j) {
          const double ds = P[t * Tn + j] * (dP[t * Tn + j] - rowsum);
          for (int64_t i = 0; i < dh; ++i) {
            dq[((b * Tn + t) * H + h) * dh + i] += scale * ds * K(j)[i];
            dk[((b * Tn + j) * Hkv + g) * dh + i] += scale * ds * Q(t)[i];
            dv[((b * Tn + j) * Hkv + g) * dh + i] += P[t * Tn + j] * dO(t)[i];
          }
        }
      }
    }
}

static std::vector<double> naive_layer_forward(const Layer<double>& L, const std::vector<double>& x, int64_t B,
                                               int64_t Tn) {
  const AttentionConfig& c = L.c;
  const int64_t D = c.d_model, QD = c.q_dim(), KD = c.kv_dim(), BT = B * Tn, dh = c.d_head;
  std::vector<double> q(BT * QD, 0.0), k(BT * KD, 0.0), v(BT * KD, 0.0), o(BT * QD), y(BT * D, 0.0);
  for (int64_t n = 0; n < BT; ++n) {
    for (int64_t r = 0; r < QD; ++r) q[n * QD + r] = dot(L.p.q_proj + r * D, x.data() + n * D, D);
    for (int64_t r = 0; r < KD; ++r) k[n * KD + r] = dot(L.p.k_proj + r * D, x.data() + n * D, D);
    for (int64_t r = 0; r < KD; ++r) v[n * KD + r] = dot(L.p.v_proj + r * D, x.data() + n * D, D);
    if (c.qk_norm) {
      naive_rmsnorm(q.data() + n * QD, L.p.q_norm, QD, c.norm_eps);
      naive_rmsnorm(k.data() + n * KD, L.p.k_norm, KD, c.norm_eps);
    }
    if (c.rope) {
      const int64_t pos = n % Tn;
      for (int64_t h = 0; h < c.n_heads; ++h) naive_rope(q.data() + n * QD + h * dh, pos, dh, c.rope_theta);
      for (int64_t h = 0; h < c.n_kv_heads; ++h) naive_rope(k.data() + n * KD + h * dh, pos, dh, c.rope_theta);
    }
  }
  naive_core_forward(c, o.data(), q.data(), k.data(), v.data(), B, Tn);
  for (int64_t n = 0; n < BT; ++n)
    for (int64_t r = 0; r < D; ++r) y[n * D + r] = dot(L.p.o_proj + r * QD, o.data() + n * QD, QD);
  return y;
}

// ---- tests ------------------------------------------------------------------------------------

TEST_CASE("attention: parameter names and shapes follow HF") {
  for (bool qk_norm : {false, true}) {
    AttentionConfig c = tiny_config(0, true, qk_norm);
    AttentionParams<double> p;
    std::vector<std::string> names;
    std::vector<Shape> shapes;
    visit_params(c, p, [&](double*&, const ParamSpec& s) {
      names.push_back(s.name);
      shapes.push_back(s.shape);
    });
    std::vector<std::string> want = {"q_proj", "k_proj", "v_proj", "o_proj"};
    std::vector<Shape> want_shapes = {{16, 8}, {8, 8}, {8, 8}, {8, 16}};
    if (qk_norm) {
      want.insert(want.end(), {"q_norm", "k_norm"});
      want_shapes.insert(want_shapes.end(), {{16}, {8}});
    }
    CHECK(names == want);
    CHECK(shapes == want_shapes);
  }
  AttentionConfig bad = tiny_config(0, true, true, 3);  // 4 heads over 3 kv heads
  AttentionParams<double> p;
  CHECK_THROWS(visit_params(bad, p, [](double*&, const ParamSpec&) {}));
}

TEST_CASE("attention: fp64 gradients of every parameter and x (full / window 3, 5; NoPE, RoPE, YaRN; QK-norm on/off; GQA)") {
  const int64_t B = 2, Tn = 11;
  for (int64_t window : {0, 3, 5})
    for (int rope : {0, 1, 2})  // none, RoPE, RoPE with YaRN x4 from 4 positions (keeps f_0, interpolates f_1)
      for (bool qk_norm : {false, true}) {
        CAPTURE(window);
        CAPTURE(rope);
        CAPTURE(qk_norm);
        AttentionConfig c = tiny_config(window, rope > 0, qk_norm);
        if (rope == 2) c.rope_yarn_factor = 4, c.rope_yarn_original_len = 4;
        Layer<double> L(c, B, Tn);
        randomise(L, 11 + window);
        const int64_t n = B * Tn * L.c.d_model;
        auto x = random_vec(n, 1), R = random_vec(n, 2);
        std::vector<double> y(n), dx(n);
        auto loss = [&] {
          L.forward(y.data(), x.data(), B, Tn);
          return dot(y.data(), R.data(), n);
        };
        loss();
        L.backward(dx.data(), R.data(), x.data(), B, Tn);
        double worst = grad_rel_error(x.data(), dx.data(), n, loss, "", n);
        std::string worst_name = "x";
        CHECK(worst < 1e-6);
        for (size_t i = 0; i < L.store.specs.size(); ++i) {
          const ParamSpec& s = L.store.specs[i];
          CAPTURE(s.name);
          const int64_t off = L.store.offsets[i];
          const double e =
              grad_rel_error(L.store.value.data() + off, L.store.grad.data() + off, s.numel(), loss, "", s.numel());
          CHECK(e < 1e-6);
          if (e > worst) worst = e, worst_name = s.name;
        }
        std::printf("  gradcheck window %lld rope %d qk_norm %d: all %zu tensors + x, worst rel err %.2e (%s)\n",
                    (long long)window, int(rope), int(qk_norm), L.store.specs.size(), worst, worst_name.c_str());
      }
}

TEST_CASE("attention core: tiled online softmax == naive O(T^2) softmax, forward and gradients") {
  const int64_t B = 2;
  double worst = 0;
  int cases = 0;
  for (int64_t n_kv_heads : {1, 2, 4})
    for (int64_t Tn : {1, 5, 11, 16})
      for (int64_t tile : {1, 3, 4, 64})
        for (int64_t window : {0, 1, 3, 5, 20}) {
          CAPTURE(n_kv_heads);
          CAPTURE(Tn);
          CAPTURE(tile);
          CAPTURE(window);
          AttentionConfig c = tiny_config(window, false, false, n_kv_heads);
          c.tile = tile;
          const int64_t QN = B * Tn * c.q_dim(), KN = B * Tn * c.kv_dim();
          auto q = random_vec(QN, 21, 1.5), k = random_vec(KN, 22, 1.5), v = random_vec(KN, 23), dO = random_vec(QN, 24);
          std::vector<double> o(QN), lse(B * c.n_heads * Tn), dq(QN), dk(KN), dv(KN);
          std::vector<double> o_ref(QN), dq_ref(QN), dk_ref(KN), dv_ref(KN);
          attention_core_forward(c, o.data(), lse.data(), q.data(), k.data(), v.data(), B, Tn);
          attention_core_backward(c, dq.data(), dk.data(), dv.data(), dO.data(), q.data(), k.data(), v.data(),
                                  o.data(), lse.data(), B, Tn);
          naive_core_forward(c, o_ref.data(), q.data(), k.data(), v.data(), B, Tn);
          naive_core_backward(c, dq_ref.data(), dk_ref.data(), dv_ref.data(), dO.data(), q.data(), k.data(),
                              v.data(), B, Tn);
          for (double e : {rel_diff(o_ref, o), rel_diff(dq_ref, dq), rel_diff(dk_ref, dk), rel_diff(dv_ref, dv)}) {
            CHECK(e < 1e-13);
            worst = std::max(worst, e);
          }
          ++cases;
        }
  std::printf("  tiled vs naive core: %d cases, worst rel diff (o, dq, dk, dv) %.2e\n", cases, worst);
}

TEST_CASE("attention: layer forward equals the naive formula (full-projection QK-norm, HF rotate_half RoPE)") {
  const int64_t B = 2, Tn = 11;
  double worst = 0;
  for (int64_t window : {0, 3})
    for (bool rope : {false, true})
      for (bool qk_norm : {false, true}) {
        CAPTURE(window);
        CAPTURE(rope);
        CAPTURE(qk_norm);
        Layer<double> L(tiny_config(window, rope, qk_norm), B, Tn);
        randomise(L, 31);
        const int64_t n = B * Tn * L.c.d_model;
        auto x = random_vec(n, 3);
        std::vector<double> y(n);
        L.forward(y.data(), x.data(), B, Tn);
        const double e = rel_diff(naive_layer_forward(L, x, B, Tn), y);
        CHECK(e < 1e-13);
        worst = std::max(worst, e);
      }
  std::printf("  layer vs naive forward: worst rel diff %.2e\n", worst);
}

TEST_CASE("attention: window >= T is full attention (bitwise); a window really restricts") {
  const int64_t B = 2, Tn = 11;
  Layer<double> full(tiny_config(0, true, true), B, Tn);
  randomise(full, 41);
  auto x = random_vec(B * Tn * 8, 4), R = random_vec(B * Tn * 8, 5);
  const Result rf = run_layer(full, x, R, B, Tn);
  for (int64_t window : {Tn, Tn + 1, int64_t(100)}) {
    CAPTURE(window);
    Layer<double> w(tiny_config(window, true, true), B, Tn);
    w.store.value = full.store.value;
    const Result rw = run_layer(w, x, R, B, Tn);
    CHECK(rw.y == rf.y);
    CHECK(rw.dx == rf.dx);
    CHECK(rw.grads == rf.grads);
  }
  Layer<double> w(tiny_config(Tn - 1, true, true), B, Tn);
  w.store.value = full.store.value;
  const Result rw = run_layer(w, x, R, B, Tn);
  const int64_t D = 8;
  // identical up to the last query of each sequence, which loses key 0
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < Tn; ++t)
      for (int64_t i = 0; i < D; ++i) {
        const int64_t idx = (b * Tn + t) * D + i;
        if (t < Tn - 1) CHECK(rw.y[idx] == rf.y[idx]);
        else CHECK(rw.y[idx] != rf.y[idx]);
      }
}

TEST_CASE("attention: GQA with n_kv_heads = n_heads and repeated kv weights equals GQA") {
  const int64_t B = 2, Tn = 11, D = 8, dh = 4, H = 4, Hkv = 2, group = H / Hkv;
  for (bool qk_norm : {false, true}) {
    CAPTURE(qk_norm);
    Layer<double> gqa(tiny_config(5, true, qk_norm, Hkv), B, Tn), mha(tiny_config(5, true, qk_norm, H), B, Tn);
    randomise(gqa, 51);
    // MHA kv head h = GQA kv head h / group: repeat the rows of k_proj, v_proj (and k_norm).
    std::copy(gqa.p.q_proj, gqa.p.q_proj + H * dh * D, mha.p.q_proj);
    std::copy(gqa.p.o_proj, gqa.p.o_proj + D * H * dh, mha.p.o_proj);
    for (int64_t h = 0; h < H; ++h)
      for (int64_t r = 0; r < dh; ++r) {
        const int64_t src = (h / group) * dh + r, dst = h * dh + r;
        std::copy(gqa.p.k_proj + src * D, gqa.p.k_proj + (src + 1) * D, mha.p.k_proj + dst * D);
        std::copy(gqa.p.v_proj + src * D, gqa.p.v_proj + (src + 1) * D, mha.p.v_proj + dst * D);
        if (qk_norm) mha.p.k_norm[dst] = gqa.p.k_norm[src];
      }
    if (qk_norm) std::copy(gqa.p.q_norm, gqa.p.q_norm + H * dh, mha.p.q_norm);
    auto x = random_vec(B * Tn * D, 6), R = random_vec(B * Tn * D, 7);
    const Result rg = run_layer(gqa, x, R, B, Tn), rm = run_layer(mha, x, R, B, Tn);
    // (k-norm's sum of squares over the repeated heads rounds differently; without QK-norm only
    // the GEMMs' shapes differ)
    const double ey = rel_diff(rg.y, rm.y), edx = rel_diff(rg.dx, rm.dx);
    CHECK(ey < 1e-14);
    CHECK(edx < 1e-14);
    // GQA k/v weight gradients = sums of the repeated MHA rows; q, o grads equal.
    std::vector<double> gk(Hkv * dh * D, 0.0), gv(Hkv * dh * D, 0.0), gk_norm(Hkv * dh, 0.0);
    for (int64_t h = 0; h < H; ++h)
      for (int64_t r = 0; r < dh; ++r) {
        const int64_t src = (h / group) * dh + r, dst = h * dh + r;
        for (int64_t i = 0; i < D; ++i) {
          gk[src * D + i] += mha.g.k_proj[dst * D + i];
          gv[src * D + i] += mha.g.v_proj[dst * D + i];
        }
        if (qk_norm) gk_norm[src] += mha.g.k_norm[dst];
      }
    auto vec = [](const double* p, int64_t n) { return std::vector<double>(p, p + n); };
    const double eg = std::max({rel_diff(vec(gqa.g.k_proj, Hkv * dh * D), gk),
                                rel_diff(vec(gqa.g.v_proj, Hkv * dh * D), gv),
                                rel_diff(vec(gqa.g.q_proj, H * dh * D), vec(mha.g.q_proj, H * dh * D)),
                                rel_diff(vec(gqa.g.o_proj, H * dh * D), vec(mha.g.o_proj, H * dh * D))});
    CHECK(eg < 1e-13);
    if (qk_norm) CHECK(rel_diff(vec(gqa.g.k_norm, Hkv * dh), gk_norm) < 1e-13);
    std::printf("  GQA vs repeated-kv MHA (qk_norm %d): y %.2e, dx %.2e, weight grads %.2e\n", int(qk_norm), ey,
                edx, eg);
  }
}

TEST_CASE("attention: RoPE scores depend only on relative position") {
  // Same q vector at every position, same k vector at every position: after RoPE,
  // q_t . k_j is a function of t - j alone, and not a constant.
  const int64_t Tn = 12, H = 2, dh = 8;
  auto qv = random_vec(H * dh, 61), kv = random_vec(H * dh, 62);
  std::vector<double> q(Tn * H * dh), k(Tn * H * dh);
  for (int64_t t = 0; t < Tn; ++t) {
    std::copy(qv.begin(), qv.end(), q.begin() + t * H * dh);
    std::copy(kv.begin(), kv.end(), k.begin() + t * H * dh);
  }
  AttentionConfig c;
  c.d_head = dh;
  c.rope_theta = 100.0;
  const RopeFrequencies freq = rope_frequencies(c);
  rope_apply(q.data(), 1, Tn, H, freq, false);
  rope_apply(k.data(), 1, Tn, H, freq, false);
  auto score = [&](int64_t t, int64_t j, int64_t h) { return dot(&q[(t * H + h) * dh], &k[(j * H + h) * dh], dh); };
  for (int64_t h = 0; h < H; ++h)
    for (int64_t delta = 0; delta < 5; ++delta) {
      const double s0 = score(delta, 0, h);
      for (int64_t j = 1; j + delta < Tn; ++j) CHECK(score(j + delta, j, h) == doctest::Approx(s0).epsilon(1e-12));
      if (delta > 0) CHECK(std::abs(score(delta, 0, h) - score(0, 0, h)) > 1e-3);
    }
  // the inverse rotation undoes it
  rope_apply(q.data(), 1, Tn, H, freq, true);
  for (int64_t t = 0; t < Tn; ++t)
    for (int64_t i = 0; i < H * dh; ++i) CHECK(q[t * H * dh + i] == doctest::Approx(qv[i]).epsilon(1e-14));
}

TEST_CASE("attention: YaRN frequencies and scale equal HF's yarn rope type") {
  AttentionConfig c;
  c.d_head = 16;
  c.rope_theta = 10000;
  RopeFrequencies plain = rope_frequencies(c);
  CHECK(plain.scale == 1.0);
  for (int64_t i = 0; i < 8; ++i) CHECK(plain.f[i] == doctest::Approx(std::pow(10000.0, -double(i) / 8)).epsilon(1e-15));
  c.rope_yarn_factor = 4;
  c.rope_yarn_original_len = 64;
  // Computed with HF's _compute_yarn_parameters formula (beta_fast 32, beta_slow 1,
  // truncate): correction range [0, 3], so pair 0 keeps its frequency, pairs 1 and 2 are
  // on the ramp and pairs 3.. are divided by 4; attention factor 0.1 ln 4 + 1.
  const double expected[8] = {1.0, 0.23717082451262847, 0.05, 0.007905694150420948, 0.0025, 0.0007905694150420947,
                              0.00025, 7.905694150420948e-05};
  RopeFrequencies yarn = rope_frequencies(c);
  REQUIRE(yarn.f.size() == 8);
  for (int64_t i = 0; i < 8; ++i) CHECK(yarn.f[i] == doctest::Approx(expected[i]).epsilon(1e-14));
  CHECK(yarn.scale == doctest::Approx(1.138629436111989).epsilon(1e-15));
  // the interpolated pairs turn s times slower
  CHECK(yarn.f[7] * 4 == doctest::Approx(plain.f[7]).epsilon(1e-14));
}

TEST_CASE("attention: shift test: a sliding-window layer with RoPE sees only relative positions") {
  // y of a sequence, and y of the same sequence after a 4-token prefix: once the window lies
  // inside the shared part (t >= window - 1), outputs agree; before that they must differ.
  const int64_t prefix = 4, Tn = 7, window = 3, D = 8;
  Layer<double> L(tiny_config(window, true, true), 1, Tn + prefix);
  randomise(L, 71);
  auto x = random_vec(Tn * D, 8), z = random_vec(prefix * D, 9);
  std::vector<double> xs(z);
  xs.insert(xs.end(), x.begin(), x.end());
  std::vector<double> y(Tn * D), ys((Tn + prefix) * D);
  L.forward(y.data(), x.data(), 1, Tn);
  L.forward(ys.data(), xs.data(), 1, Tn + prefix);
  for (int64_t t = 0; t < Tn; ++t) {
    double diff = 0;
    for (int64_t i = 0; i < D; ++i) diff = std::max(diff, std::abs(y[t * D + i] - ys[(t + prefix) * D + i]));
    CAPTURE(t);
    if (t >= window - 1) CHECK(diff < 1e-13);
    else CHECK(diff > 1e-6);
  }
}

TEST_CASE("attention: acts sized for a longer T are reused, stale contents don't matter") {
  const int64_t B = 2, Tmax = 11, Tn = 6, D = 8;
  Layer<double> big(tiny_config(3, true, true), B, Tmax), exact(tiny_config(3, true, true), B, Tn);
  randomise(big, 81);
  exact.store.value = big.store.value;
  auto x = random_vec(B * Tmax * D, 10), R = random_vec(B * Tmax * D, 11);
  run_layer(big, x, R, B, Tmax);  // leaves acts laid out for Tmax
  const Result r1 = run_layer(big, x, R, B, Tn), r2 = run_layer(exact, x, R, B, Tn);
  auto finite = [](const std::vector<double>& v) {
    return std::all_of(v.begin(), v.end(), [](double e) { return std::isfinite(e); });
  };
  CHECK((finite(r1.y) && finite(r1.dx) && finite(r1.grads)));
  CHECK(max_abs_diff(r1.y.data(), r2.y.data(), r1.y.size()) < 1e-14);
  CHECK(max_abs_diff(r1.dx.data(), r2.dx.data(), r1.dx.size()) < 1e-14);
  CHECK(max_abs_diff(r1.grads.data(), r2.grads.data(), r1.grads.size()) < 1e-13);
}

TEST_CASE("attention: float agrees with double") {
  const int64_t B = 2, Tn = 37;
  for (int64_t window : {0, 9}) {
    CAPTURE(window);
    AttentionConfig c = tiny_config(window, true, true);
    c.tile = 8;
    Layer<double> L64(c, B, Tn);
    randomise(L64, 91);
    Layer<float> L32(c, B, Tn);
    for (double& v : L64.store.value) v = double(float(v));  // both on the same (float) weights
    for (size_t i = 0; i < L64.store.value.size(); ++i) L32.store.value[i] = float(L64.store.value[i]);
    auto x = random_vec(B * Tn * c.d_model, 12), R = random_vec(B * Tn * c.d_model, 13);
    for (double& v : x) v = double(float(v));
    for (double& v : R) v = double(float(v));
    const Result r64 = run_layer(L64, x, R, B, Tn), r32 = run_layer(L32, x, R, B, Tn);
    const double ey = rel_diff(r64.y, r32.y), edx = rel_diff(r64.dx, r32.dx);
    double eg = 0;
    for (size_t i = 0; i < L64.store.specs.size(); ++i) {
      const int64_t o = L64.store.offsets[i], n = L64.store.specs[i].numel();
      eg = std::max(eg, rel_diff(std::vector<double>(r64.grads.begin() + o, r64.grads.begin() + o + n),
                                 std::vector<double>(r32.grads.begin() + o, r32.grads.begin() + o + n)));
    }
    std::printf("  window %lld, float vs double rel err: y %.2e, dx %.2e, worst param grad %.2e\n",
                (long long)window, ey, edx, eg);
    CHECK(ey < 1e-5);
    CHECK(edx < 1e-5);
    CHECK(eg < 1e-4);
  }
}

TEST_CASE("attention: identical results with 1 and 2 OpenMP threads") {
  const int64_t B = 3, Tn = 150;
  for (int64_t window : {0, 20}) {
    CAPTURE(window);
    AttentionConfig c = tiny_config(window, true, true);
    c.d_model = 32;  // big enough that Eigen's GEMMs run in parallel
    c.tile = 16;
    Layer<double> L(c, B, Tn);
    randomise(L, 101);
    auto x = random_vec(B * Tn * c.d_model, 14), R = random_vec(B * Tn * c.d_model, 15);
    const int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    const Result r1 = run_layer(L, x, R, B, Tn);
    omp_set_num_threads(2);
    const Result r2 = run_layer(L, x, R, B, Tn);
    omp_set_num_threads(saved);
    CHECK(r1.y == r2.y);
    CHECK(r1.dx == r2.dx);
    for (size_t i = 0; i < L.store.specs.size(); ++i) {
      const std::string& name = L.store.specs[i].name;
      CAPTURE(name);
      const int64_t o = L.store.offsets[i], n = L.store.specs[i].numel();
      const std::vector<double> a(r1.grads.begin() + o, r1.grads.begin() + o + n);
      const std::vector<double> b(r2.grads.begin() + o, r2.grads.begin() + o + n);
      CHECK(a == b);  // projections too: core/cpu/gemm.h reduces in a fixed order
    }
  }
}

TEST_CASE("attention: FLOP count") {
  // kept pairs by brute force
  for (int64_t Tn : {1, 7, 11, 64})
    for (int64_t window : {0, 1, 3, 11, 100}) {
      AttentionConfig c = tiny_config(window, true, true);
      int64_t pairs = 0;
      for (int64_t t = 0; t < Tn; ++t)
        for (int64_t j = 0; j < Tn; ++j) pairs += kept(c, t, j);
      CHECK(attention_kept_pairs(c, Tn) == pairs);
    }
  const int64_t B = 2, Tn = 11;
  AttentionConfig full = tiny_config(0, true, true), win = tiny_config(3, true, true);
  const int64_t per_pair = full.n_heads * (4 * full.d_head + 3);
  CHECK(attention_flops(full, B, Tn) - attention_flops(win, B, Tn) == B * per_pair * (66 - (6 + 8 * 3)));
  // projections: 2 B T D (2 H dh + 2 Hkv dh); QK-norm 4 and RoPE 3 per q/k element
  const int64_t proj = 2 * B * Tn * 8 * (2 * 16 + 2 * 8), qk = B * Tn * (16 + 8);
  CHECK(attention_flops(full, B, Tn) == proj + B * 66 * per_pair + 7 * qk);
  CHECK(attention_flops(tiny_config(0, false, false), B, Tn) == proj + B * 66 * per_pair);
  // sliding window is linear in T
  AttentionConfig w64 = tiny_config(64, false, false);
  const int64_t d1 = attention_flops(w64, 1, 2048) - attention_flops(w64, 1, 1024);
  const int64_t d2 = attention_flops(w64, 1, 4096) - attention_flops(w64, 1, 2048);
  CHECK(d2 == 2 * d1);
}
