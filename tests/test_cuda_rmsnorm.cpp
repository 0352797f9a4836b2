// RMSNorm on the GPU (layers/rmsnorm.cu) vs the CPU implementation (layers/rmsnorm.cpp, float)
// on the same inputs.
//
// Tolerances:
//  * fp32 storage: the GPU sums squares in fp32 (the CPU in double) and reduces in a
//    different order: differences of a few fp32 ulps, far below 1e-5.
//  * bf16 storage, CPU reference on the same bf16-rounded inputs: arithmetic is fp32, so
//    outputs stored in bf16 (out, dx) differ by one bf16 rounding (relative <= 2^-9 =
//    1.95e-3 per element): tolerance 4e-3. rstd and dw are fp32 outputs computed in fp32
//    from exactly the same input values: 1e-5.
#include "tests/test_cuda_common.h"

#include "core/cuda/layers.h"


using namespace hysim::cuda;
using namespace hysim::cuda::test;

template <class T> void check_rmsnorm(int64_t N, int64_t C, uint64_t seed, double tol_bf16_out) {
  const bool bf = std::is_same_v<T, bf16>;
  const double tol_out = bf ? tol_bf16_out : 1e-5, tol_f32 = 1e-5;
  std::printf(" %s N=%lld C=%lld\n", bf ? "bf16" : "fp32", (long long)N, (long long)C);
  Context ctx(16 << 20);
  DeviceData dd(ctx);
  auto round = [&](std::vector<float> v) { return bf ? round_to_bf16(v) : v; };
  const double eps = 1e-5;
  const auto x = round(random_floats(N * C, seed, 2.0)), w = round(random_floats(C, seed + 1, 0.5)),
             dout = round(random_floats(N * C, seed + 2)), dx0 = round(random_floats(N * C, seed + 3));
  const auto dw0 = random_floats(C, seed + 4);

  std::vector<float> out_ref(N * C), rstd_ref(N), dx_ref(N * C), dx_acc_ref = dx0, dw_ref = dw0;
  hysim::rmsnorm_forward(out_ref.data(), rstd_ref.data(), x.data(), w.data(), N, C, eps);
  hysim::rmsnorm_backward(dx_ref.data(), dw_ref.data(), dout.data(), x.data(), w.data(), rstd_ref.data(), N, C);
  hysim::rmsnorm_backward(dx_acc_ref.data(), static_cast<float*>(nullptr), dout.data(), x.data(), w.data(), rstd_ref.data(),
                   N, C, true);

  const T *x_d = dd.upload<T>(x), *w_d = dd.upload<T>(w), *dout_d = dd.upload<T>(dout);
  T* out = dd.alloc_poisoned<T>(N * C);
  float* rstd = dd.alloc_poisoned<float>(N);
  hysim::cuda::rmsnorm_forward(ctx, out, rstd, x_d, w_d, N, C, eps);
  CHECK(report("out", dd.download(out, N * C), out_ref, tol_out) < tol_out);
  CHECK(report("rstd", dd.download(rstd, N), rstd_ref, tol_f32) < tol_f32);

  T* dx = dd.alloc_poisoned<T>(N * C);
  float* dw = dd.upload<float>(dw0);
  hysim::cuda::rmsnorm_backward(ctx, dx, dw, dout_d, x_d, w_d, rstd, N, C);
  CHECK(report("dx", dd.download(dx, N * C), dx_ref, tol_out) < tol_out);
  CHECK(report("dw (accumulated onto random)", dd.download(dw, C), dw_ref, tol_f32) < tol_f32);

  T* dx_acc = dd.upload<T>(dx0);
  hysim::cuda::rmsnorm_backward(ctx, dx_acc, static_cast<float*>(nullptr), dout_d, x_d, w_d, rstd, N, C, true);
  CHECK(report("dx (accumulate_dx)", dd.download(dx_acc, N * C), dx_acc_ref, tol_out) < tol_out);

  // dw is deterministic: the same call twice gives the same bits.
  float* dw_a = dd.upload<float>(dw0);
  float* dw_b = dd.upload<float>(dw0);
  hysim::cuda::rmsnorm_backward(ctx, static_cast<T*>(nullptr), dw_a, dout_d, x_d, w_d, rstd, N, C);
  hysim::cuda::rmsnorm_backward(ctx, static_cast<T*>(nullptr), dw_b, dout_d, x_d, w_d, rstd, N, C);
  CHECK(dd.download(dw_a, C) == dd.download(dw_b, C));
  CHECK(ctx.scratch.used() == 0);  // scratch given back
}

TEST_CASE("rmsnorm CUDA fp32 storage matches the CPU") {
  check_rmsnorm<float>(5, 12, 1, 0);
  check_rmsnorm<float>(203, 300, 2, 0);  // C not a multiple of 32; several dw row chunks
  check_rmsnorm<float>(64, 2048, 3, 0);
}

TEST_CASE("rmsnorm CUDA bf16 storage matches the CPU within one bf16 rounding") {
  check_rmsnorm<bf16>(5, 12, 4, 4e-3);
  check_rmsnorm<bf16>(203, 300, 5, 4e-3);
  check_rmsnorm<bf16>(64, 2048, 6, 4e-3);
}

TEST_CASE("rmsnorm CUDA: unit RMS output when w = 1") {
  Context ctx(1 << 20);
  DeviceData dd(ctx);
  const int64_t N = 3, C = 256;
  const auto x = random_floats(N * C, 9, 5.0);
  const float* x_d = dd.upload<float>(x);
  const float* w_d = dd.upload<float>(std::vector<float>(C, 1.f));
  float* out = dd.alloc_poisoned<float>(N * C);
  hysim::cuda::rmsnorm_forward(ctx, out, static_cast<float*>(nullptr), x_d, w_d, N, C, 0.0);
  const auto y = dd.download(out, N * C);
  for (int64_t n = 0; n < N; ++n) {
    double ss = 0;
    for (int64_t c = 0; c < C; ++c) ss += double(y[n * C + c]) * y[n * C + c];
    CHECK(ss / C == doctest::Approx(1.0).epsilon(1e-5));
  }
}
