// AdamW over flat parameter / gradient arrays (the ParamStore layout), plus global
// gradient-norm clipping.
//
// The arrays are described by named groups (offset, numel, weight_decay), one per
// parameter tensor; param_groups(store) builds them from a ParamStore. One step with
// learning rate lr, for every element of every group (t = step count after the step):
//   m = beta1 m + (1 - beta1) g
//   v = beta2 v + (1 - beta2) g^2
//   p = p - lr wd p                        only in groups with weight_decay (decoupled:
//                                          not scaled by the Adam denominator)
//   p = p - lr / (1 - beta1^t) * m / (sqrt(v / (1 - beta2^t)) + eps)
// This is torch.optim.AdamW (PyTorch applies the decay first, p *= 1 - lr wd; the Adam
// term does not depend on p, so the order does not matter).
//
// Gradient norms are sums of squares in double over fixed blocks, the blocks' partial
// sums added in a fixed order: the result does not depend on the number of threads.
// A non-finite norm (a NaN or Inf gradient) is returned as is and nothing is changed,
// so the caller can count and skip the step (update() does this).
//
// State: m and v have the element type of the parameters (fp32 for fp32 training; an
// fp64 run keeps fp64 state). For checkpoints, state_tensors() exports them as fp32
// tensors named "adam_m/<param>" and "adam_v/<param>"; the step count is saved separately
// (bias correction needs it).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/checkpoint.h"
#include "core/params.h"

namespace hysim {

struct ParamGroup {
  std::string name;  // parameter path, e.g. "blocks.3.mixer.q_proj"
  int64_t offset = 0, numel = 0;  // elements [offset, offset + numel) of the flat arrays
  bool weight_decay = true;
  Shape shape;  // for checkpoints; empty = {numel}
};

// One group per parameter of the store, in store order.
template <class T> std::vector<ParamGroup> param_groups(const ParamStore<T>& store) {
  std::vector<ParamGroup> g;
  for (size_t i = 0; i < store.specs.size(); ++i)
    g.push_back({store.specs[i].name, store.offsets[i], store.specs[i].numel(), store.specs[i].weight_decay,
                 store.specs[i].shape});
  return g;
}

struct AdamWConfig {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double weight_decay = 0.1;  // applied to groups with weight_decay = true only
};

// sqrt(sum g^2) over n elements, accumulated in double (thread-count independent).
template <class T> double grad_norm(const T* grad, int64_t n);
// Global-norm clipping: if the norm exceeds max_norm > 0, scales grad by max_norm / norm
// so its norm becomes max_norm. Returns the norm before clipping. A non-finite norm is
// returned unchanged and grad is left untouched. max_norm <= 0: no clipping.
template <class T> double clip_grad_norm(T* grad, int64_t n, double max_norm);

template <class T> class AdamW {
 public:
  // Throws std::invalid_argument for empty/duplicate names, negative offset or numel,
  // overlapping groups, a shape that does not match numel, or betas outside [0, 1).
  explicit AdamW(std::vector<ParamGroup> groups, AdamWConfig cfg = {});

  // Gradient norm over all groups (as grad_norm, summed group by group in order).
  double grad_norm(const T* grad) const;
  // Clips (as clip_grad_norm over the groups) and, if the norm is finite, takes one step.
  // Returns the norm before clipping; a non-finite norm means nothing changed (params,
  // grads, state and step count are untouched).
  double update(T* params, T* grad, double lr, double max_norm);
  // One AdamW step with learning rate lr (no clipping, no finiteness check).
  void step(T* params, const T* grad, double lr);

  int64_t step_count() const { return step_count_; }
  void set_step_count(int64_t t) { step_count_ = t; }
  // Elements spanned by the groups: the arrays passed in need at least this many.
  int64_t size() const { return size_; }
  const std::vector<ParamGroup>& groups() const { return groups_; }
  const AdamWConfig& config() const { return cfg_; }
  AdamWConfig& config() { return cfg_; }

  // First and second moments, in the layout of the parameter array.
  std::vector<T>& m() { return m_; }
  std::vector<T>& v() { return v_; }
  const std::vector<T>& m() const { return m_; }
  const std::vector<T>& v() const { return v_; }

  // "adam_m/<name>" and "adam_v/<name>" for every group (m's first, group order), fp32.
  std::vector<NamedTensor> state_tensors() const;
  // Restores m and v from tensors named as above (others are ignored). Throws
  // std::runtime_error naming a missing tensor or one whose size does not match.
  void load_state_tensors(const std::vector<NamedTensor>& tensors);

 private:
  std::vector<ParamGroup> groups_;
  AdamWConfig cfg_;
  int64_t size_ = 0;
  int64_t step_count_ = 0;
  std::vector<T> m_, v_;
};

}  // namespace hysim
