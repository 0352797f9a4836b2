// GPU runtime foundation: error checks, DeviceArena, bf16 conversion, cuBLASLt GEMMs vs
// core/cpu/gemm.h.
#include "tests/test_cuda_common.h"

#include <cstring>

#include "core/cpu/gemm.h"
#include "core/cuda/gemm.h"


using namespace hysim::cuda;
using namespace hysim::cuda::test;

static bool contains(const std::string& s, const std::string& sub) { return s.find(sub) != std::string::npos; }

TEST_CASE("CUDA_CHECK / CUBLAS_CHECK messages name the call, file:line and shapes") {
  Context ctx(1 << 20);
  std::string msg;
  try {
    void* p = nullptr;
    CUDA_CHECK(cudaMalloc(&p, size_t(1) << 60), shape_str("huge buffer", int64_t(1) << 60));
  } catch (const std::runtime_error& e) {
    msg = e.what();
  }
  cudaGetLastError();
  std::printf("  CUDA_CHECK message: %s\n", msg.c_str());
  CHECK(contains(msg, "cudaMalloc(&p, size_t(1) << 60)"));
  CHECK(contains(msg, "test_cuda_runtime.cpp:"));
  CHECK(contains(msg, "cudaErrorMemoryAllocation"));
  CHECK(contains(msg, "huge buffer [1152921504606846976]"));

  msg.clear();
  try {
    cublasLtMatmulDesc_t d = nullptr;
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&d, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t t = CUBLAS_OP_T;
    // Wrong size for the attribute: cuBLASLt answers CUBLAS_STATUS_INVALID_VALUE.
    const cublasStatus_t s = cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof(t) - 1);
    cublasLtMatmulDescDestroy(d);
    CUBLAS_CHECK(s, "transa attribute");
  } catch (const std::runtime_error& e) {
    msg = e.what();
  }
  std::printf("  CUBLAS_CHECK message: %s\n", msg.c_str());
  CHECK(contains(msg, "CUBLAS_STATUS_INVALID_VALUE"));
  CHECK(contains(msg, "transa attribute"));

  // Shape errors of the GEMM wrappers name the shapes.
  msg.clear();
  try {
    linear_forward<float, float>(ctx, nullptr, nullptr, nullptr, 4, -3, 5);
  } catch (const std::invalid_argument& e) {
    msg = e.what();
  }
  CHECK(contains(msg, "[4, -3, 5]"));
}

TEST_CASE("DeviceArena: aligned bump allocation, scopes, overflow names the request") {
  DeviceArena a(10000, "unit");
  CHECK(a.capacity() == 10240);  // rounded up to 256
  float* p = a.alloc<float>(3, "p");
  char* q = a.alloc<char>(1, "q");
  CHECK(reinterpret_cast<uintptr_t>(p) % 256 == 0);
  CHECK(reinterpret_cast<uintptr_t>(q) % 256 == 0);
  CHECK(q == reinterpret_cast<char*>(p) + 256);
  {
    ArenaScope s(a);
    a.alloc<double>(100, "scoped");
    CHECK(a.used() == 512 + 1024);
  }
  CHECK(a.used() == 512);
  CHECK(a.peak() == 512 + 1024);
  std::string msg;
  try {
    a.alloc<float>(100000, "too big");
  } catch (const std::runtime_error& e) {
    msg = e.what();
  }
  std::printf("  arena overflow: %s\n", msg.c_str());
  CHECK(contains(msg, "'unit'"));
  CHECK(contains(msg, "'too big'"));
  CHECK(contains(msg, "400000 bytes"));
  CHECK(a.used() == 512);  // a failed request allocates nothing
}

