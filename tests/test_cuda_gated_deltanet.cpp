// Gated DeltaNet chunked core forward on the GPU (layers/gated_deltanet.cu) vs the CPU's
// gdn_chunk_forward (layers/gated_deltanet.cpp, float) on the same q, k, v, beta, g.
//
// Tolerances (rel_l2 and max_rel, tests/test_cuda_common.h):
//  * fp32 storage: the same algorithm in fp32 with other summation orders (dot products,
//    the 64-step forward substitution, the state carried over all chunks): differences of
//    a few ulps that grow with the chunk count; 1e-4 (measured values printed per run).
//  * bf16 storage (CPU reference on the same bf16-rounded inputs): o and chunk_states are
//    stored in bf16 (one rounding, 2^-9 = 1.95e-3 relative) on fp32 arithmetic: 4e-3.
#include "tests/test_cuda_common.h"

#include <cmath>

#include "core/cuda/layers.h"

using namespace hysim::cuda;
using namespace hysim::cuda::test;

namespace {

template <class T>
void check_gdn(int64_t B, int64_t Tn, int64_t H, int64_t Hv, int64_t dk, int64_t dv, int64_t chunk, uint64_t seed) {
  const bool bf = std::is_same_v<T, bf16>;
  const double tol = bf ? 4e-3 : 1e-4;
  std::printf(" %s B=%lld T=%lld H=%lld Hv=%lld dk=%lld dv=%lld chunk=%lld\n", bf ? "bf16" : "fp32", (long long)B,
              (long long)Tn, (long long)H, (long long)Hv, (long long)dk, (long long)dv, (long long)chunk);
  hysim::GdnConfig c;
  c.n_heads = H, c.n_v_heads = Hv, c.d_head_k = dk, c.d_head_v = dv, c.chunk_size = chunk;
  const int64_t nqk = B * Tn * H * dk, nv = B * Tn * Hv * dv, ng = B * Tn * Hv, NC = c.n_chunks(Tn);
  auto round = [&](std::vector<float> x) { return bf ? round_to_bf16(x) : x; };
  // q, k L2-normalised per head (as the layer feeds the core); beta = 2 sigmoid(.) in (0, 2)
  // (negative eigenvalues allowed); g = -softplus(.) / 2, log decays in about (-2, 0).
  auto unit_rows = [&](std::vector<float> x) {
    for (int64_t r = 0; r < int64_t(x.size()) / dk; ++r) {
      double s = 0;
      for (int64_t i = 0; i < dk; ++i) s += double(x[r * dk + i]) * x[r * dk + i];
      for (int64_t i = 0; i < dk; ++i) x[r * dk + i] = float(x[r * dk + i] / std::sqrt(s + 1e-6));
    }
    return x;
  };
  const auto q = round(unit_rows(random_floats(nqk, seed))), k = round(unit_rows(random_floats(nqk, seed + 1)));
  const auto v = round(random_floats(nv, seed + 2));
  auto beta = random_floats(ng, seed + 3), g = random_floats(ng, seed + 4);
  for (auto& x : beta) x = float(2.0 / (1.0 + std::exp(-double(x))));
  for (auto& x : g) x = float(-0.5 * std::log1p(std::exp(double(x))));
  beta = round(beta), g = round(g);

  std::vector<float> o_ref(nv), cs_ref(B * Hv * NC * dv * dk);
  hysim::gdn_chunk_forward(c, o_ref.data(), cs_ref.data(), q.data(), k.data(), v.data(), beta.data(), g.data(), B, Tn);

  Context ctx(size_t(1) << 20);
  DeviceData dd(ctx);
  const T *q_d = dd.upload<T>(q), *k_d = dd.upload<T>(k), *v_d = dd.upload<T>(v), *b_d = dd.upload<T>(beta),
          *g_d = dd.upload<T>(g);
  T* o = dd.alloc_poisoned<T>(nv);
  T* cs = dd.alloc_poisoned<T>(int64_t(cs_ref.size()));
  gdn_chunk_forward(ctx, c, o, cs, q_d, k_d, v_d, b_d, g_d, B, Tn);
  CHECK(report("o", dd.download(o, nv), o_ref, tol) < tol);
  // chunk 0's entering state is 0 (max_rel needs a nonzero reference: compare all chunks).
  CHECK(report("chunk_states", dd.download(cs, int64_t(cs_ref.size())), cs_ref, tol) < tol);
}

}  // namespace

TEST_CASE("gdn chunked forward CUDA fp32 storage matches the CPU") {
  check_gdn<float>(2, 150, 2, 4, 32, 48, 64, 1);   // GQA-like value heads, last chunk short
  check_gdn<float>(1, 256, 1, 2, 96, 192, 64, 2);  // Olmo Hybrid head dims
  check_gdn<float>(1, 40, 2, 2, 16, 16, 16, 3);    // small chunks
}

TEST_CASE("gdn chunked forward CUDA bf16 storage matches the CPU") {
  check_gdn<bf16>(2, 130, 2, 2, 64, 64, 64, 4);
  check_gdn<bf16>(1, 200, 1, 1, 128, 128, 64, 5);
}
