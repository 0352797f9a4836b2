// Fused LM head + cross-entropy on the GPU (layers/lm_head.cu) vs the CPU implementation
// (layers/lm_head.cpp, float) on the same x, W, targets and loss mask.
//
// Tolerances:
//  * fp32 storage: fp32 GEMMs (no TF32) whose sums run in another order than Eigen's, and
//    the softmax sums in fp32 (the CPU sums exponentials in double): a few ulps per logit
//    and ~1e-6 relative on lse; loss, z-term, dx, dW within 1e-5.
//  * bf16 storage (CPU reference on the same bf16-rounded x, W): logits are fp32 from the
//    tensor cores (fp32 accumulation), so loss and z-term still agree to ~1e-6: 2e-5.
//    dlogits are rounded to bf16 (2^-9 = 1.95e-3 relative each, independent errors that
//    the backward GEMMs average) and dx is stored in bf16 (one more rounding): 1e-2 for
//    dx and dW (rel_l2 and max_rel), as for the SwiGLU projections.
//  * n_correct: argmax of logits that agree to ~1e-6; a near-tie could flip one row in
//    bf16, so it must match within 1 there (exactly in fp32).
#include "tests/test_cuda_common.h"

#include <stdexcept>

#include "core/cuda/layers.h"

using namespace hysim::cuda;
using namespace hysim::cuda::test;

namespace {

struct Problem {
  int64_t N, D, V;
  std::vector<float> x, W, mask;
  std::vector<int32_t> targets;
};

// Mask with zeros (targets -100 there, never read) and fractional weights, as the CPU test.
Problem make_problem(int64_t N, int64_t D, int64_t V, uint64_t seed, bool bf) {
  Problem p{N, D, V, random_floats(N * D, seed), random_floats(V * D, seed + 1, 2.0 / std::sqrt(double(D))), {}, {}};
  if (bf) p.x = round_to_bf16(p.x), p.W = round_to_bf16(p.W);
  hysim::CounterRng r(seed, 2);
  for (int64_t n = 0; n < N; ++n) {
    const int64_t k = n % 4;
    p.mask.push_back(k == 1 ? 0.f : k == 2 ? 0.5f : k == 3 ? 2.f : 1.f);
    p.targets.push_back(p.mask.back() == 0 ? -100 : int32_t(r.below(n, uint64_t(V))));
  }
  // Every third kept row targets its argmax logit, so that n_correct is not trivially 0.
  std::vector<float> logits(N * V);
  hysim::lm_head_logits(logits.data(), p.x.data(), p.W.data(), N, D, V);
  for (int64_t n = 0; n < N; n += 3)
    if (p.mask[n] != 0)
      p.targets[n] = int32_t(std::max_element(logits.begin() + n * V, logits.begin() + (n + 1) * V) -
                             (logits.begin() + n * V));
  return p;
}

double rms(const std::vector<float>& v) {
  double s = 0;
  for (float x : v) s += double(x) * x;
  return std::sqrt(s / double(v.size()));
}

template <class T>
void check_lm_head(int64_t N, int64_t D, int64_t V, int64_t chunk_rows, double z_loss, uint64_t seed) {
  const bool bf = std::is_same_v<T, bf16>;
  const double tol_loss = bf ? 2e-5 : 1e-5, tol_grad = bf ? 1e-2 : 1e-5;
  std::printf(" %s N=%lld D=%lld V=%lld chunk=%lld z=%g\n", bf ? "bf16" : "fp32", (long long)N, (long long)D,
              (long long)V, (long long)chunk_rows, z_loss);
  const Problem p = make_problem(N, D, V, seed, bf);

  // CPU reference; dW from zero first, then a start of the gradient's own size so that the
  // accumulation is checked without hiding the gradient under a large start value.
  std::vector<float> dx_ref(N * D), g_ref(V * D, 0.f);
  const hysim::LmHeadStats ref = hysim::lm_head_loss(dx_ref.data(), g_ref.data(), p.x.data(), p.W.data(),
                                                     p.targets.data(), p.mask.data(), N, D, V, z_loss, 7, true);
  const std::vector<float> dW0 = random_floats(V * D, seed + 3, rms(g_ref));
  std::vector<float> dW_ref(V * D);
  for (int64_t i = 0; i < V * D; ++i) dW_ref[i] = dW0[i] + g_ref[i];

  Context ctx(size_t(256) << 20);
  DeviceData dd(ctx);
  const T *x_d = dd.upload<T>(p.x), *W_d = dd.upload<T>(p.W);
  const float* mask_d = dd.upload<float>(p.mask);
  int32_t* tgt_d = dd.arena.alloc<int32_t>(N, "targets");
  to_device(ctx, tgt_d, p.targets.data(), N);
  T* dx = dd.alloc_poisoned<T>(N * D);
  float* dW = dd.upload<float>(dW0);
  const hysim::LmHeadStats got =
      lm_head_loss(ctx, dx, dW, x_d, W_d, tgt_d, mask_d, N, D, V, z_loss, chunk_rows, true);
  std::printf("  loss %.8f (cpu %.8f)  z %.3e (cpu %.3e)  correct %lld (cpu %lld)\n", got.loss, ref.loss,
              got.z_loss_term, ref.z_loss_term, (long long)got.n_correct, (long long)ref.n_correct);
  CHECK(std::abs(got.loss - ref.loss) <= tol_loss * std::abs(ref.loss));
  CHECK(std::abs(got.z_loss_term - ref.z_loss_term) <= tol_loss * std::abs(ref.z_loss_term) + 1e-12);
  CHECK(got.weight_sum == ref.weight_sum);
  CHECK(ref.n_correct > 0);
  CHECK(std::abs(got.n_correct - ref.n_correct) <= (bf ? 1 : 0));
  CHECK(report("dx", dd.download(dx, N * D), dx_ref, tol_grad) < tol_grad);
  CHECK(report("dW (accumulated)", dd.download(dW, V * D), dW_ref, tol_grad) < tol_grad);

  // Eval (no gradients): same stats, dx untouched.
  T* dx_eval = dd.alloc_poisoned<T>(N * D);
  const hysim::LmHeadStats ev =
      lm_head_loss(ctx, dx_eval, static_cast<float*>(nullptr), x_d, W_d, tgt_d, mask_d, N, D, V, z_loss, 0, false);
  CHECK(std::abs(ev.loss - ref.loss) <= tol_loss * std::abs(ref.loss));
  const auto untouched = dd.download(dx_eval, N * D);
  CHECK(std::all_of(untouched.begin(), untouched.end(), [](float v) { return std::isnan(v); }));
  CHECK(ctx.scratch.used() == 0);
}

}  // namespace