TEST_CASE("bf16 <-> fp32 conversion kernels round as the host does (bit-exact)") {
  Context ctx(1 << 20);
  DeviceData dd(ctx);
  auto x = random_floats(100003, 1, 3.0);
  // Edge values: ties, subnormals, large, infinities, negative zero.
  const float specials[] = {0.f, -0.f, 1.f, 1.00390625f /*tie: 1 + 2^-8*/, 1.01171875f /*tie, odd*/, 1e-40f,
                            -3e38f, 3.4e38f, INFINITY, -INFINITY, 65504.f, 1.0e-3f};
  for (size_t i = 0; i < sizeof specials / sizeof specials[0]; ++i) x[i] = specials[i];
  const int64_t n = int64_t(x.size());
  float* src = dd.upload<float>(x);
  bf16* mid = dd.alloc_poisoned<bf16>(n);
  float* back = dd.alloc_poisoned<float>(n);
  f32_to_bf16(ctx, mid, src, n);
  bf16_to_f32(ctx, back, mid, n);
  std::vector<bf16> got(n);
  to_host(ctx, got.data(), mid, n);
  const auto want = to_bf16_host(x);
  int64_t bit_mismatch = 0;
  for (int64_t i = 0; i < n; ++i) bit_mismatch += std::memcmp(&got[i], &want[i], sizeof(bf16)) != 0;
  CHECK(bit_mismatch == 0);
  const auto back_h = dd.download(back, n);
  const auto want_back = to_f32_host(want);
  int64_t back_mismatch = 0;
  for (int64_t i = 0; i < n; ++i) back_mismatch += std::memcmp(&back_h[i], &want_back[i], sizeof(float)) != 0;
  CHECK(back_mismatch == 0);
  // Round-to-nearest-even: 1 + 2^-8 is a tie between 1 and 1 + 2^-7 and goes to 1.
  CHECK(want_back[3] == 1.f);
  CHECK(want_back[4] == 1.015625f);
}

// GEMMs against core/cpu/gemm.h. Tolerances:
//  * fp32 operands (plain fp32 arithmetic, no TF32) and bf16 operands with fp32 outputs:
//    the products of bf16 values are exact in fp32, so both differ from the CPU float result
//    only by the order of fp32 accumulation: ~K * 2^-24 at worst, far below 1e-5.
//  * bf16 outputs add one rounding to bf16 (relative <= 2^-9 = 1.95e-3 per element): 4e-3.
//  * bf16 outputs that accumulate (y += ..., dx += ...): measured on the H100 (2026-11-23)
//    rel_l2 2.4e-3 against 1.7e-3 for overwrite, i.e. sqrt(2) x: cuBLASLt rounds the
//    product to bf16 before adding C and rounds the sum again. Two roundings of terms up
//    to max|ref| in size give |err| <= 2 x 2^-9 x (|x W| + |y0|) <= ~3 x 2^-9 max|ref| =
//    5.9e-3 (max_rel measured 5.8e-3): 8e-3.
template <class Tin, class Tout> void check_gemm(int64_t N, int64_t I, int64_t O, uint64_t seed, double tol) {
  Context ctx(1 << 20);
  DeviceData dd(ctx);
  const bool bf = std::is_same_v<Tin, bf16>;
  auto round = [&](std::vector<float> v) { return bf ? round_to_bf16(v) : v; };
  const auto x = round(random_floats(N * I, seed)), W = round(random_floats(O * I, seed + 1, 0.2)),
             dy = round(random_floats(N * O, seed + 2));
  const auto y0 = round(random_floats(N * O, seed + 3)), dx0 = round(random_floats(N * I, seed + 4)),
             dW0 = random_floats(O * I, seed + 5);
  const Tin *x_d = dd.upload<Tin>(x), *W_d = dd.upload<Tin>(W), *dy_d = dd.upload<Tin>(dy);
  const std::string tag = std::string(bf ? "bf16" : "fp32") + "->" + (std::is_same_v<Tout, bf16> ? "bf16" : "fp32") +
                          " N,I,O=" + std::to_string(N) + "," + std::to_string(I) + "," + std::to_string(O);
  std::printf(" %s\n", tag.c_str());

  // Forward, overwrite and accumulate.
  std::vector<float> y_ref(N * O), y_acc_ref = y0;
  hysim::cpu::linear_forward(y_ref.data(), x.data(), W.data(), N, I, O);
  hysim::cpu::linear_forward(y_acc_ref.data(), x.data(), W.data(), N, I, O, true);
  Tout* y = dd.alloc_poisoned<Tout>(N * O);
  linear_forward<Tin, Tout>(ctx, y, x_d, W_d, N, I, O);
  CHECK(report("y = x W^T", dd.download(y, N * O), y_ref, tol) < tol);
  Tout* y_acc = dd.upload<Tout>(y0);
  linear_forward<Tin, Tout>(ctx, y_acc, x_d, W_d, N, I, O, true);
  const double tol_acc = std::is_same_v<Tout, bf16> ? 8e-3 : tol;
  CHECK(report("y += x W^T", dd.download(y_acc, N * O), y_acc_ref, tol_acc) < tol_acc);

  // Backward: dx overwrite, dx accumulate, dW accumulate (fp32, so the fp32 tolerance
  // applies to dW whatever the output type).
  std::vector<float> dx_ref(N * I), dx_acc_ref = dx0, dW_ref = dW0;
  hysim::cpu::linear_backward(dx_ref.data(), dW_ref.data(), dy.data(), x.data(), W.data(), N, I, O);
  hysim::cpu::linear_backward(dx_acc_ref.data(), static_cast<float*>(nullptr), dy.data(), x.data(), W.data(), N, I, O, true);
  Tout* dx = dd.alloc_poisoned<Tout>(N * I);
  float* dW = dd.upload<float>(dW0);
  linear_backward<Tin, Tout>(ctx, dx, dW, dy_d, x_d, W_d, N, I, O);
  CHECK(report("dx = dy W", dd.download(dx, N * I), dx_ref, tol) < tol);
  CHECK(report("dW += dy^T x", dd.download(dW, O * I), dW_ref, 1e-5) < 1e-5);
  Tout* dx_acc = dd.upload<Tout>(dx0);
  linear_backward<Tin, Tout>(ctx, dx_acc, nullptr, dy_d, x_d, W_d, N, I, O, true);
  CHECK(report("dx += dy W", dd.download(dx_acc, N * I), dx_acc_ref, tol_acc) < tol_acc);

  // Deterministic: the same accumulating calls twice give the same bits.
  Tout* y_a = dd.upload<Tout>(y0);
  Tout* y_b = dd.upload<Tout>(y0);
  float* dW_a = dd.upload<float>(dW0);
  float* dW_b = dd.upload<float>(dW0);
  linear_forward<Tin, Tout>(ctx, y_a, x_d, W_d, N, I, O, true);
  linear_forward<Tin, Tout>(ctx, y_b, x_d, W_d, N, I, O, true);
  linear_backward<Tin, Tout>(ctx, static_cast<Tout*>(nullptr), dW_a, dy_d, x_d, W_d, N, I, O);
  linear_backward<Tin, Tout>(ctx, static_cast<Tout*>(nullptr), dW_b, dy_d, x_d, W_d, N, I, O);
  CHECK(dd.download(y_a, N * O) == dd.download(y_b, N * O));
  CHECK(dd.download(dW_a, O * I) == dd.download(dW_b, O * I));
  ctx.sync();
}

