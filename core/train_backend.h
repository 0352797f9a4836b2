// What the training loop (core/trainer.cpp) needs from a device: one model, its
// gradients and its AdamW state. Two implementations: the CPU (Model<float> + AdamW<float>,
// core/trainer.cpp) and, in CUDA builds, one GPU (core/cuda/train_backend.cpp).
//
// Both use the CPU ParamStore layout, parameter names and initial values, and export the
// same named fp32 tensors (parameters; "adam_m/<name>", "adam_v/<name>"), so a checkpoint
// written by one backend resumes in the other.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/checkpoint.h"
#include "core/config.h"
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
  // Clip + AdamW step; returns the gradient norm before clipping (non-finite: nothing changed).
  virtual double update(double lr, double max_norm) = 0;

  virtual std::vector<NamedTensor> param_tensors() = 0;
  // Throws std::runtime_error naming a parameter that is missing or has another shape.
  virtual void load_param_tensors(const std::vector<NamedTensor>& tensors, const std::string& what) = 0;
  virtual std::vector<NamedTensor> optimizer_tensors() = 0;
  virtual void load_optimizer_tensors(const std::vector<NamedTensor>& tensors, int64_t step_count) = 0;

  // Loss and accuracy on validation batches 0 .. n_batches-1 at the training shape, and
  // for the current parameters in a model of config `mc` at sequence length Tn
  // (length generalisation; mc may differ in its positional settings only).
  virtual EvalStats evaluate(const DataSource& data, int64_t n_batches) = 0;
  virtual EvalStats evaluate_at_length(const ModelConfig& mc, const DataSource& data, int64_t Tn,
                                       int64_t n_batches) = 0;
};

std::unique_ptr<TrainBackend> make_cpu_backend(const ModelConfig& mc, const AdamWConfig& ac, int64_t B, int64_t Tn,
                                               uint64_t seed);
// CUDA builds only (HYSIM_HAVE_CUDA): the model on GPU 0. Throws naming what is not
// supported on the GPU or when no device is present.
std::unique_ptr<TrainBackend> make_cuda_backend(const ModelConfig& mc, const AdamWConfig& ac, int64_t B, int64_t Tn,
                                                uint64_t seed);

// Shared by the backends: loss and accuracy weighted by the loss mask over validation
// batches 0 .. n_batches-1 (fewer when the source has fewer), forward(batch) -> StepStats.
template <class Forward>
EvalStats evaluate_batches(const DataSource& data, int64_t B, int64_t Tn, int64_t n_batches, Forward&& forward) {
  const int64_t distinct = data.val_batch_count(B, Tn);
  if (distinct > 0) n_batches = std::min(n_batches, distinct);
  Batch b;
  double loss_sum = 0, w_sum = 0, correct = 0;
  for (int64_t i = 0; i < n_batches; ++i) {
    data.val_batch(i, B, Tn, b);
    const StepStats s = forward(b);
    loss_sum += s.loss * s.weight_sum;
    w_sum += s.weight_sum;
    correct += double(s.n_correct);
  }
  if (w_sum <= 0) return {std::nan(""), std::nan("")};
  return {loss_sum / w_sum, correct / w_sum};
}

}  // namespace hysim
