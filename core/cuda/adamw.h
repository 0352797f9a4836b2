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
// Differences from the CPU class: the fp32 master weights, m and v live here, on the
// device; clipping is applied inside the step (the gradient array is not rescaled).
//
// ZeRO-1: an AdamW may own a shard [lo, hi) of the flat parameter array only (its
// master, m and v hold hi - lo elements; the gradient and the bf16 weights stay whole).
// Its norm then covers the shard's elements, and update() sums it over the ranks
// through `sum_over_ranks`. With the whole range (the default) nothing changes from one
// process: same chunks, same order, same numbers.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "core/cuda/convert.h"
#include "core/optimizer.h"

namespace hysim::cuda {

class AdamW {
 public:
  // Allocates master, m, v (zeroed) for the shard [shard_lo, shard_hi) (shard_hi < 0: to
  // the end), the chunk table and the norm scratch in one device arena. Throws
  // std::invalid_argument for negative offsets or sizes, betas outside [0, 1), or a shard
  // outside the parameters or not starting at a multiple of 4 (16-byte accesses).
  AdamW(Context& ctx, std::vector<ParamGroup> groups, AdamWConfig cfg = {}, int64_t shard_lo = 0,
        int64_t shard_hi = -1);

  // Sum of g^2 over the shard's elements (deterministic order); synchronizes.
  double grad_sq_sum(Context& ctx, const float* grad);
  // As hysim::AdamW::update: the norm before clipping, sqrt(sum_over_ranks(grad_sq_sum))
  // (one process: no function), is returned; if it is not finite nothing changes
  // (master, params, state, step count). Otherwise one step with g scaled by
  // max_norm / norm when max_norm > 0 and norm > max_norm.
  using RankSum = std::function<double(double)>;
  double update(Context& ctx, bf16* params, const float* grad, double lr, double max_norm,
                const RankSum& sum_over_ranks = {});
  // One step, no clipping, no check; asynchronous. params (bf16, the whole array, may be
  // null) gets the shard's updated master values; grad is the whole array (only the shard is read).
  void step(Context& ctx, bf16* params, const float* grad, double lr, float grad_scale = 1.f);

  // Master values of every parameter (host, the whole layout): this shard's part is uploaded.
  void set_master(Context& ctx, const float* all_values);

  int64_t step_count() const { return step_count_; }
  void set_step_count(int64_t t) { step_count_ = t; }
  int64_t size() const { return size_; }  // parameters in the whole layout
  int64_t shard_lo() const { return lo_; }
  int64_t shard_size() const { return hi_ - lo_; }
  const std::vector<ParamGroup>& groups() const { return groups_; }
  // Device arrays of shard_size() elements; element i belongs to parameter shard_lo() + i.
  float* master() { return master_; }
  float* m() { return m_; }
  float* v() { return v_; }

 private:
  std::vector<ParamGroup> groups_;
  AdamWConfig cfg_;
  int64_t size_ = 0, lo_ = 0, hi_ = 0, step_count_ = 0, n_chunks_ = 0;
  DeviceArena arena_;
  float *master_ = nullptr, *m_ = nullptr, *v_ = nullptr;
  void* chunks_ = nullptr;        // device table of chunks (offset, numel, decay flag)
  double* partial_ = nullptr;     // per-chunk sums of squares
  double* norm_sq_ = nullptr;     // their ordered sum
};

}  // namespace hysim::cuda
