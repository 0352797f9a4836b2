// Attention core on the GPU (layers/attention.cu): forward and forward+backward at model
// shapes, timed with CUDA events (median of repeats after warm-up, random bf16 data).
// Prints a table and, per shape, a machine-readable line
//   RESULT <name> <fwd ms> <fwd+bwd ms>
// that bench/gpu/attention_peer.py reads to print the ratio against PyTorch SDPA run on the
// same GPU in the same device call.
//   bench_gpu_attention
// TFLOP/s use the flash-attention convention: forward 4 dh FLOPs per kept (query, key)
// pair and head, backward 2.5 x forward (our backward does 3.5 x: it recomputes S and
// dO V^T in its dQ kernel to stay deterministic).
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
    int64_t B, T, H, Hkv, dh, window;
  };
  const std::vector<Shape> shapes = {
      {"ladder1B_B4_T4096_H16_d128_causal", 4, 4096, 16, 16, 128, 0},
      {"olmo7B_B1_T8192_H30_d128_causal", 1, 8192, 30, 30, 128, 0},
      {"B4_T4096_H32_d64_causal", 4, 4096, 32, 32, 64, 0},
      {"olmo3_B1_T8192_H32_d128_window4096", 1, 8192, 32, 32, 128, 4096},
      {"gqa_B4_T4096_H32_Hkv8_d128_causal", 4, 4096, 32, 8, 128, 0},
  };
  Context ctx(size_t(256) << 20);
  std::printf("%-38s %9s %9s %9s %9s\n", "shape", "fwd ms", "TFLOP/s", "f+b ms", "TFLOP/s");
  for (const Shape& s : shapes) {
    DeviceArena arena(size_t(4) << 30, "bench");
    hysim::AttentionConfig c;
    c.n_heads = s.H, c.n_kv_heads = s.Hkv, c.d_head = s.dh, c.d_model = s.H * s.dh, c.window = s.window;
    const int64_t nq = s.B * s.T * s.H * s.dh, nk = s.B * s.T * s.Hkv * s.dh;
    bf16 *q = random_bf16(ctx, arena, nq, 1), *k = random_bf16(ctx, arena, nk, 2), *v = random_bf16(ctx, arena, nk, 3),
         *dout = random_bf16(ctx, arena, nq, 4);
    bf16 *o = arena.alloc<bf16>(nq), *dq = arena.alloc<bf16>(nq), *dk = arena.alloc<bf16>(nk),
         *dv = arena.alloc<bf16>(nk);
    float* lse = arena.alloc<float>(s.B * s.H * s.T);
    const double fwd_flops = 4.0 * double(s.B * s.H * s.dh) * double(hysim::attention_kept_pairs(c, s.T));
    const double fwd = median_ms(ctx, [&] { attention_core_forward(ctx, c, o, lse, q, k, v, s.B, s.T); }, 3, 20);
    const double fb = median_ms(ctx, [&] {
      attention_core_forward(ctx, c, o, lse, q, k, v, s.B, s.T);
      attention_core_backward(ctx, c, dq, dk, dv, dout, q, k, v, o, lse, s.B, s.T);
    }, 3, 20);
    std::printf("%-38s %9.3f %9.1f %9.3f %9.1f\n", s.name.c_str(), fwd, fwd_flops / fwd / 1e9, fb,
                3.5 * fwd_flops / fb / 1e9);
    std::printf("RESULT %s %.4f %.4f\n", s.name.c_str(), fwd, fb);
  }
  ctx.sync();
  return 0;
}
