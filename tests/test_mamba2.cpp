#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <omp.h>

#include <limits>

#include "core/cpu/math.h"
#include "layers/mamba2.h"
#include "tests/gradcheck.h"

using namespace hysim;
using namespace hysim::test;

static Mamba2Config tiny_config(int64_t n_groups, int64_t chunk) {
  Mamba2Config c;
  c.d_model = 8;
  c.expand = 2;  // d_inner 16, 4 heads of 4
  c.headdim = 4;
  c.d_state = 4;
  c.n_groups = n_groups;
  c.conv_size = 4;
  c.chunk_size = chunk;
  c.init_std = 0.3;  // large enough that every branch matters to the loss
  return c;
}

// One layer with its parameters, gradients and activations. Acts start as NaN so that
// any read of an act the forward did not write shows up.
template <class T> struct Layer {
  Mamba2Config c;
  ParamStore<T> store;
  Mamba2Params<T> p, g;
  ActStore<T> acts;
  Mamba2Acts<T> a;
  Layer(const Mamba2Config& cfg, int64_t B, int64_t Tmax) : c(cfg) {
    store.build(p, g, [&](Mamba2Params<T>& q, auto&& v) { visit_params(c, q, v); });
    acts.build(a, [&](Mamba2Acts<T>& q, auto&& v) { visit_acts(c, B, Tmax, q, v); });
    std::fill(acts.data.begin(), acts.data.end(), std::numeric_limits<T>::quiet_NaN());
  }
  void forward(T* y, const T* x, int64_t B, int64_t Tn) { mamba2_forward(c, p, a, y, x, B, Tn); }
  void backward(T* dx, const T* dy, const T* x, int64_t B, int64_t Tn) {
    store.zero_grad();
    mamba2_backward(c, p, g, a, dx, dy, x, B, Tn);
  }
};

// Random parameters with every gradient non-trivial; A = -exp(A_log) around a_scale.
static void randomise(Layer<double>& L, double a_scale, uint64_t seed) {
  L.store.init(seed);
  const int64_t H = L.c.n_heads();
  CounterRng r(seed, 123);
  int64_t k = 0;
  for (int64_t h = 0; h < H; ++h) {
    L.p.A_log[h] = std::log(a_scale) + 0.5 * r.normal(k++);
    L.p.dt_bias[h] = -1.0 + r.normal(k++);  // dt = softplus(.) around 0.1 .. 1
    L.p.D[h] = 1.0 + 0.3 * r.normal(k++);
  }
  for (int64_t i = 0; i < L.c.d_inner(); ++i) L.p.norm_w[i] = 1.0 + 0.3 * r.normal(k++);
  for (int64_t i = 0; i < L.c.conv_dim(); ++i) L.p.conv1d_bias[i] = 0.3 * r.normal(k++);
}

TEST_CASE("mamba2: fp64 gradients of every parameter and x (recurrent and chunked, 1 and 2 groups)") {
  const int64_t B = 2, T = 9;
  for (int64_t groups : {1, 2})
    for (int64_t chunk : {0, 4}) {
      CAPTURE(groups);
      CAPTURE(chunk);
      std::printf("n_groups %lld, chunk %lld\n", (long long)groups, (long long)chunk);
      Layer<double> L(tiny_config(groups, chunk), B, T);
      randomise(L, 1.0, 11 + groups);
      const int64_t D = L.c.d_model;
      auto x = random_vec(B * T * D, 1), R = random_vec(B * T * D, 2);
      std::vector<double> y(B * T * D), dx(B * T * D);
      auto loss = [&] {
        L.forward(y.data(), x.data(), B, T);
        return dot(y.data(), R.data(), B * T * D);
      };
      loss();
      L.backward(dx.data(), R.data(), x.data(), B, T);
      CHECK(grad_rel_error(x.data(), dx.data(), B * T * D, loss, "x", 400) < 1e-6);
      for (size_t i = 0; i < L.store.specs.size(); ++i) {
        const auto& s = L.store.specs[i];
        CAPTURE(s.name);
        double* v = L.store.value.data() + L.store.offsets[i];
        const double* gr = L.store.grad.data() + L.store.offsets[i];
        CHECK(grad_rel_error(v, gr, s.numel(), loss, s.name, 400) < 1e-6);
      }
    }
}

