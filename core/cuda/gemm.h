// Dense projections on the GPU through cuBLASLt, with the semantics of core/cpu/gemm.h:
// weights in PyTorch's Linear layout W[out, in], activations row-major [N, features].
//
//   linear_forward:  y[N, O] = x[N, I] W[O, I]^T          (accumulate = true: y += ...)
//   linear_backward: dx[N, I] = dy W   (overwritten, or += with accumulate_dx; skipped if dx == nullptr)
//                    dW[O, I] += dy^T x                    (always accumulates, fp32; skipped if dW == nullptr)
//
// Operand types: bf16 (tensor cores, fp32 accumulation, outputs fp32 or bf16) or fp32
// (plain fp32 arithmetic, no TF32: the reference path that checks layouts to ~1e-6).
// Instantiated for (Tin, Tout) = (float, float), (bf16, bf16), (bf16, float).
// Asynchronous on ctx.stream. Shapes must be >= 0 (0 does nothing); errors name the shapes.
#pragma once
#include <cstdint>

#include "core/cuda/convert.h"

namespace hysim::cuda {

template <class Tin, class Tout>
void linear_forward(Context& ctx, Tout* y, const Tin* x, const Tin* W, int64_t N, int64_t I, int64_t O,
                    bool accumulate = false);

template <class Tin, class Tdx>
void linear_backward(Context& ctx, Tdx* dx, float* dW, const Tin* dy, const Tin* x, const Tin* W, int64_t N,
                     int64_t I, int64_t O, bool accumulate_dx = false);

inline int64_t linear_flops(int64_t N, int64_t I, int64_t O) { return 2 * N * I * O; }

}  // namespace hysim::cuda
