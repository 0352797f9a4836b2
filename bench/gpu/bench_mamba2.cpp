// Mamba2 chunked SSD core forward on the GPU (layers/mamba2.cu) at the 1B ladder's Mamba2
// shape (d_model 2048, expand 2: 64 heads of headdim 64, d_state 128, one group, chunk 64),
// B 4, T 4096, timed with CUDA events (median after warm-up, random inputs as the test).
// Prints `RESULT <name> <ms>` lines that bench/gpu/mamba2_peer.py reads for the ratio
// against a chunked SSD forward written in PyTorch, run on the same GPU.
//   bench_gpu_mamba2
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
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
}

int main() {
  if (device_count() == 0) {
    std::printf("SKIP: no CUDA device\n");
    return 0;
  }
  std::printf("device: %s\n", device_summary().c_str());
  Context ctx(size_t(64) << 20);
  run<bf16>(ctx, "ssd_fwd_B4_T4096_bf16", 4, 4096);
  run<float>(ctx, "ssd_fwd_B4_T4096_fp32", 4, 4096);
  return 0;
}
