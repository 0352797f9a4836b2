// Device-side helpers shared by the .cu files: fp32 <-> storage-type conversion, warp sums
// and a small block-wide product on register tiles.
// Kernels load bf16 or fp32 storage, compute in fp32 and round once on store.
#pragma once
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

namespace hysim::cuda {

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Sum over the 32 lanes of a warp; every lane gets the result. The butterfly order is
// fixed, so the result is deterministic.
__device__ __forceinline__ float warp_sum(float v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

__device__ __forceinline__ float sigmoid_f32(float x) { return 1.f / (1.f + expf(-x)); }
__device__ __forceinline__ float silu_f32(float x) { return x * sigmoid_f32(x); }
// d silu / dx = s (1 + x (1 - s)), s = sigmoid(x) (core/cpu/math.h's silu_grad).
__device__ __forceinline__ float silu_grad_f32(float x) {
  const float s = sigmoid_f32(x);
  return s * (1.f + x * (1.f - s));
}

constexpr int kWarp = 32;

// out(m, n, sum_k fa(m, k) fb(n, k)) for m < M, n < N, by a whole block of Threads
// threads (operands usually in shared memory, fp32 FMAs): each thread owns 4 x 4 outputs (rows mi + i TM, columns ni + j TN: consecutive threads take
// consecutive columns), so that each operand value loaded from shared memory feeds four
// FMAs instead of one.
template <int Threads, class FA, class FB, class FO>
__device__ void block_gemm(int M, int N, int K, FA fa, FB fb, FO out) {
  const int TM = (M + 3) / 4, TN = (N + 3) / 4;
  for (int t = threadIdx.x; t < TM * TN; t += Threads) {
    const int mi = t / TN, ni = t % TN;
    float acc[4][4] = {};
    for (int kk = 0; kk < K; ++kk) {
      float av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int m = mi + i * TM, n = ni + i * TN;
        av[i] = m < M ? fa(m, kk) : 0.f;
        bv[i] = n < N ? fb(n, kk) : 0.f;
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += av[i] * bv[j];
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int m = mi + i * TM, n = ni + j * TN;
        if (m < M && n < N) out(m, n, acc[i][j]);
      }
  }
}


inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks of `threads` for a grid-stride loop over n elements: one element per thread up to
// 16 blocks per SM of an H100 (132 SMs), then the loop strides.
inline unsigned grid_stride_blocks(int64_t n, int threads) {
  return unsigned(std::min<int64_t>(ceil_div(n, threads), 132 * 16));
}

}  // namespace hysim::cuda