TEST_CASE("lm_head CUDA fp32 storage matches the CPU") {
  check_lm_head<float>(37, 64, 1000, 16, 1e-2, 1);  // several chunks, last one short; V % 4 == 0
  check_lm_head<float>(50, 40, 997, 0, 0.0, 2);     // V odd (scalar loads), one chunk by default
}

TEST_CASE("lm_head CUDA bf16 storage matches the CPU") {
  check_lm_head<bf16>(64, 128, 5000, 24, 1e-4, 3);
  check_lm_head<bf16>(33, 96, 1003, 0, 1e-2, 4);  // odd V: unaligned GEMM rows
}

TEST_CASE("lm_head CUDA: a bad target throws the CPU's message, outputs untouched; all-masked gives zeros") {
  Context ctx(size_t(64) << 20);
  DeviceData dd(ctx);
  const int64_t N = 12, D = 16, V = 50;
  Problem p = make_problem(N, D, V, 5, false);
  p.targets[6] = int32_t(V);  // mask[6] = 0.5: read, and out of range
  const float *x_d = dd.upload<float>(p.x), *W_d = dd.upload<float>(p.W), *mask_d = dd.upload<float>(p.mask);
  int32_t* tgt_d = dd.arena.alloc<int32_t>(N, "targets");
  to_device(ctx, tgt_d, p.targets.data(), N);
  float* dx = dd.alloc_poisoned<float>(N * D);
  std::string msg;
  try {
    lm_head_loss(ctx, dx, static_cast<float*>(nullptr), x_d, W_d, tgt_d, mask_d, N, D, V, 0.0, 0, true);
  } catch (const std::out_of_range& e) {
    msg = e.what();
  }
  std::printf("  %s\n", msg.c_str());
  CHECK(msg == "lm_head: target 50 at position 6 is outside the vocabulary [0, 50)");
  const auto dx_h = dd.download(dx, N * D);
  CHECK(std::all_of(dx_h.begin(), dx_h.end(), [](float v) { return std::isnan(v); }));

  const float* zero_mask = dd.upload<float>(std::vector<float>(N, 0.f));
  const hysim::LmHeadStats st =
      lm_head_loss(ctx, dx, static_cast<float*>(nullptr), x_d, W_d, tgt_d, zero_mask, N, D, V, 0.0, 0, true);
  CHECK(st.loss == 0);
  CHECK(st.weight_sum == 0);
  const auto dx_z = dd.download(dx, N * D);
  CHECK(std::all_of(dx_z.begin(), dx_z.end(), [](float v) { return v == 0.f; }));
}
