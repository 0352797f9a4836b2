// Embedding on the GPU (layers/embedding.cu) vs the CPU implementation (layers/embedding.cpp,
// float) on the same inputs.
//
// Tolerances: the forward is a copy, so it must match bit for bit (bf16 too: the CPU
// reference gathers the same bf16-rounded table). The backward sums each token's rows in
// fp32 in position order, then adds the sum once, where the CPU adds row by row: the
// same terms in a different grouping, a few fp32 ulps apart; 1e-5.
#include "tests/test_cuda_common.h"

#include "core/cuda/layers.h"


using namespace hysim::cuda;
using namespace hysim::cuda::test;

static std::vector<int32_t> random_tokens(int64_t N, int64_t V, uint64_t seed) {
  hysim::CounterRng r(seed, 5);
  std::vector<int32_t> t(N);
  for (int64_t n = 0; n < N; ++n) t[n] = int32_t(r.below(n, uint64_t(V)));
  return t;
}

template <class T> void check_embedding(int64_t N, int64_t D, int64_t V, uint64_t seed) {
  const bool bf = std::is_same_v<T, bf16>;
  std::printf(" %s N=%lld D=%lld V=%lld\n", bf ? "bf16" : "fp32", (long long)N, (long long)D, (long long)V);
  Context ctx(16 << 20);
  DeviceData dd(ctx);
  auto round = [&](std::vector<float> v) { return bf ? round_to_bf16(v) : v; };
  auto tokens = random_tokens(N, V, seed);
  tokens[N - 1] = tokens[0];  // a repeat far apart, and V - 1 (the table's last row)
  tokens[N / 2] = int32_t(V - 1);
  const auto wte = round(random_floats(V * D, seed + 1)), dout = round(random_floats(N * D, seed + 2));
  const auto dwte0 = random_floats(V * D, seed + 3);

  std::vector<float> out_ref(N * D), dwte_ref = dwte0;
  hysim::embedding_forward(out_ref.data(), tokens.data(), wte.data(), N, D, V);
  hysim::embedding_backward(dwte_ref.data(), dout.data(), tokens.data(), N, D);

  int32_t* tok_d = dd.arena.alloc<int32_t>(N, "tokens");
  to_device(ctx, tok_d, tokens.data(), N);
  const T *wte_d = dd.upload<T>(wte), *dout_d = dd.upload<T>(dout);
  T* out = dd.alloc_poisoned<T>(N * D);
  hysim::cuda::embedding_forward(ctx, out, tok_d, wte_d, N, D, V);
  const auto out_h = dd.download(out, N * D);
  CHECK(report("out (gather; exact)", out_h, out_ref, 0) == 0.0);
  CHECK(out_h == out_ref);

  float* dwte = dd.upload<float>(dwte0);
  hysim::cuda::embedding_backward(ctx, dwte, dout_d, tok_d, N, D);
  CHECK(report("dwte (accumulated onto random)", dd.download(dwte, V * D), dwte_ref, 1e-5) < 1e-5);

  // Deterministic: the same call twice gives the same bits.
  float* a = dd.upload<float>(dwte0);
  float* b = dd.upload<float>(dwte0);
  hysim::cuda::embedding_backward(ctx, a, dout_d, tok_d, N, D);
  hysim::cuda::embedding_backward(ctx, b, dout_d, tok_d, N, D);
  CHECK(dd.download(a, V * D) == dd.download(b, V * D));
  CHECK(ctx.scratch.used() == 0);
}

TEST_CASE("embedding CUDA matches the CPU (fp32 and bf16 storage)") {
  check_embedding<float>(7, 5, 3, 1);        // every token repeated
  check_embedding<float>(300, 70, 50, 2);    // D not a multiple of anything
  check_embedding<float>(1000, 600, 4000, 3);
  check_embedding<bf16>(300, 70, 50, 4);
  check_embedding<bf16>(1000, 600, 4000, 5);
}

TEST_CASE("embedding CUDA: a token outside [0, V) throws the CPU's message; the context stays usable") {
  Context ctx(1 << 20);
  DeviceData dd(ctx);
  const int64_t N = 16, D = 8, V = 10;
  auto tokens = random_tokens(N, V, 7);
  tokens[12] = int32_t(V);
  tokens[7] = -1;  // the first bad position is the one reported
  const auto wte = random_floats(V * D, 8);
  std::string cpu_msg, gpu_msg;
  std::vector<float> out_ref(N * D);
  try {
    hysim::embedding_forward(out_ref.data(), tokens.data(), wte.data(), N, D, V);
  } catch (const std::out_of_range& e) {
    cpu_msg = e.what();
  }
  int32_t* tok_d = dd.arena.alloc<int32_t>(N, "tokens");
  to_device(ctx, tok_d, tokens.data(), N);
  const float* wte_d = dd.upload<float>(wte);
  float* out = dd.alloc_poisoned<float>(N * D);
  try {
    hysim::cuda::embedding_forward(ctx, out, tok_d, wte_d, N, D, V);
  } catch (const std::out_of_range& e) {
    gpu_msg = e.what();
  }
  std::printf("  GPU: %s\n", gpu_msg.c_str());
  CHECK(!cpu_msg.empty());
  CHECK(gpu_msg == cpu_msg);
  // With valid tokens the next call succeeds (the status word was reset).
  tokens[12] = 0;
  tokens[7] = 1;
  to_device(ctx, tok_d, tokens.data(), N);
  CHECK_NOTHROW(hysim::cuda::embedding_forward(ctx, out, tok_d, wte_d, N, D, V));
  hysim::embedding_forward(out_ref.data(), tokens.data(), wte.data(), N, D, V);
  CHECK(dd.download(out, N * D) == out_ref);
}
