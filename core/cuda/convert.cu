#include "core/cuda/convert.h"

#include "core/cuda/device_util.cuh"

namespace hysim::cuda {

namespace {
// Grid-stride loops with a grid capped at a few waves (grid_stride_blocks): any n, one launch.
constexpr int kThreads = 256;

__global__ void f32_to_bf16_kernel(bf16* __restrict__ dst, const float* __restrict__ src, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = __float2bfloat16_rn(src[i]);
}
__global__ void bf16_to_f32_kernel(float* __restrict__ dst, const bf16* __restrict__ src, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = __bfloat162float(src[i]);
}
}  // namespace

void f32_to_bf16(Context& ctx, bf16* dst, const float* src, int64_t n) {
  if (n <= 0) return;
  f32_to_bf16_kernel<<<grid_stride_blocks(n, kThreads), kThreads, 0, ctx.stream>>>(dst, src, n);
  CUDA_CHECK_LAUNCH("f32_to_bf16_kernel", shape_str("n", n));
}
void bf16_to_f32(Context& ctx, float* dst, const bf16* src, int64_t n) {
  if (n <= 0) return;
  bf16_to_f32_kernel<<<grid_stride_blocks(n, kThreads), kThreads, 0, ctx.stream>>>(dst, src, n);
  CUDA_CHECK_LAUNCH("bf16_to_f32_kernel", shape_str("n", n));
}

std::vector<bf16> to_bf16_host(const std::vector<float>& x) {
  std::vector<bf16> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = __float2bfloat16_rn(x[i]);
  return y;
}
std::vector<float> to_f32_host(const std::vector<bf16>& x) {
  std::vector<float> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = __bfloat162float(x[i]);
  return y;
}

}  // namespace hysim::cuda