// Full forward + backward of a layer; returns y, dx and all parameter gradients.
struct Result {
  std::vector<double> y, dx, grads;
};
template <class T>
static Result run_layer(Layer<T>& L, const std::vector<double>& x64, const std::vector<double>& R64, int64_t B,
                        int64_t Tn) {
  const int64_t n = B * Tn * L.c.d_model;
  std::vector<T> x(x64.begin(), x64.begin() + n), R(R64.begin(), R64.begin() + n), y(n), dx(n);
  L.forward(y.data(), x.data(), B, Tn);
  L.backward(dx.data(), R.data(), x.data(), B, Tn);
  return {std::vector<double>(y.begin(), y.end()), std::vector<double>(dx.begin(), dx.end()),
          std::vector<double>(L.store.grad.begin(), L.store.grad.end())};
}

TEST_CASE("mamba2: chunked SSD == recurrence, forward and all gradients, many lengths and chunk sizes") {
  const int64_t B = 2, Tmax = 300;
  const std::vector<int64_t> lengths = {1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 31, 33, 50, 63, 64, 65, 100, 127, 129, 200, 257, 300};
  for (int64_t groups : {1, 2}) {
    Layer<double> ref(tiny_config(groups, 0), B, Tmax);
    randomise(ref, 0.1, 21 + groups);  // slow decays: states carry across many chunks
    std::vector<Layer<double>> chunked;
    for (int64_t q : {8, 16, 64}) {
      chunked.emplace_back(tiny_config(groups, q), B, Tmax);
      chunked.back().store.value = ref.store.value;
    }
    auto x = random_vec(B * Tmax * ref.c.d_model, 3), R = random_vec(B * Tmax * ref.c.d_model, 4);
    double worst = 0;
    for (int64_t Tn : lengths) {  // acts reused across lengths, as in training
      const Result r0 = run_layer(ref, x, R, B, Tn);
      for (auto& L : chunked) {
        CAPTURE(groups);
        CAPTURE(Tn);
        CAPTURE(L.c.chunk_size);
        const Result r1 = run_layer(L, x, R, B, Tn);
        const double dy = max_abs_diff(r0.y.data(), r1.y.data(), r0.y.size());
        const double ddx = max_abs_diff(r0.dx.data(), r1.dx.data(), r0.dx.size());
        const double dg = max_abs_diff(r0.grads.data(), r1.grads.data(), r0.grads.size());
        CHECK(dy < 1e-10);
        CHECK(ddx < 1e-10);
        CHECK(dg < 1e-10);
        worst = std::max({worst, dy, ddx, dg});
      }
    }
    std::printf("chunked vs recurrent, n_groups %lld: max abs diff %.2e over y, dx, grads\n", (long long)groups,
                worst);
  }
}

// SSM core inputs in the (x | B | C) row layout, with dt > 0.
struct CoreInputs {
  std::vector<double> xbc, dt;
};
static CoreInputs core_inputs(const Mamba2Config& c, int64_t B, int64_t Tn, uint64_t seed) {
  CoreInputs in{random_vec(B * Tn * c.conv_dim(), seed), random_vec(B * Tn * c.n_heads(), seed + 1)};
  for (double& d : in.dt) d = cpu::softplus(d);
  return in;
}
static std::vector<double> run_core(const Mamba2Config& c, const CoreInputs& in, const std::vector<double>& A,
                                    int64_t B, int64_t Tn) {
  std::vector<double> y(B * Tn * c.d_inner(), std::numeric_limits<double>::quiet_NaN());
  std::vector<double> states(B * c.n_heads() * c.n_chunks(Tn) * c.headdim * c.d_state);
  if (c.chunk_size > 0) mamba2_chunk_forward(c, y.data(), states.data(), in.xbc.data(), in.dt.data(), A.data(), B, Tn);
  else mamba2_recurrent_forward(c, y.data(), in.xbc.data(), in.dt.data(), A.data(), B, Tn);
  return y;
}

