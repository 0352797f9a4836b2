// CPU layer benchmark: forward+backward time of each layer at B=4, T=512, d_model=256
// (float), its achieved GFLOP/s, and that as a fraction of an Eigen SGEMM measured in
// the same run (the practical peak of this machine for dense math).
//
//   build/cpu/bench_layers [--reps N]
//
// FLOPs: the layers' own exact forward counts; forward+backward counts 3x forward
// (the backward of a projection is two GEMMs), the usual convention.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include <omp.h>

#include "core/cpu/gemm.h"
#include "layers/model.h"

using namespace hysim;
using Clock = std::chrono::steady_clock;

static double time_median(const std::function<void()>& f, int reps) {
  f();  // warm up
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    auto t0 = Clock::now();
    f();
    t.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

template <class Cfg, class P, class A, class Fwd, class Bwd>
static void bench_layer(const char* name, const Cfg& c, int64_t B, int64_t T, int64_t flops_fwd, Fwd fwd, Bwd bwd,
                        int reps, double sgemm_gflops) {
  ParamStore<float> store;
  P p, g;
  store.build(p, g, [&](P& pp, auto&& v) { visit_params(c, pp, v); });
  store.init(1);
  ActStore<float> acts;
  A a;
  acts.build(a, [&](A& aa, auto&& v) { visit_acts(c, B, T, aa, v); });
  const int64_t N = B * T * c.d_model;
  std::vector<float> x(N), y(N), dy(N), dx(N);
  CounterRng r(3, 4);
  for (int64_t i = 0; i < N; ++i) x[i] = float(r.normal(i)), dy[i] = float(r.normal(i + N));
  const double t_fwd = time_median([&] { fwd(c, p, a, y.data(), x.data(), B, T); }, reps);
  const double t_all = time_median(
      [&] {
        fwd(c, p, a, y.data(), x.data(), B, T);
        bwd(c, p, g, a, dx.data(), dy.data(), x.data(), B, T);
      },
      reps);
  const double gf = 3.0 * double(flops_fwd) / t_all * 1e-9;
  std::printf("| %-22s | %9.2f | %9.2f | %8.1f | %8.2f | %5.1f%% |\n", name, t_fwd * 1e3, t_all * 1e3,
              3.0 * flops_fwd * 1e-9, gf, 100.0 * gf / sgemm_gflops);
}

int main(int argc, char** argv) {
  int reps = 5;
  for (int i = 1; i + 1 < argc; ++i)
    if (!std::strcmp(argv[i], "--reps")) reps = std::atoi(argv[i + 1]);
  const int64_t B = 4, T = 512, D = 256;

  // Peak reference: an SGEMM of the shape of a d_model projection over the batch.
  const int64_t M = B * T, K = D, Nn = 4 * D;
  std::vector<float> xa(M * K, 0.5f), wa(Nn * K, 0.25f), ya(M * Nn);
  const double t_gemm = time_median([&] { cpu::linear_forward(ya.data(), xa.data(), wa.data(), M, K, Nn); }, 20);
  const double sgemm = 2.0 * M * K * Nn / t_gemm * 1e-9;
  std::printf("hysim CPU layer benchmark: B=%lld T=%lld d_model=%lld, float, %d threads\n", (long long)B,
              (long long)T, (long long)D, omp_get_max_threads());
  std::printf("Eigen SGEMM [%lld x %lld] x [%lld x %lld]^T: %.2f GFLOP/s\n\n", (long long)M, (long long)K,
              (long long)Nn, (long long)K, sgemm);
  std::printf("| layer                  | fwd ms    | fwd+bwd ms | GFLOP  | GFLOP/s  | of SGEMM |\n");
  std::printf("|------------------------|-----------|-----------|----------|----------|--------|\n");

  ModelConfig m;
  m.d_model = D;
  m.n_heads = 4;
  m.n_kv_heads = 4;
  m.d_head = 64;
  m.window = 128;
  m.gdn_n_heads = 4;
  m.gdn_n_v_heads = 4;
  m.gdn_d_head_k = 64;
  m.gdn_d_head_v = 64;
  m.m2_d_state = 64;
  m.m2_headdim = 64;
  m.d_mlp = 688;

  {
    auto c = attention_config(m, 'A');
    bench_layer<AttentionConfig, AttentionParams<float>, AttentionActs<float>>(
        "attention (full)", c, B, T, attention_flops(c, B, T), attention_forward<float>, attention_backward<float>,
        reps, sgemm);
    c = attention_config(m, 'W');
    bench_layer<AttentionConfig, AttentionParams<float>, AttentionActs<float>>(
        "attention (window 128)", c, B, T, attention_flops(c, B, T), attention_forward<float>,
        attention_backward<float>, reps, sgemm);
  }
  {
    auto c = gdn_config(m);
    bench_layer<GdnConfig, GdnParams<float>, GdnActs<float>>("gated_deltanet (chunk 64)", c, B, T,
                                                             gdn_flops(c, B, T), gdn_forward<float>,
                                                             gdn_backward<float>, reps, sgemm);
  }
  {
    auto c = mamba2_config(m);
    bench_layer<Mamba2Config, Mamba2Params<float>, Mamba2Acts<float>>("mamba2 (chunk 64)", c, B, T,
                                                                      mamba2_flops(c, B, T), mamba2_forward<float>,
                                                                      mamba2_backward<float>, reps, sgemm);
  }
  {
    auto c = mlp_config(m);
    bench_layer<SwiGLUConfig, SwiGLUParams<float>, SwiGLUActs<float>>("swiglu_mlp (688)", c, B, T,
                                                                      swiglu_flops(c, B, T), swiglu_forward<float>,
                                                                      swiglu_backward<float>, reps, sgemm);
  }
  return 0;
}
