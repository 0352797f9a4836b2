// GPU throughput check: cuBLASLt bf16 GEMMs at 8192^3 (forward and both backward products)
// and the bf16 RMSNorm / SwiGLU layers at an Olmo-7B-like shape, timed with CUDA events
// (median of repeats after warm-up, random data). Prints one table.
//   bench_gpu_gemm [size=8192]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

#include "core/cuda/gemm.h"
#include "bench/gpu/bench_common.h"
#include "core/cuda/layers.h"
#include "core/rng.h"

using namespace hysim::cuda;
using namespace hysim::cuda::bench;

// Random bf16 values N(0, std) generated on the host, converted on the device.
int main(int argc, char** argv) {
  if (device_count() == 0) {
    std::printf("SKIP: no CUDA device\n");
    return 0;
  }
  const int64_t S = argc > 1 ? std::atoll(argv[1]) : 8192;
  std::printf("device: %s\n", device_summary().c_str());
  Context ctx(size_t(2) << 30);
  DeviceArena arena(size_t(12) << 30, "bench");

  std::printf("%-44s %10s %10s\n", "op", "ms", "TFLOP/s");
  {
    bf16 *x = random_bf16(ctx, arena, S * S, 1, 1.0), *W = random_bf16(ctx, arena, S * S, 2, 0.01),
         *dy = random_bf16(ctx, arena, S * S, 3, 1.0);
    bf16* y = arena.alloc<bf16>(S * S);
    float* dW = arena.alloc<float>(S * S);
    CUDA_CHECK(cudaMemset(dW, 0, size_t(S * S) * 4));
    const double fl = 2.0 * S * S * S;
    double ms = median_ms(ctx, [&] { linear_forward<bf16, bf16>(ctx, y, x, W, S, S, S); });
    std::printf("%-44s %10.3f %10.1f\n", ("linear_forward bf16 " + std::to_string(S) + "^3").c_str(), ms, fl / ms / 1e9);
    ms = median_ms(ctx, [&] { linear_backward<bf16, bf16>(ctx, y, nullptr, dy, x, W, S, S, S); });
    std::printf("%-44s %10.3f %10.1f\n", "linear_backward dx = dy W", ms, fl / ms / 1e9);
    ms = median_ms(ctx, [&] { linear_backward<bf16, bf16>(ctx, static_cast<bf16*>(nullptr), dW, dy, x, W, S, S, S); });
    std::printf("%-44s %10.3f %10.1f\n", "linear_backward dW += dy^T x (fp32 dW)", ms, fl / ms / 1e9);
    arena.reset();
  }
  {
    // Olmo-Hybrid-7B-like MLP and norm at 16k tokens: N = 16384, D = 3840, F = 11008.
    const int64_t N = 16384, D = 3840, F = 11008;
    hysim::SwiGLUConfig cfg;
    cfg.d_model = D;
    cfg.d_hidden = F;
    hysim::SwiGLUParams<bf16> p{random_bf16(ctx, arena, F * D, 4, 0.02), random_bf16(ctx, arena, F * D, 5, 0.02),
                                random_bf16(ctx, arena, D * F, 6, 0.02)};
    hysim::SwiGLUParams<float> g{arena.alloc<float>(F * D), arena.alloc<float>(F * D), arena.alloc<float>(D * F)};
    hysim::SwiGLUActs<bf16> a{arena.alloc<bf16>(N * F), arena.alloc<bf16>(N * F), arena.alloc<bf16>(N * F)};
    bf16 *x = random_bf16(ctx, arena, N * D, 7, 1.0), *dy = random_bf16(ctx, arena, N * D, 8, 1.0);
    bf16 *y = arena.alloc<bf16>(N * D), *dx = arena.alloc<bf16>(N * D);
    const double fl = double(hysim::swiglu_flops(cfg, 1, N));
    double ms = median_ms(ctx, [&] { swiglu_forward(ctx, cfg, p, a, y, x, 1, N); });
    std::printf("%-44s %10.3f %10.1f\n", "swiglu_forward N=16384 D=3840 F=11008", ms, fl / ms / 1e9);
    ms = median_ms(ctx, [&] { swiglu_backward(ctx, cfg, p, g, a, dx, dy, x, 1, N); });
    std::printf("%-44s %10.3f %10.1f\n", "swiglu_backward (2x forward FLOPs)", ms, 2 * fl / ms / 1e9);

    bf16* w = random_bf16(ctx, arena, D, 9, 1.0);
    float* rstd = arena.alloc<float>(N);
    float* dw = arena.alloc<float>(D);
    CUDA_CHECK(cudaMemset(dw, 0, D * 4));
    ms = median_ms(ctx, [&] { rmsnorm_forward(ctx, y, rstd, x, w, N, D, 1e-6); });
    std::printf("%-44s %10.3f %7.0f GB/s\n", "rmsnorm_forward bf16 N=16384 C=3840", ms, 2.0 * N * D * 2 / ms / 1e6);
    ms = median_ms(ctx, [&] { rmsnorm_backward(ctx, dx, dw, dy, x, w, rstd, N, D); });
    std::printf("%-44s %10.3f %7.0f GB/s\n", "rmsnorm_backward (dx + dw)", ms, 3.0 * N * D * 2 / ms / 1e6);
  }
  ctx.sync();
  return 0;
}