// y_t = sum_{s <= t} w(t, s) dt_s (C_t . B_s) x_s for head h, group h / (H / G).
template <class Weight>
static std::vector<double> naive_core(const Mamba2Config& c, const CoreInputs& in, int64_t B, int64_t Tn,
                                      Weight weight) {
  const int64_t H = c.n_heads(), P = c.headdim, N = c.d_state, G = c.n_groups, DI = c.d_inner(), CD = c.conv_dim();
  std::vector<double> y(B * Tn * DI, 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h / (H / G);
      for (int64_t t = 0; t < Tn; ++t)
        for (int64_t s = 0; s <= t; ++s) {
          const double* rt = in.xbc.data() + (b * Tn + t) * CD;
          const double* rs = in.xbc.data() + (b * Tn + s) * CD;
          double cb = 0;
          for (int64_t n = 0; n < N; ++n) cb += rt[DI + G * N + g * N + n] * rs[DI + g * N + n];
          const double coef = weight(t, s) * in.dt[(b * Tn + s) * H + h] * cb;
          for (int64_t p = 0; p < P; ++p) y[(b * Tn + t) * DI + h * P + p] += coef * rs[h * P + p];
        }
    }
  return y;
}

TEST_CASE("mamba2 core: closed forms (instant decay; no decay = causal linear attention), 2 groups") {
  const int64_t B = 2, Tn = 23;
  for (int64_t chunk : {0, 4, 8}) {
    CAPTURE(chunk);
    const Mamba2Config c = tiny_config(2, chunk);
    const CoreInputs in = core_inputs(c, B, Tn, 31);
    {  // exp(dt A) == 0: the state holds only the current token, y_t = dt_t (C_t . B_t) x_t
      const std::vector<double> A(c.n_heads(), -1e6);
      const auto y = run_core(c, in, A, B, Tn);
      const auto ref = naive_core(c, in, B, Tn, [](int64_t t, int64_t s) { return t == s ? 1.0 : 0.0; });
      const double err = max_abs_diff(y.data(), ref.data(), y.size());
      std::printf("  chunk %lld, instant decay: max abs err %.2e\n", (long long)chunk, err);
      CHECK(err < 1e-12);
    }
    {  // A = 0: h_t = sum_{s <= t} dt_s x_s B_s^T
      const std::vector<double> A(c.n_heads(), 0.0);
      const auto y = run_core(c, in, A, B, Tn);
      const auto ref = naive_core(c, in, B, Tn, [](int64_t, int64_t) { return 1.0; });
      const double err = max_abs_diff(y.data(), ref.data(), y.size());
      std::printf("  chunk %lld, no decay: max abs err %.2e\n", (long long)chunk, err);
      CHECK(err < 1e-12);
    }
    {  // per-head decay exp(A (dt_{s+1} + ... + dt_t)) between s and t, checked head by head
      std::vector<double> A(c.n_heads());
      for (int64_t h = 0; h < c.n_heads(); ++h) A[h] = -0.3 * (h + 1);
      const auto y = run_core(c, in, A, B, Tn);
      const int64_t H = c.n_heads(), P = c.headdim, DI = c.d_inner();
      double err = 0;
      for (int64_t h = 0; h < H; ++h) {
        // the naive form with head h's decays in batch row b; only (b, h) entries are compared
        for (int64_t b = 0; b < B; ++b) {
          auto w = [&](int64_t t, int64_t s) {
            double sum = 0;
            for (int64_t r = s + 1; r <= t; ++r) sum += in.dt[(b * Tn + r) * H + h];
            return std::exp(A[h] * sum);
          };
          const auto ref = naive_core(c, in, B, Tn, w);
          for (int64_t t = 0; t < Tn; ++t)
            for (int64_t p = 0; p < P; ++p) {
              const int64_t i = (b * Tn + t) * DI + h * P + p;
              err = std::max(err, std::abs(y[i] - ref[i]));
            }
        }
      }
      std::printf("  chunk %lld, explicit decays: max abs err %.2e\n", (long long)chunk, err);
      CHECK(err < 1e-12);
    }
  }
}

