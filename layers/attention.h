// Causal self-attention, full or sliding window (Olmo 2/3, Olmo Hybrid; HF Olmo2Attention).
//
//   q = x W_q^T [H dh],  k = x W_k^T [Hkv dh],  v = x W_v^T [Hkv dh]     (no biases)
//   q = rmsnorm(q) * q_norm,  k = rmsnorm(k) * k_norm                  (qk_norm: over the FULL
//                                                                        projections, eps norm_eps)
//   q, k = rope(q), rope(k)          (rope; HF rotate_half: pair (i, i + dh/2) rotated by
//                                     pos * f_i, f_i = theta^(-2i/dh), positions from 0;
//                                     YaRN rescales f_i and q, k: rope_frequencies)
//   o_h = softmax(q_h k_g^T / sqrt(dh) + mask) v_g,   g = h / (H / Hkv)  (GQA)
//   y = o W_o^T
// mask: causal; with window w > 0 query t sees keys t-w+1 .. t (HF sliding_window semantics).
//
// The core is a tiled online softmax (flash-attention-2 style): the forward keeps a running
// max / sum per query row over key tiles and saves only the row logsumexp; the backward
// recomputes the probabilities tile by tile from it, with D_t = dO_t . O_t. Nothing T x T
// is ever stored; key tiles that are fully masked (above the diagonal or before the
// window) are skipped, and within a tile only the kept (query, key) pairs are computed, so
// a sliding window costs O(T w).
#pragma once
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "core/params.h"

namespace hysim {

struct AttentionConfig {
  int64_t d_model = 64;
  int64_t n_heads = 4;     // H query heads
  int64_t n_kv_heads = 4;  // Hkv key/value heads (GQA when < H; H must be a multiple)
  int64_t d_head = 16;     // dh (even when rope)
  bool qk_norm = true;
  double norm_eps = 1e-6;
  bool rope = true;        // false = NoPE
  double rope_theta = 10000.0;
  // YaRN context extension (rope_yarn_factor s > 1; 1 = plain RoPE): see rope_frequencies.
  double rope_yarn_factor = 1.0;
  int64_t rope_yarn_original_len = 0;  // the context length the model was trained at
  double rope_yarn_beta_fast = 32.0, rope_yarn_beta_slow = 1.0;
  int64_t window = 0;      // <= 0: full causal attention
  int64_t tile = 64;       // query and key tile length of the online softmax
  double init_std = 0.02;

