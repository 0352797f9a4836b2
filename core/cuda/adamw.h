// AdamW on the GPU over the flat fp32 master weights, with the bf16 copy that the layers
// read written in the same pass. Same groups, hyper-parameters, update rule and gradient
// norm as hysim::AdamW (core/optimizer.h), which it is tested against:
//   m = b1 m + (1 - b1) g,  v = b2 v + (1 - b2) g^2,  p -= lr wd p (decay groups only),
//   p -= lr / (1 - b1^t) m / (sqrt(v / (1 - b2^t)) + eps)
// Few launches whatever the number of parameter tensors: the groups are cut into chunks
// of 2^14 elements (the CPU's norm blocks) listed in one device table, and each kernel
// runs over that table: norm = 2 launches, step = 1.
// The gradient norm is deterministic: squares summed in double per chunk, the chunks'
// partial sums added in (group, chunk) order by one block.
// Differences from the CPU class: m and v live on the device (fp32); clipping is applied
// inside the step (the gradient array is not rescaled in place).
#pragma once
#include <cstdint>
#include <vector>

#include "core/cuda/convert.h"
#include "core/optimizer.h"

namespace hysim::cuda {

class AdamW {
 public:
  // Allocates m, v (zeroed), the chunk table and the norm scratch in one device arena.
  // Throws std::invalid_argument for negative offsets or sizes, or betas outside [0, 1).
  AdamW(Context& ctx, std::vector<ParamGroup> groups, AdamWConfig cfg = {});

  // sqrt(sum g^2) over the groups; synchronizes to return it.
  double grad_norm(Context& ctx, const float* grad);
  // As hysim::AdamW::update: the norm before clipping is returned (one synchronization);
  // if it is not finite nothing changes (master, params, state, step count). Otherwise
  // one step with g scaled by max_norm / norm when max_norm > 0 and norm > max_norm.
  // params (bf16 copy of master, may be null) is written from the updated master.
  double update(Context& ctx, float* master, bf16* params, const float* grad, double lr, double max_norm);
  // One step, no clipping, no check; asynchronous.
  void step(Context& ctx, float* master, bf16* params, const float* grad, double lr, float grad_scale = 1.f);

  int64_t step_count() const { return step_count_; }
  void set_step_count(int64_t t) { step_count_ = t; }
  int64_t size() const { return size_; }
  const std::vector<ParamGroup>& groups() const { return groups_; }
  float* m() { return m_; }  // device, layout of the parameter array
  float* v() { return v_; }

 private:
  std::vector<ParamGroup> groups_;
  AdamWConfig cfg_;
  int64_t size_ = 0, step_count_ = 0, n_chunks_ = 0;
  DeviceArena arena_;
  float *m_ = nullptr, *v_ = nullptr;
  void* chunks_ = nullptr;        // device table of chunks (offset, numel, decay flag)
  double* partial_ = nullptr;     // per-chunk sums of squares
  double* norm_sq_ = nullptr;     // their ordered sum
};

}  // namespace hysim::cuda