TEST_CASE("mamba2: with B = 0 the layer is the D path: out = W_out norm(D x silu(z)) (independent reference)") {
  const int64_t B = 2, Tn = 11;
  for (int64_t chunk : {0, 4}) {
    CAPTURE(chunk);
    Layer<double> L(tiny_config(2, chunk), B, Tn);
    randomise(L, 1.0, 41);
    const Mamba2Config& c = L.c;
    const int64_t D = c.d_model, DI = c.d_inner(), DIP = c.d_in_proj(), G = c.n_groups;
    const int64_t N = c.d_state, P = c.headdim, K = c.conv_size, GS = DI / G;
    // B = silu(conv(0) + 0) = 0: zero the in_proj rows of B and their conv bias.
    for (int64_t r = 2 * DI; r < 2 * DI + G * N; ++r)
      for (int64_t j = 0; j < D; ++j) L.p.in_proj[r * D + j] = 0;
    for (int64_t ch = DI; ch < DI + G * N; ++ch) L.p.conv1d_bias[ch] = 0;
    auto x = random_vec(B * Tn * D, 5);
    std::vector<double> y(B * Tn * D);
    L.forward(y.data(), x.data(), B, Tn);

    // Reference, written out loop by loop: in_proj, conv + silu on the x channels, gate, group norm, out_proj.
    std::vector<double> zx(B * Tn * DIP, 0.0), ref(B * Tn * D, 0.0);
    for (int64_t i = 0; i < B * Tn; ++i)
      for (int64_t r = 0; r < DIP; ++r)
        for (int64_t j = 0; j < D; ++j) zx[i * DIP + r] += L.p.in_proj[r * D + j] * x[i * D + j];
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < Tn; ++t) {
        const int64_t bt = b * Tn + t;
        std::vector<double> gated(DI), normed(DI);
        for (int64_t i = 0; i < DI; ++i) {
          double pre = L.p.conv1d_bias[i];  // channel i of xBC is x channel i
          for (int64_t j = 0; j < K; ++j) {
            const int64_t ts = t - (K - 1) + j;
            if (ts >= 0) pre += L.p.conv1d_weight[i * K + j] * zx[(b * Tn + ts) * DIP + DI + i];
          }
          const double xi = cpu::silu(pre);
          const double z = zx[bt * DIP + i];
          gated[i] = L.p.D[i / P] * xi * cpu::silu(z);
        }
        for (int64_t g = 0; g < G; ++g) {
          double ss = 0;
          for (int64_t j = 0; j < GS; ++j) ss += gated[g * GS + j] * gated[g * GS + j];
          const double r = 1.0 / std::sqrt(ss / GS + c.norm_eps);
          for (int64_t j = 0; j < GS; ++j) normed[g * GS + j] = gated[g * GS + j] * r * L.p.norm_w[g * GS + j];
        }
        for (int64_t o = 0; o < D; ++o)
          for (int64_t i = 0; i < DI; ++i) ref[bt * D + o] += L.p.out_proj[o * DI + i] * normed[i];
      }
    const double err = max_abs_diff(y.data(), ref.data(), y.size());
    std::printf("  chunk %lld, D-only path: max abs err %.2e (max |y| %.2e)\n", (long long)chunk, err,
                max_abs_diff(y.data(), std::vector<double>(y.size(), 0.0).data(), y.size()));
    CHECK(err < 1e-12);
  }
}

