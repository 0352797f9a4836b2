// Gated DeltaNet mixer (Yang, Kautz & Hatamizadeh 2024), as in Olmo Hybrid (HF OlmoHybrid,
// flash-linear-attention GatedDeltaNet).
//
//   q = silu(conv(x W_q^T)), k = silu(conv(x W_k^T)), v = silu(conv(x W_v^T))   (causal depthwise, no bias)
//   q, k L2-normalised per head: q / sqrt(sum q^2 + l2_eps)
//   beta  = sigmoid(x W_b^T)       (x 2 when allow_neg_eigval)            per value head
//   g     = -exp(A_log) softplus(x W_a^T + dt_bias),  alpha = exp(g)        per value head
//   S_t   = alpha_t S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T      (S: d_head_v x d_head_k, S_{-1} = 0)
//   o_t   = S_t q_t d_head_k^-0.5
//   o'    = o rsqrt(mean(o^2) + norm_eps) o_norm silu(x W_g^T)             (per value head, o_norm shared)
//   y     = o' W_o^T
// with H = n_heads q/k heads and Hv = n_v_heads value heads (Hv a multiple of H; value head
// hv reads q/k head hv / (Hv / H)).
//
// The core (q, k, v, beta, g -> o) has two implementations with explicit backwards: a
// token-by-token recurrence (the reference) and the chunked WY/UT form (intra-chunk
// triangular solve, inter-chunk state passing), which gdn_forward uses when chunk_size > 0.
#pragma once
#include <cstdint>
#include <stdexcept>

#include "core/params.h"

namespace hysim {

struct GdnConfig {
  int64_t d_model = 64;
  int64_t n_heads = 4;    // H: q/k heads
  int64_t n_v_heads = 4;  // Hv: value heads, a multiple of H
  int64_t d_head_k = 16;
  int64_t d_head_v = 32;
  int64_t conv_size = 4;
  bool allow_neg_eigval = true;  // beta in (0, 2): eigenvalues of I - beta k k^T in (-1, 1]
  int64_t chunk_size = 64;       // 0 = token-by-token recurrence
  double norm_eps = 1e-5;        // gated RMSNorm of the output
  double l2_eps = 1e-6;          // q/k L2 normalisation
  double init_std = 0.02;
  double a_init_min = 1.0, a_init_max = 16.0;             // A ~ U(min, max), stored as A_log
  double dt_min = 1e-3, dt_max = 1e-1, dt_floor = 1e-4;  // dt_bias = softplus^-1(dt)

