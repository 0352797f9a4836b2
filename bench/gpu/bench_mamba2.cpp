// Mamba2 on the GPU (layers/mamba2.cu) at the 1B ladder's Mamba2 shape (d_model 2048,
// expand 2: 64 heads of headdim 64, d_state 128, one group, chunk 64), B 4, T 4096, timed
// with CUDA events (median after warm-up, random inputs as the test):
//  * the chunked SSD core forward (bf16 and fp32 storage) and backward (bf16);
//  * the full layer (in_proj, conv, SSD, gate, group RMSNorm, out_proj) forward, and
//    forward + backward, bf16 with fp32 parameter gradients.
// Prints `RESULT <name> <ms>` lines; bench/gpu/mamba2_peer.py reads the core forward's for
// the ratio against a chunked SSD forward written in PyTorch, run on the same GPU.
//   bench_gpu_mamba2
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <type_traits>
#include <vector>

#include "bench/gpu/bench_common.h"
#include "core/cuda/layers.h"
#include "core/rng.h"

using namespace hysim::cuda;
using namespace hysim::cuda::bench;

template <class T> void run(Context& ctx, const char* name, int64_t B, int64_t Tn) {
  hysim::Mamba2Config c;
  c.d_model = 2048, c.expand = 2, c.headdim = 64, c.d_state = 128, c.n_groups = 1, c.chunk_size = 64;
  const int64_t H = c.n_heads(), CD = c.conv_dim(), DI = c.d_inner(), N = c.d_state;
  std::vector<float> xbc(B * Tn * CD), dt(B * Tn * H), A(H);
  hysim::CounterRng r(9, 1);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < int64_t(xbc.size()); ++i)
    xbc[i] = float(r.normal(i) / ((i % CD) >= DI ? std::sqrt(double(N)) : 1.0));
  for (int64_t i = 0; i < int64_t(dt.size()); ++i) dt[i] = float(0.1 * std::log1p(std::exp(r.normal(int64_t(xbc.size()) + i))));
  for (int64_t h = 0; h < H; ++h) A[h] = float(-std::exp(1.0 + 0.5 * r.normal(int64_t(xbc.size() + dt.size()) + h)));
  DeviceArena arena(size_t(4) << 30, "bench");
  const T *xbc_d = upload<T>(ctx, arena, xbc), *dt_d = upload<T>(ctx, arena, dt), *A_d = upload<T>(ctx, arena, A);
  T* y = arena.alloc<T>(B * Tn * DI);
  T* cs = arena.alloc<T>(B * H * c.n_chunks(Tn) * c.headdim * N);
  for (int i = 0; i < 2; ++i) mamba2_chunk_forward(ctx, c, y, cs, xbc_d, dt_d, A_d, B, Tn);
  std::vector<float> t;
  cudaEvent_t a, b;
  CUDA_CHECK(cudaEventCreate(&a));
  CUDA_CHECK(cudaEventCreate(&b));
  for (int i = 0; i < 10; ++i) {
    CUDA_CHECK(cudaEventRecord(a, ctx.stream));
    mamba2_chunk_forward(ctx, c, y, cs, xbc_d, dt_d, A_d, B, Tn);
    CUDA_CHECK(cudaEventRecord(b, ctx.stream));
    CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms);
  }
  std::sort(t.begin(), t.end());
  std::printf("%-30s %9.3f ms\n", name, t[t.size() / 2]);
  std::printf("RESULT %s %.4f\n", name, t[t.size() / 2]);
  if constexpr (std::is_same_v<T, bf16>) {  // the core backward on the forward's chunk states
    T* dxbc = arena.alloc<T>(B * Tn * CD);
    T* ddt = arena.alloc<T>(B * Tn * H);
    float* dA = arena.alloc<float>(H);
    const T* dy = random_bf16(ctx, arena, B * Tn * DI, 10);
    const double ms = median_ms(ctx, [&] { mamba2_chunk_backward(ctx, c, dxbc, ddt, dA, dy, xbc_d, dt_d, A_d, cs, B, Tn); });
    std::printf("%-30s %9.3f ms\n", "ssd_bwd_B4_T4096_bf16", ms);
    std::printf("RESULT ssd_bwd_B4_T4096_bf16 %.4f\n", ms);
  }
}

