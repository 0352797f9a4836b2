// SwiGLU MLP (Shazeer 2020; Olmo 2/3, HF LlamaMLP/OlmoMLP):
//   gate = x Wg^T,  up = x Wu^T             [N, F]
//   h    = silu(gate) * up                  [N, F]
//   y    = h Wd^T                           [N, D]
// with D = d_model, F = d_hidden, N = B * Tn. HF names: gate_proj, up_proj, down_proj.
#pragma once
#include <cstdint>
#include <stdexcept>

#include "core/params.h"

namespace hysim {

struct SwiGLUConfig {
  int64_t d_model = 64;
  int64_t d_hidden = 172;
  double init_std = 0.02;
  void validate() const {
    if (d_model <= 0 || d_hidden <= 0) throw std::invalid_argument("SwiGLUConfig: d_model and d_hidden must be positive");
  }
};

template <class T> struct SwiGLUParams {
  T* gate_proj = nullptr;  // [F, D]
  T* up_proj = nullptr;    // [F, D]
  T* down_proj = nullptr;  // [D, F]
};

template <class T, class V> void visit_params(const SwiGLUConfig& c, SwiGLUParams<T>& p, V&& v) {
  c.validate();
  v(p.gate_proj, ParamSpec{"gate_proj", {c.d_hidden, c.d_model}, Init::normal(c.init_std)});
  v(p.up_proj, ParamSpec{"up_proj", {c.d_hidden, c.d_model}, Init::normal(c.init_std)});
  v(p.down_proj, ParamSpec{"down_proj", {c.d_model, c.d_hidden}, Init::normal(c.init_std)});
}

template <class T> struct SwiGLUActs {
  T* gate = nullptr;  // [B, T, F]  x Wg^T (pre-activation)
  T* up = nullptr;    // [B, T, F]  x Wu^T
  T* h = nullptr;     // [B, T, F]  silu(gate) * up (down_proj input)
};

template <class T, class V> void visit_acts(const SwiGLUConfig& c, int64_t B, int64_t Tn, SwiGLUActs<T>& a, V&& v) {
  const int64_t NF = B * Tn * c.d_hidden;
  v(a.gate, "gate", NF);
  v(a.up, "up", NF);
  v(a.h, "h", NF);
}

// x, y: [B, Tn, d_model]. Backward: dx overwritten, grad.* accumulated.
template <class T>
void swiglu_forward(const SwiGLUConfig& c, const SwiGLUParams<T>& p, const SwiGLUActs<T>& a, T* y, const T* x,
                    int64_t B, int64_t Tn);
template <class T>
void swiglu_backward(const SwiGLUConfig& c, const SwiGLUParams<T>& p, const SwiGLUParams<T>& grad,
                     const SwiGLUActs<T>& a, T* dx, const T* dy, const T* x, int64_t B, int64_t Tn);

// Three projections (2 N D F each) + silu(g) * u at 5 FLOPs per hidden unit (sigmoid
// as exp, add, divide; two multiplies), as counted in scaling/accounting.
inline int64_t swiglu_flops(const SwiGLUConfig& c, int64_t B, int64_t Tn) {
  const int64_t N = B * Tn;
  return 6 * N * c.d_model * c.d_hidden + 5 * N * c.d_hidden;
}

}  // namespace hysim
