// bf16 <-> fp32 conversion on the device, and host <-> device copies on a context's stream.
// bf16 rounding is round-to-nearest-even (as __float2bfloat16_rn), so host and device
// conversions of the same float give the same bits.
#pragma once
#include <cuda_bf16.h>

#include <cstdint>
#include <vector>

#include "core/cuda/check.h"
#include "core/cuda/context.h"

namespace hysim::cuda {

using bf16 = __nv_bfloat16;

void f32_to_bf16(Context& ctx, bf16* dst, const float* src, int64_t n);
void bf16_to_f32(Context& ctx, float* dst, const bf16* src, int64_t n);

// Host-side conversions (the same rounding as the device kernels).
std::vector<bf16> to_bf16_host(const std::vector<float>& x);
std::vector<float> to_f32_host(const std::vector<bf16>& x);

// Copies ordered on ctx.stream. to_host synchronizes the stream (the data is needed now).
template <class T> void to_device(Context& ctx, T* dst, const T* src, int64_t n) {
  CUDA_CHECK(cudaMemcpyAsync(dst, src, size_t(n) * sizeof(T), cudaMemcpyHostToDevice, ctx.stream),
             shape_str("to_device elements", n));
}
template <class T> void to_host(Context& ctx, T* dst, const T* src, int64_t n) {
  CUDA_CHECK(cudaMemcpyAsync(dst, src, size_t(n) * sizeof(T), cudaMemcpyDeviceToHost, ctx.stream),
             shape_str("to_host elements", n));
  ctx.sync();
}

}  // namespace hysim::cuda