TEST_CASE("linear_forward / linear_backward (cuBLASLt) match core/cpu/gemm.h") {
  // Odd shapes (no dimension a multiple of 8: unaligned rows, edge tiles) and a
  // tensor-core-friendly one.
  check_gemm<float, float>(37, 70, 45, 10, 1e-5);
  check_gemm<float, float>(256, 512, 384, 20, 1e-5);
  check_gemm<bf16, float>(37, 70, 45, 30, 1e-5);
  check_gemm<bf16, float>(256, 512, 384, 40, 1e-5);
  check_gemm<bf16, bf16>(37, 70, 45, 50, 4e-3);
  check_gemm<bf16, bf16>(256, 512, 384, 60, 4e-3);
  check_gemm<bf16, bf16>(64, 4096, 64, 70, 4e-3);  // long reduction, few outputs: split-K territory
  check_gemm<bf16, float>(64, 4096, 64, 80, 1e-5);
}

TEST_CASE("GEMM wrappers: zero-sized problems do nothing or zero-fill") {
  Context ctx(1 << 20);
  DeviceData dd(ctx);
  float* y = dd.alloc_poisoned<float>(6);
  linear_forward<float, float>(ctx, y, nullptr, nullptr, 2, 0, 3);  // empty reduction: y = 0
  const auto h = dd.download(y, 6);
  for (float v : h) CHECK(v == 0.f);
  linear_forward<float, float>(ctx, nullptr, nullptr, nullptr, 0, 5, 3);  // no rows: nothing touched
  ctx.sync();
}