  int64_t d_qk() const { return n_heads * d_head_k; }   // width of q and k
  int64_t d_v() const { return n_v_heads * d_head_v; }  // width of v, o and the gate
  int64_t n_chunks(int64_t Tn) const { return chunk_size > 0 ? (Tn + chunk_size - 1) / chunk_size : 0; }
  void validate() const {
    if (d_model <= 0 || n_heads <= 0 || n_v_heads <= 0 || d_head_k <= 0 || d_head_v <= 0 || conv_size <= 0 ||
        chunk_size < 0)
      throw std::invalid_argument("GdnConfig: sizes must be positive (chunk_size >= 0)");
    if (n_v_heads % n_heads != 0) throw std::invalid_argument("GdnConfig: n_v_heads must be a multiple of n_heads");
  }
};

template <class T> struct GdnParams {
  T* q_proj = nullptr;    // [H dk, D]
  T* k_proj = nullptr;    // [H dk, D]
  T* v_proj = nullptr;    // [Hv dv, D]
  T* q_conv1d = nullptr;  // [H dk, K]
  T* k_conv1d = nullptr;  // [H dk, K]
  T* v_conv1d = nullptr;  // [Hv dv, K]
  T* b_proj = nullptr;    // [Hv, D]
  T* a_proj = nullptr;    // [Hv, D]
  T* A_log = nullptr;     // [Hv]
  T* dt_bias = nullptr;   // [Hv]
  T* o_norm = nullptr;    // [dv]
  T* g_proj = nullptr;    // [Hv dv, D]
  T* o_proj = nullptr;    // [D, Hv dv]
};

template <class T, class V> void visit_params(const GdnConfig& c, GdnParams<T>& p, V&& v) {
  c.validate();
  const int64_t D = c.d_model, QK = c.d_qk(), DV = c.d_v(), Hv = c.n_v_heads, K = c.conv_size;
  v(p.q_proj, ParamSpec{"q_proj", {QK, D}, Init::normal(c.init_std)});
  v(p.k_proj, ParamSpec{"k_proj", {QK, D}, Init::normal(c.init_std)});
  v(p.v_proj, ParamSpec{"v_proj", {DV, D}, Init::normal(c.init_std)});
  v(p.q_conv1d, ParamSpec{"q_conv1d", {QK, K}, Init::normal(c.init_std)});
  v(p.k_conv1d, ParamSpec{"k_conv1d", {QK, K}, Init::normal(c.init_std)});
  v(p.v_conv1d, ParamSpec{"v_conv1d", {DV, K}, Init::normal(c.init_std)});
  v(p.b_proj, ParamSpec{"b_proj", {Hv, D}, Init::normal(c.init_std)});
  v(p.a_proj, ParamSpec{"a_proj", {Hv, D}, Init::normal(c.init_std)});
  v(p.A_log, ParamSpec{"A_log", {Hv}, Init::log_uniform(c.a_init_min, c.a_init_max), false});
  v(p.dt_bias, ParamSpec{"dt_bias", {Hv}, Init::dt_bias(c.dt_min, c.dt_max, c.dt_floor), false});
  v(p.o_norm, ParamSpec{"o_norm", {c.d_head_v}, Init::ones(), false});
  v(p.g_proj, ParamSpec{"g_proj", {DV, D}, Init::normal(c.init_std)});
  v(p.o_proj, ParamSpec{"o_proj", {D, DV}, Init::normal(c.init_std)});
}

template <class T> struct GdnActs {
  T* q_in = nullptr;          // [B, T, H dk]   q_proj output (conv input)
  T* q_pre = nullptr;         // [B, T, H dk]   conv output before SiLU
  T* q = nullptr;             // [B, T, H dk]   L2-normalised q (core input)
  T* q_rstd = nullptr;        // [B, T, H]      1 / sqrt(sum q^2 + l2_eps)
  T* k_in = nullptr;          // [B, T, H dk]
  T* k_pre = nullptr;         // [B, T, H dk]
  T* k = nullptr;             // [B, T, H dk]
  T* k_rstd = nullptr;        // [B, T, H]
  T* v_in = nullptr;          // [B, T, Hv dv]
  T* v_pre = nullptr;         // [B, T, Hv dv]
  T* v = nullptr;             // [B, T, Hv dv]  silu(conv) (core input)
  T* a_in = nullptr;          // [B, T, Hv]     a_proj output
  T* beta = nullptr;          // [B, T, Hv]
  T* g = nullptr;             // [B, T, Hv]     log decay
  T* o = nullptr;             // [B, T, Hv dv]  core output
  T* o_rstd = nullptr;        // [B, T, Hv]
  T* gate = nullptr;          // [B, T, Hv dv]  g_proj output
  T* o_gated = nullptr;       // [B, T, Hv dv]  o_proj input
  T* chunk_states = nullptr;  // [B, Hv, n_chunks, dv, dk] state entering each chunk (chunked core only)
};

// Binds the fields of GdnActs<T> or of any struct with the same field names (the GPU's
// GdnActsCuda, whose statistics and gates are fp32): v(field, "name", numel).
template <class Acts, class V> void visit_gdn_acts(const GdnConfig& c, int64_t B, int64_t Tn, Acts& a, V&& v) {
  const int64_t BT = B * Tn, QK = c.d_qk(), DV = c.d_v(), H = c.n_heads, Hv = c.n_v_heads;
  v(a.q_in, "q_in", BT * QK);
  v(a.q_pre, "q_pre", BT * QK);
  v(a.q, "q", BT * QK);
  v(a.q_rstd, "q_rstd", BT * H);
  v(a.k_in, "k_in", BT * QK);
  v(a.k_pre, "k_pre", BT * QK);
  v(a.k, "k", BT * QK);
  v(a.k_rstd, "k_rstd", BT * H);
  v(a.v_in, "v_in", BT * DV);
  v(a.v_pre, "v_pre", BT * DV);
  v(a.v, "v", BT * DV);
  v(a.a_in, "a_in", BT * Hv);
  v(a.beta, "beta", BT * Hv);
  v(a.g, "g", BT * Hv);
  v(a.o, "o", BT * DV);
  v(a.o_rstd, "o_rstd", BT * Hv);
  v(a.gate, "gate", BT * DV);
  v(a.o_gated, "o_gated", BT * DV);
  v(a.chunk_states, "chunk_states", B * Hv * c.n_chunks(Tn) * c.d_head_v * c.d_head_k);
}
template <class T, class V> void visit_acts(const GdnConfig& c, int64_t B, int64_t Tn, GdnActs<T>& a, V&& v) {
  visit_gdn_acts(c, B, Tn, a, v);
}

// Full layer. x, y: [B, Tn, d_model]. Backward: dx overwritten, grad.* accumulated.
template <class T>
void gdn_forward(const GdnConfig& c, const GdnParams<T>& p, const GdnActs<T>& a, T* y, const T* x, int64_t B,
                 int64_t Tn);
template <class T>
void gdn_backward(const GdnConfig& c, const GdnParams<T>& p, const GdnParams<T>& grad, const GdnActs<T>& a, T* dx,
                  const T* dy, const T* x, int64_t B, int64_t Tn);

// Core. q, k: [B, Tn, H dk] (L2-normalised); v, o: [B, Tn, Hv dv]; beta, g: [B, Tn, Hv].
// o_t = S_t q_t d_head_k^-0.5. Backwards overwrite dq, dk, dv, dbeta, dg.
template <class T>
void gdn_recurrent_forward(const GdnConfig& c, T* o, const T* q, const T* k, const T* v, const T* beta, const T* g,
                           int64_t B, int64_t Tn);
template <class T>
void gdn_recurrent_backward(const GdnConfig& c, T* dq, T* dk, T* dv, T* dbeta, T* dg, const T* d_o, const T* q,
                            const T* k, const T* v, const T* beta, const T* g, int64_t B, int64_t Tn);
// Chunked WY/UT form with chunk length c.chunk_size (> 0); the last chunk may be shorter.
// chunk_states [B, Hv, n_chunks, dv, dk] is written by the forward and read by the backward.
template <class T>
void gdn_chunk_forward(const GdnConfig& c, T* o, T* chunk_states, const T* q, const T* k, const T* v, const T* beta,
                       const T* g, int64_t B, int64_t Tn);
template <class T>
void gdn_chunk_backward(const GdnConfig& c, T* dq, T* dk, T* dv, T* dbeta, T* dg, const T* d_o, const T* q,
                        const T* k, const T* v, const T* beta, const T* g, const T* chunk_states, int64_t B,
                        int64_t Tn);

// Forward FLOPs (2 per multiply-add) of the algorithm gdn_forward runs (chunked when
// chunk_size > 0); exp/log/sigmoid/softplus/rsqrt count as one each.
int64_t gdn_flops(const GdnConfig& c, int64_t B, int64_t Tn);

}  // namespace hysim
