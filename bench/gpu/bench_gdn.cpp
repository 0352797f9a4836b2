// Gated DeltaNet chunked core on the GPU (layers/gated_deltanet.cu) at Olmo Hybrid's head
// shape (30 heads, dk 96, dv 192, chunk 64): the forward, the backward (from the saved chunk
// states) and forward + backward, timed with CUDA events (median after warm-up, random
// inputs: L2-normalised q, k; beta in (0, 2); log decays in (-2, 0); dO standard normal).
// Prints a table and `RESULT <name> <ms>` lines that bench/gpu/gdn_peer.py reads for the
// ratio against a chunked GDN forward written in PyTorch, run on the same GPU.
//   bench_gpu_gdn
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "bench/gpu/bench_common.h"
#include "core/cuda/layers.h"
#include "core/rng.h"

using namespace hysim::cuda;
using namespace hysim::cuda::bench;

template <class T> void run(Context& ctx, const std::string& name, int64_t B, int64_t Tn, int64_t heads) {
  hysim::GdnConfig c;
  c.n_heads = heads, c.n_v_heads = heads, c.d_head_k = 96, c.d_head_v = 192, c.chunk_size = 64;
  const int64_t nqk = B * Tn * c.d_qk(), nv = B * Tn * c.d_v(), ng = B * Tn * c.n_v_heads;
  hysim::CounterRng r(7, 1);
  std::vector<float> q(nqk), k(nqk), v(nv), beta(ng), g(ng);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < nqk; ++i) q[i] = float(r.normal(i)), k[i] = float(r.normal(nqk + i));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < nv; ++i) v[i] = float(r.normal(2 * nqk + i));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < ng; ++i) {
    beta[i] = float(2.0 / (1.0 + std::exp(-r.normal(2 * nqk + nv + i))));
    g[i] = float(-0.5 * std::log1p(std::exp(r.normal(2 * nqk + nv + ng + i))));
  }
  for (auto* x : {&q, &k})
#pragma omp parallel for schedule(static)
    for (int64_t row = 0; row < nqk / c.d_head_k; ++row) {
      double s = 0;
      for (int64_t i = 0; i < c.d_head_k; ++i) s += double((*x)[row * c.d_head_k + i]) * (*x)[row * c.d_head_k + i];
      for (int64_t i = 0; i < c.d_head_k; ++i) (*x)[row * c.d_head_k + i] = float((*x)[row * c.d_head_k + i] / std::sqrt(s));
    }
  DeviceArena arena(size_t(4) << 30, "bench");
  const T *q_d = upload<T>(ctx, arena, q), *k_d = upload<T>(ctx, arena, k), *v_d = upload<T>(ctx, arena, v),
          *b_d = upload<T>(ctx, arena, beta), *g_d = upload<T>(ctx, arena, g);
  T* o = arena.alloc<T>(nv);
  T* cs = arena.alloc<T>(B * c.n_v_heads * c.n_chunks(Tn) * c.d_head_v * c.d_head_k);
  T* t_inv = arena.alloc<T>(B * c.n_v_heads * c.n_chunks(Tn) * c.chunk_size * c.chunk_size);
  const auto forward = [&] { gdn_chunk_forward(ctx, c, o, cs, t_inv, q_d, k_d, v_d, b_d, g_d, B, Tn); };
  const double ms = median_ms(ctx, forward, 2, 10);
  std::printf("%-34s %9.3f\n", name.c_str(), ms);
  std::printf("RESULT %s %.4f\n", name.c_str(), ms);

  std::vector<float> d_o(nv);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < nv; ++i) d_o[i] = float(r.normal(2 * nqk + nv + 2 * ng + i));
  const T* do_d = upload<T>(ctx, arena, d_o);
  T *dq = arena.alloc<T>(nqk), *dk = arena.alloc<T>(nqk), *dv = arena.alloc<T>(nv), *db = arena.alloc<T>(ng),
    *dg = arena.alloc<T>(ng);
  auto backward = [&] {
    gdn_chunk_backward(ctx, c, dq, dk, dv, db, dg, do_d, q_d, k_d, v_d, b_d, g_d, cs, t_inv, B, Tn);
  };
  const double bwd = median_ms(ctx, backward, 2, 10);
  const double both = median_ms(ctx, [&] {
    forward();
    backward();
  }, 2, 10);
  const std::string nb = std::string(name) + "_bwd", nfb = std::string(name) + "_fwdbwd";
  std::printf("%-34s %9.3f\n", nb.c_str(), bwd);
  std::printf("RESULT %s %.4f\n", nb.c_str(), bwd);
  std::printf("%-34s %9.3f\n", nfb.c_str(), both);
  std::printf("RESULT %s %.4f\n", nfb.c_str(), both);
}

int main(int argc, char** argv) {
  if (device_count() == 0) {
    std::printf("SKIP: no CUDA device\n");
    return 0;
  }
  // --heads=16: the 1B hybrid's GDN layer (olmo_hybrid_1b.ini); --bf16: skip the fp32 storage.
  int64_t heads = 30;
  bool fp32 = true;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--heads=", 0) == 0) heads = std::atoll(a.c_str() + 8);
    else if (a == "--bf16") fp32 = false;
    else throw std::invalid_argument("bench_gpu_gdn: unknown argument " + a + " (known: --heads=N, --bf16)");
  }
  std::printf("device: %s\n", device_summary().c_str());
  hysim::GdnConfig shape;  // run()'s largest call: the backward's scratch
  shape.n_heads = heads, shape.n_v_heads = heads, shape.d_head_k = 96, shape.d_head_v = 192, shape.chunk_size = 64;
  Context ctx(gdn_chunk_backward_scratch_bytes(shape, 4, 4096, sizeof(float)));
  std::printf("%-34s %9s\n", ("shape (H " + std::to_string(heads) + ", dk 96, dv 192, C 64)").c_str(), "ms");
  const std::string tag = heads == 30 ? "" : "_H" + std::to_string(heads);
  run<bf16>(ctx, "gdn_fwd_B4_T4096" + tag + "_bf16", 4, 4096, heads);
  if (fp32) run<float>(ctx, "gdn_fwd_B4_T4096" + tag + "_fp32", 4, 4096, heads);
  return 0;
}