  int64_t q_dim() const { return n_heads * d_head; }
  int64_t kv_dim() const { return n_kv_heads * d_head; }
  void validate() const {
    if (d_model <= 0 || n_heads <= 0 || n_kv_heads <= 0 || d_head <= 0 || tile <= 0)
      throw std::invalid_argument("AttentionConfig: sizes and tile must be positive");
    if (n_heads % n_kv_heads != 0)
      throw std::invalid_argument("AttentionConfig: n_heads must be a multiple of n_kv_heads");
    if (rope && d_head % 2 != 0) throw std::invalid_argument("AttentionConfig: RoPE needs an even d_head");
    if (rope_yarn_factor < 1.0 || (rope_yarn_factor > 1.0 && rope_yarn_original_len <= 0))
      throw std::invalid_argument("AttentionConfig: YaRN needs rope_yarn_factor >= 1 and rope_yarn_original_len > 0");
  }
};

template <class T> struct AttentionParams {
  T* q_proj = nullptr;  // [H dh, d_model]
  T* k_proj = nullptr;  // [Hkv dh, d_model]
  T* v_proj = nullptr;  // [Hkv dh, d_model]
  T* o_proj = nullptr;  // [d_model, H dh]
  T* q_norm = nullptr;  // [H dh]   (qk_norm only)
  T* k_norm = nullptr;  // [Hkv dh] (qk_norm only)
};

template <class T, class V> void visit_params(const AttentionConfig& c, AttentionParams<T>& p, V&& v) {
  c.validate();
  v(p.q_proj, ParamSpec{"q_proj", {c.q_dim(), c.d_model}, Init::normal(c.init_std)});
  v(p.k_proj, ParamSpec{"k_proj", {c.kv_dim(), c.d_model}, Init::normal(c.init_std)});
  v(p.v_proj, ParamSpec{"v_proj", {c.kv_dim(), c.d_model}, Init::normal(c.init_std)});
  v(p.o_proj, ParamSpec{"o_proj", {c.d_model, c.q_dim()}, Init::normal(c.init_std)});
  if (c.qk_norm) {
    v(p.q_norm, ParamSpec{"q_norm", {c.q_dim()}, Init::ones(), false});
    v(p.k_norm, ParamSpec{"k_norm", {c.kv_dim()}, Init::ones(), false});
  }
}

// Per token: (H + 2 Hkv) dh + H dh + H, plus (H + Hkv) dh + 2 with qk_norm (as counted by
// scaling/accounting.cpp, attention_mixer_acts).
template <class T> struct AttentionActs {
  T* q_raw = nullptr;   // [B, T, H dh]    q projection before the norm (qk_norm only)
  T* k_raw = nullptr;   // [B, T, Hkv dh]  (qk_norm only)
  T* q_rstd = nullptr;  // [B, T]          (qk_norm only)
  T* k_rstd = nullptr;  // [B, T]          (qk_norm only)
  T* q = nullptr;       // [B, T, H dh]    normed and rotated: what the core reads
  T* k = nullptr;       // [B, T, Hkv dh]
  T* v = nullptr;       // [B, T, Hkv dh]
  T* o = nullptr;       // [B, T, H dh]    core output = o_proj input
  T* lse = nullptr;     // [B, H, T]       logsumexp of each row of scaled scores
};

template <class T, class V>
void visit_acts(const AttentionConfig& c, int64_t B, int64_t Tn, AttentionActs<T>& a, V&& v) {
  const int64_t BT = B * Tn, norm = c.qk_norm ? 1 : 0;
  v(a.q_raw, "q_raw", norm * BT * c.q_dim());
  v(a.k_raw, "k_raw", norm * BT * c.kv_dim());
  v(a.q_rstd, "q_rstd", norm * BT);
  v(a.k_rstd, "k_rstd", norm * BT);
  v(a.q, "q", BT * c.q_dim());
  v(a.k, "k", BT * c.kv_dim());
  v(a.v, "v", BT * c.kv_dim());
  v(a.o, "o", BT * c.q_dim());
  v(a.lse, "lse", BT * c.n_heads);
}

// Full layer. x, y: [B, Tn, d_model]. Backward: dx overwritten, grad.* accumulated.
template <class T>
void attention_forward(const AttentionConfig& c, const AttentionParams<T>& p, const AttentionActs<T>& a, T* y,
                       const T* x, int64_t B, int64_t Tn);
template <class T>
void attention_backward(const AttentionConfig& c, const AttentionParams<T>& p, const AttentionParams<T>& grad,
                        const AttentionActs<T>& a, T* dx, const T* dy, const T* x, int64_t B, int64_t Tn);

// Core (uses n_heads, n_kv_heads, d_head, window, tile). q, o: [B, Tn, H dh]; k, v:
// [B, Tn, Hkv dh]; lse: [B, H, Tn]. Backward overwrites dq, dk, dv (shaped like q, k, v).
template <class T>
void attention_core_forward(const AttentionConfig& c, T* o, T* lse, const T* q, const T* k, const T* v, int64_t B,
                            int64_t Tn);
template <class T>
void attention_core_backward(const AttentionConfig& c, T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k,
                             const T* v, const T* o, const T* lse, int64_t B, int64_t Tn);

// RoPE's rotation frequencies f_i (i < dh/2) and the factor `scale` that multiplies q and
// k after rotation. Plain RoPE: f_i = theta^(-2i/dh), scale 1. YaRN (Peng et al. 2023,
// "NTK-by-parts", as HF's yarn rope type), for a model trained at context L0 run at
// s = rope_yarn_factor times it: dimensions turning more than beta_fast times over L0 keep
// f_i (they only see local order), those turning less than beta_slow times are
// interpolated to f_i / s (positions beyond L0 then map into the trained range), with a
// linear ramp in i between; scale = 0.1 ln(s) + 1 (the logits q.k grow by scale^2, which
// keeps the softmax as sharp over s times more keys).
struct RopeFrequencies {
  std::vector<double> f;
  double scale = 1.0;
};
RopeFrequencies rope_frequencies(const AttentionConfig& c);

// RoPE in place on x [B, Tn, n_heads, dh] (positions 0 .. Tn-1), dh = 2 * freq.f.size();
// inverse = true applies the transpose (the backward: rotate back, same scale).
template <class T>
void rope_apply(T* x, int64_t B, int64_t Tn, int64_t n_heads, const RopeFrequencies& freq, bool inverse);

// (query, key) pairs the mask keeps in one sequence of length Tn.
inline int64_t attention_kept_pairs(const AttentionConfig& c, int64_t Tn) {
  const int64_t w = c.window;
  if (w <= 0 || w >= Tn) return Tn * (Tn + 1) / 2;
  return w * (w + 1) / 2 + (Tn - w) * w;
}

// Forward FLOPs (2 per multiply-add): the four projections; per kept pair and query head
// q.k and p v (4 dh) plus scale, exp and running sum (3) (the core computes exactly the kept
// pairs); qk_norm 4 and RoPE 3 per element of q and k. Same count as scaling/accounting.cpp.
inline int64_t attention_flops(const AttentionConfig& c, int64_t B, int64_t Tn) {
  const int64_t BT = B * Tn, qk = c.q_dim() + c.kv_dim();
  int64_t f = 2 * BT * c.d_model * (c.q_dim() + 2 * c.kv_dim()) + 2 * BT * c.q_dim() * c.d_model;
  f += B * attention_kept_pairs(c, Tn) * c.n_heads * (4 * c.d_head + 3);
  if (c.qk_norm) f += 4 * BT * qk;
  if (c.rope) f += 3 * BT * qk;
  return f;
}

}  // namespace hysim
