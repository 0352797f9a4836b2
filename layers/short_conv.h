// Causal depthwise short convolution (kernel K, usually 4) with optional bias and
// SiLU, as used on q/k/v in Gated DeltaNet and on (x, B, C) in Mamba2.
//   pre[b,t,c] = bias[c] + sum_{j<K} w[c,j] x[b, t-(K-1)+j, c]   (x = 0 before t = 0)
//   out = silu(pre) if silu else pre
// Weight layout [C, K] = PyTorch Conv1d(groups=C).weight[C, 1, K] squeezed.
#pragma once
#include <cstdint>

namespace hysim {

// x, out, pre: [B, T, C]. pre (may be null when !silu) is saved for the backward.
template <class T>
void short_conv_forward(T* out, T* pre, const T* x, const T* w, const T* bias, int64_t B, int64_t Tn, int64_t C,
                        int64_t K, bool silu);
// dx overwritten; dw, dbias (may be null) accumulated. `pre` as saved by the forward.
template <class T>
void short_conv_backward(T* dx, T* dw, T* dbias, const T* dout, const T* x, const T* pre, const T* w, int64_t B,
                         int64_t Tn, int64_t C, int64_t K, bool silu);

}  // namespace hysim
