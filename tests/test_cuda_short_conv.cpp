// Causal depthwise short convolution on the GPU (layers/short_conv.cu) vs the CPU's
// short_conv_forward/backward (layers/short_conv.cpp, float) on the same inputs: with and
// without bias and SiLU, T not a multiple of the dw row chunk (128), C not a multiple of 32.
// The backward gets the same dout, x, pre on both sides (pre from the CPU forward, rounded
// to the storage type), and dw, dbias start from nonzero values (they accumulate).
//
// Tolerances (rel_l2 and max_rel, tests/test_cuda_common.h):
//  * fp32 storage: out, pre, dx sum at most K taps in the CPU's order, silu by expf (a few
//    ulps); dw, dbias sum B T products in another order (row chunks): 1e-5.
//  * bf16 storage: out, pre, dx are stored in bf16 (one rounding, 2^-9 = 1.95e-3
//    relative): 4e-3. dw, dbias are fp32 sums of products of the same bf16 values on both
//    sides: 1e-5.
#include "tests/test_cuda_common.h"

#include "core/cuda/layers.h"
#include "layers/short_conv.h"

using namespace hysim::cuda;
using namespace hysim::cuda::test;

namespace {

template <class T>
void check_short_conv(int64_t B, int64_t Tn, int64_t C, int64_t K, bool with_bias, bool silu, uint64_t seed) {
  const bool bf = std::is_same_v<T, bf16>;
  const double tol = bf ? 4e-3 : 1e-5, tol_param = 1e-5;
  std::printf(" %s B=%lld T=%lld C=%lld K=%lld bias=%d silu=%d\n", bf ? "bf16" : "fp32", (long long)B, (long long)Tn,
              (long long)C, (long long)K, int(with_bias), int(silu));
  auto round = [&](std::vector<float> x) { return bf ? round_to_bf16(x) : x; };
  const int64_t n = B * Tn * C;
  const auto x = round(random_floats(n, seed)), w = round(random_floats(C * K, seed + 1, 0.5));
  const auto bias = round(random_floats(C, seed + 2, 0.5)), dout = round(random_floats(n, seed + 3));
  const auto dw0 = random_floats(C * K, seed + 4), dbias0 = random_floats(C, seed + 5);
  const float* bias_h = with_bias ? bias.data() : nullptr;

  std::vector<float> out_ref(n), pre_ref(n), dx_ref(n), dw_ref = dw0, dbias_ref = dbias0;
  hysim::short_conv_forward(out_ref.data(), pre_ref.data(), x.data(), w.data(), bias_h, B, Tn, C, K, silu);
  const auto pre_in = round(pre_ref);  // the backward's input on both sides
  hysim::short_conv_backward(dx_ref.data(), dw_ref.data(), with_bias ? dbias_ref.data() : nullptr, dout.data(),
                             x.data(), pre_in.data(), w.data(), B, Tn, C, K, silu);

  Context ctx(size_t(16) << 20);
  DeviceData dd(ctx);
  const T *x_d = dd.upload<T>(x), *w_d = dd.upload<T>(w), *dout_d = dd.upload<T>(dout),
          *pre_in_d = dd.upload<T>(pre_in);
  const T* bias_d = with_bias ? dd.upload<T>(bias) : nullptr;
  float *dw_d = dd.upload<float>(dw0), *dbias_d = dd.upload<float>(dbias0);
  T* out = dd.alloc_poisoned<T>(n);
  T* pre = silu ? dd.alloc_poisoned<T>(n) : nullptr;
  T* dx = dd.alloc_poisoned<T>(n);
  short_conv_forward(ctx, out, pre, x_d, w_d, bias_d, B, Tn, C, K, silu);
  short_conv_backward(ctx, dx, dw_d, with_bias ? dbias_d : nullptr, dout_d, x_d, silu ? pre_in_d : nullptr, w_d, B,
                      Tn, C, K, silu);
  CHECK(report("out", dd.download(out, n), out_ref, tol) < tol);
  if (silu) CHECK(report("pre", dd.download(pre, n), pre_ref, tol) < tol);
  CHECK(report("dx", dd.download(dx, n), dx_ref, tol) < tol);
  CHECK(report("dw (accumulated)", dd.download(dw_d, C * K), dw_ref, tol_param) < tol_param);
  const auto dbias_got = dd.download(dbias_d, C);
  if (with_bias) CHECK(report("dbias (accumulated)", dbias_got, dbias_ref, tol_param) < tol_param);
  else CHECK(dbias_got == dbias0);  // untouched when null
}

}  // namespace

TEST_CASE("short_conv CUDA fp32 storage matches the CPU") {
  check_short_conv<float>(2, 150, 100, 4, true, true, 1);   // ragged T (300 rows: 3 dw chunks), C % 32 != 0
  check_short_conv<float>(3, 37, 70, 4, false, true, 2);    // no bias
  check_short_conv<float>(1, 200, 64, 4, true, false, 3);   // no SiLU
  check_short_conv<float>(2, 3, 33, 4, false, false, 4);    // T < K
  check_short_conv<float>(2, 129, 45, 3, true, true, 5);    // K = 3
}

TEST_CASE("short_conv CUDA bf16 storage matches the CPU") {
  check_short_conv<bf16>(2, 150, 100, 4, true, true, 6);
  check_short_conv<bf16>(3, 37, 70, 4, false, true, 7);
  check_short_conv<bf16>(1, 200, 64, 4, true, false, 8);
}

TEST_CASE("short_conv CUDA backward is deterministic") {
  const int64_t B = 2, Tn = 300, C = 96, K = 4, n = B * Tn * C;
  Context ctx(size_t(16) << 20);
  DeviceData dd(ctx);
  const bf16 *x = dd.upload<bf16>(random_floats(n, 20)), *w = dd.upload<bf16>(random_floats(C * K, 21)),
             *dout = dd.upload<bf16>(random_floats(n, 22)), *pre = dd.upload<bf16>(random_floats(n, 23));
  bf16* dx = dd.alloc_poisoned<bf16>(n);
  std::vector<float> first;
  for (int rep = 0; rep < 2; ++rep) {
    float* dw = dd.upload<float>(std::vector<float>(C * K + C, 0.f));
    short_conv_backward(ctx, dx, dw, dw + C * K, dout, x, pre, w, B, Tn, C, K, true);
    const auto got = dd.download(dw, C * K + C);
    if (rep == 0) first = got;
    else CHECK(got == first);
  }
}
