// Mamba2 mixer (Dao & Gu 2024; state-spaces/mamba Mamba2, HF Mamba2Mixer).
//
//   zxbcdt = x W_in^T, split into z [d_inner], xBC [d_inner + 2 G N], dt [H]
//   xBC    = silu(conv(xBC) + conv_bias)          (causal depthwise, layers/short_conv.h)
//            split into x [H, P], B [G, N], C [G, N]; head h reads group h / (H / G)
//   dt     = softplus(dt + dt_bias),  A = -exp(A_log)
//   h_t    = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T      (h: P x N per head)
//   y_t    = h_t C_t + D x_t
//   y'     = rmsnorm(y * silu(z)) * norm_w           (gate before the norm; groups of d_inner / G)
//   out    = y' W_out^T
// with H = n_heads, P = headdim, G = n_groups, N = d_state.
//
// The SSM core (x, dt, A, B, C -> y, without the D term) has two implementations with
// explicit backwards: a token-by-token recurrence (the reference) and the chunked SSD
// form (intra-chunk quadratic term + inter-chunk state passing), which is what
// mamba2_forward uses when chunk_size > 0.
#pragma once
#include <cstdint>
#include <stdexcept>

#include "core/params.h"

namespace hysim {

struct Mamba2Config {
  int64_t d_model = 64;
  int64_t d_state = 16;     // N
  int64_t headdim = 16;     // P
  int64_t expand = 2;       // d_inner = expand * d_model
  int64_t n_groups = 1;     // G: heads share B and C within a group
  int64_t conv_size = 4;
  int64_t chunk_size = 64;  // 0 = token-by-token recurrence
  double norm_eps = 1e-5;
  double init_std = 0.02;
  double a_init_min = 1.0, a_init_max = 16.0;             // A ~ U(min, max), stored as A_log
  double dt_min = 1e-3, dt_max = 1e-1, dt_floor = 1e-4;  // dt_bias = softplus^-1(dt)

