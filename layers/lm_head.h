// LM head with fused softmax cross-entropy (and z-loss), forward and backward in one
// pass over chunks of rows, so that at most chunk_rows x V logits exist at once.
//
// For row i with input x_i [D], target t_i, weight m_i >= 0 (loss mask), W [V, D] (HF
// "lm_head"; the embedding matrix when tied):
//   l_i   = W x_i,  lse_i = log sum_j exp(l_ij)
//   ce_i  = lse_i - l_i[t_i],   zl_i = z_loss * lse_i^2
//   J     = sum_i m_i (ce_i + zl_i) / sum_i m_i          (the objective; its gradients)
//   dJ/dl_ij = m_i / sum m * ((1 + 2 z_loss lse_i) softmax_ij - [j == t_i])
// Rows with m_i == 0 contribute nothing (their gradient rows are 0, their target is not
// read: any value, e.g. -100, is allowed there).
#pragma once
#include <cstdint>

#include "core/params.h"

namespace hysim {

struct LmHeadConfig {
  int64_t d_model = 64;
  int64_t vocab_size = 256;
  double init_std = 0.02;
};

template <class T> struct LmHeadParams {
  T* lm_head = nullptr;  // [V, D]
};

template <class T, class V> void visit_params(const LmHeadConfig& c, LmHeadParams<T>& p, V&& v) {
  v(p.lm_head, ParamSpec{"lm_head", {c.vocab_size, c.d_model}, Init::normal(c.init_std)});
}

struct LmHeadStats {
  double loss = 0;         // sum m_i ce_i / sum m_i (mean cross-entropy, nats; without the z-term)
  double z_loss_term = 0;  // sum m_i z_loss lse_i^2 / sum m_i (objective = loss + z_loss_term)
  double weight_sum = 0;   // sum m_i
  int64_t n_correct = 0;   // rows with m_i > 0 whose argmax logit (first on ties) is the target
};

// x: [N, D]; targets: [N]; loss_mask: [N] or null (all rows weight 1); W: [V, D].
// compute_grad: dx [N, D] is OVERWRITTEN with dJ/dx and dW [V, D] ACCUMULATES dJ/dW
// (either may be null to skip it). !compute_grad (eval): dx and dW are not touched.
// chunk_rows <= 0 means all N rows in one chunk. When sum m_i == 0 all stats are 0 and
// dx is zeroed. Throws std::out_of_range for a target outside [0, V) on a row with m_i != 0.
template <class T>
LmHeadStats lm_head_loss(T* dx, T* dW, const T* x, const T* W, const int32_t* targets, const float* loss_mask,
                         int64_t N, int64_t D, int64_t V, double z_loss, int64_t chunk_rows, bool compute_grad);

// logits [N, V] = x W^T (for inference / `hysim forward`).
template <class T> void lm_head_logits(T* logits, const T* x, const T* W, int64_t N, int64_t D, int64_t V);

// Forward FLOPs: the logits GEMM only (2 N D V); the softmax/CE is O(N V), as in scaling/accounting.
inline int64_t lm_head_flops(int64_t N, int64_t D, int64_t V) { return 2 * N * D * V; }

}  // namespace hysim
