// Fused LM head + cross-entropy (layers/lm_head.cu), forward+backward (dx and fp32 dW) at
// the 1B-ladder / Olmo shapes, timed with CUDA events (median after warm-up, random bf16
// data, random targets, no mask). Prints a table and `RESULT <name> <ms>` lines that
// bench/gpu/lm_head_peer.py reads for the ratio against PyTorch on the same GPU.
//   bench_gpu_lm_head
#include <algorithm>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "bench/gpu/bench_common.h"
#include "core/cuda/layers.h"
#include "core/rng.h"

using namespace hysim::cuda;
using namespace hysim::cuda::bench;

int main() {
  if (device_count() == 0) {
    std::printf("SKIP: no CUDA device\n");
    return 0;
  }
  std::printf("device: %s\n", device_summary().c_str());
  struct Shape {
    std::string name;
    int64_t N, D, V;
  };
  const std::vector<Shape> shapes = {{"ladder1B_N16384_D2048_V100352", 16384, 2048, 100352},
                                     {"olmo7B_N8192_D3840_V100352", 8192, 3840, 100352}};
  Context ctx(size_t(2) << 30);  // the default chunk takes 1 GiB of logits + dlogits
  std::printf("%-34s %9s %9s %9s\n", "shape", "f+b ms", "TFLOP/s", "loss");
  for (const Shape& s : shapes) {
    DeviceArena arena(size_t(8) << 30, "bench");
    bf16 *x = random_bf16(ctx, arena, s.N * s.D, 1, 1.0), *W = random_bf16(ctx, arena, s.V * s.D, 2, 0.02);
    std::vector<int32_t> t(s.N);
    hysim::CounterRng r(5, 1);
    for (int64_t n = 0; n < s.N; ++n) t[n] = int32_t(r.below(n, uint64_t(s.V)));
    int32_t* tgt = arena.alloc<int32_t>(s.N);
    to_device(ctx, tgt, t.data(), s.N);
    bf16* dx = arena.alloc<bf16>(s.N * s.D);
    float* dW = arena.alloc<float>(s.V * s.D);
    CUDA_CHECK(cudaMemset(dW, 0, size_t(s.V * s.D) * 4));
    hysim::LmHeadStats st;
    const double ms = median_ms(ctx, [&] {
      st = lm_head_loss(ctx, dx, dW, x, W, tgt, static_cast<const float*>(nullptr), s.N, s.D, s.V, 1e-4, 0, true);
    }, 2, 10);
    const double flops = 3.0 * 2.0 * double(s.N) * s.D * s.V;  // logits, dx, dW GEMMs
    std::printf("%-34s %9.3f %9.1f %9.4f\n", s.name.c_str(), ms, flops / ms / 1e9, st.loss);
    std::printf("RESULT %s %.4f\n", s.name.c_str(), ms);
  }
  return 0;
}