static double rel_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0;
  for (double v : a) m = std::max(m, std::abs(v));
  return max_abs_diff(a.data(), b.data(), a.size()) / std::max(m, 1e-300);
}

TEST_CASE("mamba2: float agrees with double (recurrent and chunked)") {
  const int64_t B = 2, Tn = 70;
  for (int64_t chunk : {0, 16}) {
    CAPTURE(chunk);
    Layer<double> L64(tiny_config(2, chunk), B, Tn);
    randomise(L64, 0.3, 51);
    Layer<float> L32(L64.c, B, Tn);
    for (size_t i = 0; i < L64.store.value.size(); ++i) L32.store.value[i] = float(L64.store.value[i]);
    for (double& v : L64.store.value) v = double(float(v));  // both on the same (float) weights
    auto x = random_vec(B * Tn * L64.c.d_model, 6), R = random_vec(B * Tn * L64.c.d_model, 7);
    for (double& v : x) v = double(float(v));
    for (double& v : R) v = double(float(v));
    const Result r64 = run_layer(L64, x, R, B, Tn), r32 = run_layer(L32, x, R, B, Tn);
    const double ey = rel_diff(r64.y, r32.y), edx = rel_diff(r64.dx, r32.dx);
    double eg = 0;
    for (size_t i = 0; i < L64.store.specs.size(); ++i) {
      const int64_t o = L64.store.offsets[i], n = L64.store.specs[i].numel();
      const std::vector<double> a(r64.grads.begin() + o, r64.grads.begin() + o + n);
      const std::vector<double> b(r32.grads.begin() + o, r32.grads.begin() + o + n);
      eg = std::max(eg, rel_diff(a, b));
    }
    std::printf("  chunk %lld, float vs double rel err: y %.2e, dx %.2e, worst param grad %.2e\n", (long long)chunk,
                ey, edx, eg);
    CHECK(ey < 1e-5);
    CHECK(edx < 1e-5);
    CHECK(eg < 1e-4);
  }
}

TEST_CASE("mamba2: identical results with 1 and 2 OpenMP threads") {
  const int64_t B = 3, Tn = 150;
  for (int64_t chunk : {0, 64}) {
    CAPTURE(chunk);
    Mamba2Config c = tiny_config(2, chunk);
    c.d_model = 32;  // big enough that Eigen's GEMMs run in parallel
    Layer<double> L(c, B, Tn);
    randomise(L, 0.3, 61);
    auto x = random_vec(B * Tn * c.d_model, 8), R = random_vec(B * Tn * c.d_model, 9);
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

TEST_CASE("mamba2: FLOP count") {
  // Recurrent: projections, conv, gates and norm are shared; the core is 2 + P + 5 P N per token and head.
  Mamba2Config r = tiny_config(1, 0), q = tiny_config(1, 4);
  const int64_t B = 2, Tn = 9, H = r.n_heads(), P = r.headdim, N = r.d_state;
  const int64_t rec_core = B * H * Tn * (2 + P + 5 * P * N);
  int64_t chunk_core = 0;
  for (int64_t L : {4, 4, 1})
    chunk_core += B * H * (6 * L + L * (L + 1) + 2 * L * L * (N + 1 + P) + 4 * L * N * P + 2 * L * P + L * N + 2 * P * N);
  CHECK(mamba2_flops(r, B, Tn) - rec_core == mamba2_flops(q, B, Tn) - chunk_core);
  // The projections dominate and are exactly 2 B T D (d_in_proj + d_inner).
  const int64_t proj = 2 * B * Tn * r.d_model * (r.d_in_proj() + r.d_inner());
  CHECK(mamba2_flops(r, B, Tn) > proj);
  CHECK(mamba2_flops(r, B, Tn) < 2 * proj);
}