// The full layer, weights ~ N(0, 1 / fan_in) (dt_bias, A_log, D, norm_w as the tests).
void run_layer(Context& ctx, int64_t B, int64_t Tn) {
  hysim::Mamba2Config c;
  c.d_model = 2048, c.expand = 2, c.headdim = 64, c.d_state = 128, c.n_groups = 1, c.chunk_size = 64;
  const int64_t BT = B * Tn, D = c.d_model;
  DeviceArena arena(size_t(6) << 30, "bench layer");
  hysim::Mamba2Params<bf16> p;
  hysim::Mamba2Params<float> g;
  uint64_t seed = 100;
  hysim::visit_params(c, p, [&](bf16*& ptr, const hysim::ParamSpec& s) {
    const bool proj = s.name == "in_proj" || s.name == "out_proj";
    std::vector<float> h(s.numel());
    hysim::CounterRng r(++seed, 3);
    const double sd = proj ? 1.0 / std::sqrt(double(s.shape.back())) : s.name == "conv1d_weight" ? 0.5 : 0.1;
    const double off = s.name == "dt_bias" ? -2.5 : s.name == "A_log" || s.name == "D" || s.name == "norm_w" ? 1.0 : 0.0;
    for (int64_t i = 0; i < s.numel(); ++i) h[i] = float(off + sd * r.normal(i));
    ptr = upload<bf16>(ctx, arena, h);
  });
  hysim::visit_params(c, g, [&](float*& ptr, const hysim::ParamSpec& s) {
    ptr = arena.alloc<float>(s.numel());
    CUDA_CHECK(cudaMemset(ptr, 0, size_t(s.numel()) * sizeof(float)));
  });
  Mamba2ActsCuda a;
  size_t act_bytes = 0;
  visit_acts(c, B, Tn, a, [&](auto*& ptr, const char*, int64_t n) {
    ptr = arena.alloc<std::remove_pointer_t<std::remove_reference_t<decltype(ptr)>>>(n);
    act_bytes += size_t(n) * sizeof(*ptr);
  });
  const bf16 *x = random_bf16(ctx, arena, BT * D, 11), *dy = random_bf16(ctx, arena, BT * D, 12, 1e-2);
  bf16* y = arena.alloc<bf16>(BT * D);
  bf16* dx = arena.alloc<bf16>(BT * D);
  const double fwd = median_ms(ctx, [&] { mamba2_forward(ctx, c, p, a, y, x, B, Tn); });
  const double fwd_bwd = median_ms(ctx, [&] {
    mamba2_forward(ctx, c, p, a, y, x, B, Tn);
    mamba2_backward(ctx, c, p, g, a, dx, dy, x, B, Tn);
  });
  const double tflop = double(hysim::mamba2_flops(c, B, Tn)) * 1e-12;
  std::printf("layer B=%lld T=%lld: activations %.2f GiB, scratch peak %.2f GiB, forward %.1f GFLOP\n", (long long)B,
              (long long)Tn, double(act_bytes) / (1 << 30), double(ctx.scratch.peak()) / (1 << 30), tflop * 1e3);
  std::printf("%-30s %9.3f ms  (%.0f TFLOP/s)\n", "layer_fwd_B4_T4096", fwd, tflop / (fwd * 1e-3));
  std::printf("%-30s %9.3f ms  (%.0f TFLOP/s at 3x the forward's FLOPs)\n", "layer_fwd_bwd_B4_T4096", fwd_bwd,
              3 * tflop / (fwd_bwd * 1e-3));
  std::printf("RESULT layer_fwd_B4_T4096 %.4f\nRESULT layer_fwd_bwd_B4_T4096 %.4f\n", fwd, fwd_bwd);
}

int main() {
  if (device_count() == 0) {
    std::printf("SKIP: no CUDA device\n");
    return 0;
  }
  std::printf("device: %s\n", device_summary().c_str());
  Context ctx(size_t(3) << 30);
  run<bf16>(ctx, "ssd_fwd_B4_T4096_bf16", 4, 4096);
  run<float>(ctx, "ssd_fwd_B4_T4096_fp32", 4, 4096);
  run_layer(ctx, 4, 4096);
  return 0;
}
