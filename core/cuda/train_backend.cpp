// The CUDA training backend (core/train_backend.h): DeviceModel + the GPU AdamW on GPU 0.
// Compiled into hysim_train in CUDA builds (cmake/cuda.cmake defines HYSIM_HAVE_CUDA).
#include <stdexcept>

#include "core/cuda/adamw.h"
#include "core/cuda/model.h"
#include "core/cuda/phase_timer.h"
#include "core/train_backend.h"

namespace hysim {

namespace {

// Validation loss and accuracy of a device model at its shape (B, Tn).
EvalStats evaluate_device(cuda::DeviceModel& m, const DataSource& data, int64_t B, int64_t Tn, int64_t n_batches) {
  return evaluate_batches(data, B, Tn, n_batches, [&](const Batch& b) {
    return m.forward_backward(b.tokens.data(), b.targets.data(), b.loss_mask.data(), b.B, b.T, 0.0, false);
  });
}

class CudaBackend final : public TrainBackend {
 public:
  CudaBackend(const ModelConfig& mc, const AdamWConfig& ac, int64_t B, int64_t Tn, uint64_t seed)
      : ctx_(cuda::DeviceModel::scratch_bytes(mc, B, Tn)),
        model_(ctx_, mc, B, Tn),
        adam_(ctx_, param_groups(model_.layout), ac),
        adam_cfg_(ac),
        B_(B),
        T_(Tn) {
    model_.init(seed);
  }
  std::string name() const override { return "cuda"; }
  std::string description() const override { return cuda::device_summary(ctx_.device); }
  int64_t n_params() const override { return model_.n_params(); }
  void zero_grad() override { model_.zero_grad(); }
  StepStats forward_backward(const Batch& b, double z_loss, bool compute_grad) override {
    return model_.forward_backward(b.tokens.data(), b.targets.data(), b.loss_mask.data(), b.B, b.T, z_loss,
                                   compute_grad);
  }
  void scale_grad(double s) override { model_.scale_grad(float(s)); }
  double update(double lr, double max_norm) override {
    cuda::PhaseScope span(ctx_.stream, "clip + AdamW");
    return adam_.update(ctx_, model_.master(), model_.weights(), model_.grad(), lr, max_norm);
  }
  std::vector<NamedTensor> param_tensors() override {
    ParamStore<float> s = model_.layout;
    s.value = model_.values();
    return store_tensors(s);
  }
  void load_param_tensors(const std::vector<NamedTensor>& t, const std::string& what) override {
    ParamStore<float> s = model_.layout;
    s.value.assign(size_t(model_.n_params()), 0.f);
    load_store_tensors(s, t, what);
    model_.set_values(s.value);
  }
  // The moments go through a host AdamW of the same groups, which names and checks them
  // exactly as the CPU backend does.
  std::vector<NamedTensor> optimizer_tensors() override {
    AdamW<float> host(adam_.groups(), adam_cfg_);
    cuda::to_host(ctx_, host.m().data(), adam_.m(), adam_.size());
    cuda::to_host(ctx_, host.v().data(), adam_.v(), adam_.size());
    return host.state_tensors();
  }
  void load_optimizer_tensors(const std::vector<NamedTensor>& t, int64_t step_count) override {
    AdamW<float> host(adam_.groups(), adam_cfg_);
    host.load_state_tensors(t);
    cuda::to_device(ctx_, adam_.m(), host.m().data(), adam_.size());
    cuda::to_device(ctx_, adam_.v(), host.v().data(), adam_.size());
    ctx_.sync();
    adam_.set_step_count(step_count);
  }
  EvalStats evaluate(const DataSource& data, int64_t n_batches) override {
    return evaluate_device(model_, data, B_, T_, n_batches);
  }
  EvalStats evaluate_at_length(const ModelConfig& mc, const DataSource& data, int64_t Tn,
                               int64_t n_batches) override {
    cuda::Context ctx(cuda::DeviceModel::scratch_bytes(mc, B_, Tn), ctx_.device);
    cuda::DeviceModel m(ctx, mc, B_, Tn);
    m.set_values(model_.values());
    return evaluate_device(m, data, B_, Tn, n_batches);
  }

 private:
  cuda::Context ctx_;
  cuda::DeviceModel model_;
  cuda::AdamW adam_;
  AdamWConfig adam_cfg_;
  int64_t B_, T_;
};

}  // namespace

std::unique_ptr<TrainBackend> make_cuda_backend(const ModelConfig& mc, const AdamWConfig& ac, int64_t B, int64_t Tn,
                                                uint64_t seed) {
  if (cuda::device_count() == 0)
    throw std::runtime_error("run.device = cuda: no CUDA device is visible (driver missing or no GPU)");
  return std::make_unique<CudaBackend>(mc, ac, B, Tn, seed);
}

}  // namespace hysim
