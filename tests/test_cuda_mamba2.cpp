// Mamba2 chunked SSD core forward on the GPU (layers/mamba2.cu) vs the CPU's
// mamba2_chunk_forward (layers/mamba2.cpp, float) on the same xbc, dt, A.
//
// Tolerances (rel_l2 and max_rel, tests/test_cuda_common.h):
//  * fp32 storage: the same algorithm in fp32 with other summation orders (and the state
//    carried over all chunks): a few ulps; 1e-4 (measured values printed per run).
//  * bf16 storage (CPU reference on the same bf16-rounded inputs): y and chunk_states are
//    stored in bf16 (one rounding, 2^-9 = 1.95e-3 relative) on fp32 arithmetic: 4e-3.
#include "tests/test_cuda_common.h"

#include <cmath>

#include "core/cuda/layers.h"

using namespace hysim::cuda;
using namespace hysim::cuda::test;

namespace {

template <class T>
void check_ssd(int64_t B, int64_t Tn, int64_t d_model, int64_t expand, int64_t P, int64_t G, int64_t N, int64_t chunk,
               uint64_t seed) {
  const bool bf = std::is_same_v<T, bf16>;
  const double tol = bf ? 4e-3 : 1e-4;
  hysim::Mamba2Config c;
  c.d_model = d_model, c.expand = expand, c.headdim = P, c.n_groups = G, c.d_state = N, c.chunk_size = chunk;
  c.validate();
  const int64_t H = c.n_heads(), CD = c.conv_dim(), DI = c.d_inner(), NC = c.n_chunks(Tn);
  std::printf(" %s B=%lld T=%lld H=%lld P=%lld G=%lld N=%lld chunk=%lld\n", bf ? "bf16" : "fp32", (long long)B,
              (long long)Tn, (long long)H, (long long)P, (long long)G, (long long)N, (long long)chunk);
  auto round = [&](std::vector<float> x) { return bf ? round_to_bf16(x) : x; };
  // x ~ N(0, 1); B, C ~ N(0, 1 / N) so that C B^T is O(1); dt = softplus(.) / 10 (as
  // after dt_bias), A = -exp(U(0, 2)) per head: decays per token of about 0.01 to 0.5.
  auto xbc = random_floats(B * Tn * CD, seed);
  for (int64_t r = 0; r < B * Tn; ++r)
    for (int64_t i = DI; i < CD; ++i) xbc[r * CD + i] /= float(std::sqrt(double(N)));
  auto dt = random_floats(B * Tn * H, seed + 1), A = random_floats(H, seed + 2);
  for (auto& v : dt) v = float(0.1 * std::log1p(std::exp(double(v))));
  for (auto& v : A) v = float(-std::exp(1.0 + 0.5 * double(v)));
  xbc = round(xbc), dt = round(dt), A = round(A);

  std::vector<float> y_ref(B * Tn * DI), cs_ref(B * H * NC * P * N);
  hysim::mamba2_chunk_forward(c, y_ref.data(), cs_ref.data(), xbc.data(), dt.data(), A.data(), B, Tn);

  Context ctx(size_t(1) << 20);
  DeviceData dd(ctx);
  const T *xbc_d = dd.upload<T>(xbc), *dt_d = dd.upload<T>(dt), *A_d = dd.upload<T>(A);
  T* y = dd.alloc_poisoned<T>(B * Tn * DI);
  T* cs = dd.alloc_poisoned<T>(int64_t(cs_ref.size()));
  mamba2_chunk_forward(ctx, c, y, cs, xbc_d, dt_d, A_d, B, Tn);
  CHECK(report("y", dd.download(y, B * Tn * DI), y_ref, tol) < tol);
  CHECK(report("chunk_states", dd.download(cs, int64_t(cs_ref.size())), cs_ref, tol) < tol);
}

}  // namespace

TEST_CASE("mamba2 chunked SSD forward CUDA fp32 storage matches the CPU") {
  check_ssd<float>(2, 150, 64, 2, 32, 2, 16, 64, 1);   // 4 heads in 2 groups, last chunk short
  check_ssd<float>(1, 200, 128, 2, 64, 1, 128, 64, 2);  // headdim 64, d_state 128 (Mamba2's usual)
  check_ssd<float>(1, 40, 32, 2, 16, 1, 8, 16, 3);      // small chunks
}

TEST_CASE("mamba2 chunked SSD forward CUDA bf16 storage matches the CPU") {
  check_ssd<bf16>(2, 130, 64, 2, 32, 1, 32, 64, 4);
  check_ssd<bf16>(1, 200, 128, 2, 64, 2, 64, 64, 5);
}