  int64_t d_inner() const { return expand * d_model; }
  int64_t n_heads() const { return d_inner() / headdim; }
  int64_t conv_dim() const { return d_inner() + 2 * n_groups * d_state; }  // (x | B | C)
  int64_t d_in_proj() const { return d_inner() + conv_dim() + n_heads(); }  // (z | xBC | dt)
  int64_t n_chunks(int64_t Tn) const { return chunk_size > 0 ? (Tn + chunk_size - 1) / chunk_size : 0; }
  void validate() const {
    if (d_model <= 0 || d_state <= 0 || headdim <= 0 || expand <= 0 || n_groups <= 0 || conv_size <= 0 ||
        chunk_size < 0)
      throw std::invalid_argument("Mamba2Config: sizes must be positive (chunk_size >= 0)");
    if (d_inner() % headdim != 0) throw std::invalid_argument("Mamba2Config: d_inner must be a multiple of headdim");
    if (n_heads() % n_groups != 0) throw std::invalid_argument("Mamba2Config: n_heads must be a multiple of n_groups");
  }
};

template <class T> struct Mamba2Params {
  T* in_proj = nullptr;        // [d_in_proj, d_model]
  T* conv1d_weight = nullptr;  // [conv_dim, conv_size]
  T* conv1d_bias = nullptr;    // [conv_dim]
  T* dt_bias = nullptr;        // [H]
  T* A_log = nullptr;          // [H]
  T* D = nullptr;              // [H]
  T* norm_w = nullptr;         // [d_inner]
  T* out_proj = nullptr;       // [d_model, d_inner]
};

template <class T, class V> void visit_params(const Mamba2Config& c, Mamba2Params<T>& p, V&& v) {
  c.validate();
  const int64_t H = c.n_heads();
  v(p.in_proj, ParamSpec{"in_proj", {c.d_in_proj(), c.d_model}, Init::normal(c.init_std)});
  v(p.conv1d_weight, ParamSpec{"conv1d_weight", {c.conv_dim(), c.conv_size}, Init::normal(c.init_std)});
  v(p.conv1d_bias, ParamSpec{"conv1d_bias", {c.conv_dim()}, Init::zeros(), false});
  v(p.dt_bias, ParamSpec{"dt_bias", {H}, Init::dt_bias(c.dt_min, c.dt_max, c.dt_floor), false});
  v(p.A_log, ParamSpec{"A_log", {H}, Init::log_uniform(c.a_init_min, c.a_init_max), false});
  v(p.D, ParamSpec{"D", {H}, Init::ones(), false});
  v(p.norm_w, ParamSpec{"norm_w", {c.d_inner()}, Init::ones(), false});
  v(p.out_proj, ParamSpec{"out_proj", {c.d_model, c.d_inner()}, Init::normal(c.init_std)});
}

template <class T> struct Mamba2Acts {
  T* zxbcdt = nullptr;        // [B, T, d_in_proj]  in_proj output
  T* xbc_in = nullptr;        // [B, T, conv_dim]   conv input (contiguous copy of the xBC slice)
  T* xbc_pre = nullptr;       // [B, T, conv_dim]   conv output before SiLU
  T* xbc = nullptr;           // [B, T, conv_dim]   (x | B | C) after SiLU
  T* dt = nullptr;            // [B, T, H]          softplus(dt + dt_bias)
  T* y = nullptr;             // [B, T, d_inner]    SSM output + D x (before the gate)
  T* y_gated = nullptr;       // [B, T, d_inner]    y * silu(z)
  T* rstd = nullptr;          // [B, T, G]
  T* y_norm = nullptr;        // [B, T, d_inner]    out_proj input
  T* chunk_states = nullptr;  // [B, H, n_chunks, P, N] state entering each chunk (chunked core only)
};

template <class T, class V> void visit_acts(const Mamba2Config& c, int64_t B, int64_t Tn, Mamba2Acts<T>& a, V&& v) {
  const int64_t BT = B * Tn;
  v(a.zxbcdt, "zxbcdt", BT * c.d_in_proj());
  v(a.xbc_in, "xbc_in", BT * c.conv_dim());
  v(a.xbc_pre, "xbc_pre", BT * c.conv_dim());
  v(a.xbc, "xbc", BT * c.conv_dim());
  v(a.dt, "dt", BT * c.n_heads());
  v(a.y, "y", BT * c.d_inner());
  v(a.y_gated, "y_gated", BT * c.d_inner());
  v(a.rstd, "rstd", BT * c.n_groups);
  v(a.y_norm, "y_norm", BT * c.d_inner());
  v(a.chunk_states, "chunk_states", B * c.n_heads() * c.n_chunks(Tn) * c.headdim * c.d_state);
}

// Full layer. x, y: [B, Tn, d_model]. Backward: dx overwritten, grad.* accumulated.
template <class T>
void mamba2_forward(const Mamba2Config& c, const Mamba2Params<T>& p, const Mamba2Acts<T>& a, T* y, const T* x,
                    int64_t B, int64_t Tn);
template <class T>
void mamba2_backward(const Mamba2Config& c, const Mamba2Params<T>& p, const Mamba2Params<T>& grad,
                     const Mamba2Acts<T>& a, T* dx, const T* dy, const T* x, int64_t B, int64_t Tn);

// SSM core. xbc: [B, Tn, conv_dim] = (x [H, P] | B [G, N] | C [G, N]) per token; dt: [B, Tn, H];
// A: [H] (negative); y: [B, Tn, d_inner] = sum over the recurrence only (no D term).
// Backwards overwrite dxbc [B, Tn, conv_dim], ddt [B, Tn, H] and dA [H].
template <class T>
void mamba2_recurrent_forward(const Mamba2Config& c, T* y, const T* xbc, const T* dt, const T* A, int64_t B,
                              int64_t Tn);
template <class T>
void mamba2_recurrent_backward(const Mamba2Config& c, T* dxbc, T* ddt, T* dA, const T* dy, const T* xbc,
                               const T* dt, const T* A, int64_t B, int64_t Tn);
// Chunked SSD with chunk length c.chunk_size (> 0); the last chunk may be shorter.
// chunk_states [B, H, n_chunks, P, N] is written by the forward and read by the backward.
template <class T>
void mamba2_chunk_forward(const Mamba2Config& c, T* y, T* chunk_states, const T* xbc, const T* dt, const T* A,
                          int64_t B, int64_t Tn);
template <class T>
void mamba2_chunk_backward(const Mamba2Config& c, T* dxbc, T* ddt, T* dA, const T* dy, const T* xbc, const T* dt,
                           const T* A, const T* chunk_states, int64_t B, int64_t Tn);

// Forward FLOPs (2 per multiply-add) of the algorithm mamba2_forward runs (chunked when
// chunk_size > 0); exp/log/sigmoid count as one each.
int64_t mamba2_flops(const Mamba2Config& c, int64_t B, int64_t Tn);

}  // namespace hysim
