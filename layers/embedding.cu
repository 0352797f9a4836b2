// Token embedding on the GPU. Forward: a row gather (one block per position). Backward:
// a deterministic scatter-add: positions are sorted by token with CUB's stable radix
// sort, then the first position of each token's run sums the run's rows in position
// order and adds the sum into dwte once (no atomics, so no order that varies by run).
#include <cub/device/device_radix_sort.cuh>

#include <stdexcept>
#include <string>

#include "core/cuda/device_util.cuh"
#include "core/cuda/layers.h"

namespace hysim::cuda {

namespace {

constexpr int kThreads = 256;
constexpr unsigned long long kNoError = ~0ull;

template <class T>
__global__ void embedding_forward_kernel(T* __restrict__ out, const int32_t* __restrict__ tokens,
                                         const T* __restrict__ wte, int64_t D, int64_t V,
                                         unsigned long long* __restrict__ status) {
  const int64_t n = blockIdx.x;
  const int32_t tok = tokens[n];
  T* dst = out + n * D;
  if (tok < 0 || tok >= V) {
    // Smallest bad position wins; the token rides in the low 32 bits.
    if (threadIdx.x == 0) atomicMin(status, (static_cast<unsigned long long>(n) << 32) | uint32_t(tok));
    for (int64_t c = threadIdx.x; c < D; c += blockDim.x) dst[c] = from_f32<T>(0.f);
    return;
  }
  const T* src = wte + int64_t(tok) * D;
  for (int64_t c = threadIdx.x; c < D; c += blockDim.x) dst[c] = src[c];
}

__global__ void iota_kernel(int32_t* __restrict__ p, int64_t n) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i < n) p[i] = int32_t(i);
}

// Block i (over sorted order) acts only if it starts a run of equal tokens.
template <class T>
__global__ void embedding_backward_kernel(float* __restrict__ dwte, const T* __restrict__ dout,
                                          const int32_t* __restrict__ sorted_tokens,
                                          const int32_t* __restrict__ sorted_pos, int64_t N, int64_t D) {
  const int64_t i = blockIdx.x;
  const int32_t tok = sorted_tokens[i];
  if (i > 0 && sorted_tokens[i - 1] == tok) return;
  int64_t end = i + 1;
  while (end < N && sorted_tokens[end] == tok) ++end;
  for (int64_t c = int64_t(blockIdx.y) * blockDim.x + threadIdx.x; c < D; c += int64_t(gridDim.y) * blockDim.x) {
    float s = 0.f;
    for (int64_t j = i; j < end; ++j) s += to_f32(dout[int64_t(sorted_pos[j]) * D + c]);
    dwte[int64_t(tok) * D + c] += s;
  }
}

}  // namespace

template <class T>
void embedding_forward(Context& ctx, T* out, const int32_t* tokens, const T* wte, int64_t N, int64_t D, int64_t V,
                       bool validate) {
  if (N <= 0 || D <= 0) return;
  if (N >= (int64_t(1) << 31)) throw std::invalid_argument(shape_str("embedding_forward: too many positions N", N));
  embedding_forward_kernel<T><<<unsigned(N), kThreads, 0, ctx.stream>>>(out, tokens, wte, D, V, ctx.status);
  CUDA_CHECK_LAUNCH("embedding_forward_kernel", shape_str("N, D, V", N, D, V));
  if (!validate) return;
  unsigned long long st = kNoError;
  to_host(ctx, &st, ctx.status, 1);
  if (st != kNoError) {
    CUDA_CHECK(cudaMemsetAsync(ctx.status, 0xff, sizeof st, ctx.stream));
    const int64_t pos = int64_t(st >> 32);
    const int32_t tok = int32_t(uint32_t(st & 0xffffffffu));
    throw std::out_of_range("embedding: token " + std::to_string(tok) + " at position " + std::to_string(pos) +
                            " is outside the vocabulary [0, " + std::to_string(V) + ")");
  }
}

template <class T>
void embedding_backward(Context& ctx, float* dwte, const T* dout, const int32_t* tokens, int64_t N, int64_t D) {
  if (N <= 0 || D <= 0) return;
  if (N >= (int64_t(1) << 31)) throw std::invalid_argument(shape_str("embedding_backward: too many positions N", N));
  const std::string shapes = shape_str("N, D", N, D);
  ArenaScope scope(ctx.scratch);
  int32_t* pos = ctx.scratch.alloc<int32_t>(N, "embedding positions");
  int32_t* sorted_tokens = ctx.scratch.alloc<int32_t>(N, "embedding sorted tokens");
  int32_t* sorted_pos = ctx.scratch.alloc<int32_t>(N, "embedding sorted positions");
  iota_kernel<<<unsigned(ceil_div(N, kThreads)), kThreads, 0, ctx.stream>>>(pos, N);
  CUDA_CHECK_LAUNCH("iota_kernel", shapes);
  size_t temp_bytes = 0;
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, tokens, sorted_tokens, pos, sorted_pos, int(N), 0,
                                             32, ctx.stream),
             shapes);
  void* temp = ctx.scratch.alloc_bytes(temp_bytes, "embedding radix sort");
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, tokens, sorted_tokens, pos, sorted_pos, int(N), 0, 32,
                                             ctx.stream),
             shapes);
  // Columns split over grid.y as well so that a run's sum uses many threads when D is wide.
  const dim3 grid(unsigned(N), unsigned(ceil_div(D, kThreads)));
  embedding_backward_kernel<T><<<grid, kThreads, 0, ctx.stream>>>(dwte, dout, sorted_tokens, sorted_pos, N, D);
  CUDA_CHECK_LAUNCH("embedding_backward_kernel", shapes);
}

#define INSTANTIATE(T)                                                                                          \
  template void embedding_forward<T>(Context&, T*, const int32_t*, const T*, int64_t, int64_t, int64_t, bool); \
  template void embedding_backward<T>(Context&, float*, const T*, const int32_t*, int64_t, int64_t);
INSTANTIATE(float)
INSTANTIATE(bf16)

}  // namespace hysim::cuda
