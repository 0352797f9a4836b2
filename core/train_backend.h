// What the training loop (core/trainer.cpp) needs from a device: one model, its
// gradients and its AdamW state. Two implementations: the CPU (Model<float> + AdamW<float>,
// core/trainer.cpp) and, in CUDA builds, one GPU (core/cuda/train_backend.cpp).
//
// Both use the CPU ParamStore layout, parameter names and initial values, and export the
// same named fp32 tensors (parameters; "adam_m/<name>", "adam_v/<name>"), so a checkpoint
// written by one backend resumes in the other.
//
// Data parallel (CUDA only; core/distributed.h): one backend per process, each with its
// own batches; update() averages the gradients over the ranks (ZeRO-1: each rank steps
// its shard of the optimizer, then the weights are gathered). The calls marked
// "collective" must be made by every rank in the same order.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/checkpoint.h"
#include "core/config.h"
#include "core/distributed.h"
#include "core/optimizer.h"
#include "core/trainer.h"
#include "layers/model.h"
#include "synthetic_tasks/task.h"

namespace hysim {

class TrainBackend {
 public:
  virtual ~TrainBackend() = default;
  virtual std::string name() const = 0;  // "cpu" | "cuda"
  virtual std::string description() const = 0;  // for the progress header
  virtual int64_t n_params() const = 0;

  virtual void zero_grad() = 0;
  // Forward (+ backward when compute_grad, gradients accumulating) of one batch.
  virtual StepStats forward_backward(const Batch& b, double z_loss, bool compute_grad) = 0;
  virtual void scale_grad(double s) = 0;
  // Clip + AdamW step (collective); returns the gradient norm before clipping, over all
  // ranks (non-finite: nothing changed).
  virtual double update(double lr, double max_norm) = 0;

  // This process's place among the data-parallel ranks, and a sum of host values over
  // them, in place (collective; one process: nothing to do).
  virtual WorldInfo world() const { return {}; }
  virtual void sum_over_ranks(double* values, int n) {}

  // Collective, between steps (the CUDA backend gathers through the gradient buffer):
  // the leader gets the tensors, the other ranks an empty list.
  virtual std::vector<NamedTensor> param_tensors() = 0;
  // Throws std::runtime_error naming a parameter that is missing or has another shape.
  virtual void load_param_tensors(const std::vector<NamedTensor>& tensors, const std::string& what) = 0;
  virtual std::vector<NamedTensor> optimizer_tensors() = 0;
  virtual void load_optimizer_tensors(const std::vector<NamedTensor>& tensors, int64_t step_count) = 0;

  // Loss and accuracy on validation batches 0 .. n_batches-1 at the training shape, and
  // for the current parameters in a model of config `mc` at sequence length Tn
  // (length generalisation; mc may differ in its positional settings only). Collective:
  // the ranks share the batches out and add up.
  virtual EvalStats evaluate(const DataSource& data, int64_t n_batches) = 0;
  virtual EvalStats evaluate_at_length(const ModelConfig& mc, const DataSource& data, int64_t Tn,
                                       int64_t n_batches) = 0;
};

std::unique_ptr<TrainBackend> make_cpu_backend(const ModelConfig& mc, const AdamWConfig& ac, int64_t B, int64_t Tn,
                                               uint64_t seed);
// CUDA builds only (HYSIM_HAVE_CUDA): the model on the GPU of this rank's local rank.
// With a multi-process `world`, the ranks meet through `rendezvous_file`
// (rendezvous_path) and the optimizer is sharded over them (ZeRO-1). Throws naming what
// is not supported on the GPU or when no device is present.
struct CudaOptions {
  WorldInfo world;                        // data-parallel ranks (default: one process)
  std::string rendezvous_file;            // where they meet
  bool activation_checkpointing = false;  // keep block inputs only; recompute each block in the backward
};
std::unique_ptr<TrainBackend> make_cuda_backend(const ModelConfig& mc, const AdamWConfig& ac, int64_t B, int64_t Tn,
                                                uint64_t seed, const CudaOptions& options = {});

// Shared by the backends: sums weighted by the loss mask over validation batches
// first, first + stride, ... below n_batches (fewer when the source has fewer);
// forward(batch) -> StepStats. A rank takes first = rank, stride = world size.
struct EvalSums {
  double loss = 0, weight = 0, correct = 0;
  EvalStats stats() const {
    if (weight <= 0) return {std::nan(""), std::nan("")};
    return {loss / weight, correct / weight};
  }
};
template <class Forward>
EvalSums evaluate_batch_sums(const DataSource& data, int64_t B, int64_t Tn, int64_t n_batches, int first, int stride,
                             Forward&& forward) {
  const int64_t distinct = data.val_batch_count(B, Tn);
  if (distinct > 0) n_batches = std::min(n_batches, distinct);
  Batch b;
  EvalSums sums;
  for (int64_t i = first; i < n_batches; i += stride) {
    data.val_batch(i, B, Tn, b);
    const StepStats s = forward(b);
    sums.loss += s.loss * s.weight_sum;
    sums.weight += s.weight_sum;
    sums.correct += double(s.n_correct);
  }
  return sums;
}
template <class Forward>
EvalStats evaluate_batches(const DataSource& data, int64_t B, int64_t Tn, int64_t n_batches, Forward&& forward) {
  return evaluate_batch_sums(data, B, Tn, n_batches, 0, 1, forward).stats();
}

}  // namespace hysim
