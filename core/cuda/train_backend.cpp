// The CUDA training backend (core/train_backend.h): DeviceModel + the GPU AdamW on this
// rank's GPU; with several ranks, data parallel over NCCL with the optimizer sharded
// (ZeRO-1: rank r owns the fp32 master, m and v of parameters [r S, (r + 1) S)).
// Compiled into hysim_train in CUDA builds (cmake/cuda.cmake defines HYSIM_HAVE_CUDA).
//
// One step on every rank: forward + backward of its own batch into the whole fp32
// gradient; reduce-scatter (mean) of the gradient into the rank's shard; the norm's
// squares summed over the ranks; AdamW on the shard, writing its bf16 weights; all-gather
// of the bf16 weights. One rank is exactly the single-GPU path (no collective).
#include <memory>
#include <stdexcept>

#include "core/cuda/adamw.h"
#include "core/cuda/model.h"
#include "core/cuda/nccl_comm.h"
#include "core/cuda/phase_timer.h"
#include "core/train_backend.h"

namespace hysim {

namespace {

class CudaBackend final : public TrainBackend {
 public:
  CudaBackend(const ModelConfig& mc, const AdamWConfig& ac, int64_t B, int64_t Tn, uint64_t seed,
              const CudaOptions& o)
      : world_(o.world),
        ctx_(cuda::DeviceModel::scratch_bytes(mc, B, Tn), cuda::local_device(o.world)),
        comm_(o.world.distributed() ? std::make_unique<cuda::NcclComm>(ctx_, o.world, o.rendezvous_file) : nullptr),
        model_(ctx_, mc, B, Tn, o.world.size, o.activation_checkpointing),
        adam_(ctx_, param_groups(model_.layout), ac, o.world.rank * model_.shard_size(),
              (o.world.rank + 1) * model_.shard_size()),
        adam_cfg_(ac),
        B_(B),
        T_(Tn) {
    const std::vector<float> v = model_.initial_values(seed);
    model_.set_values(v);
    adam_.set_master(ctx_, v.data());
  }
  std::string name() const override { return "cuda"; }
  std::string description() const override {
    std::string d = cuda::device_summary(ctx_.device);
    if (model_.checkpointing) d += ", activation checkpointing";
    if (world_.distributed())
      d += ", rank " + std::to_string(world_.rank) + " of " + std::to_string(world_.size) + " (ZeRO-1)";
    return d;
  }
  int64_t n_params() const override { return model_.n_params(); }
  void zero_grad() override { model_.zero_grad(); }
  StepStats forward_backward(const Batch& b, double z_loss, bool compute_grad) override {
    return model_.forward_backward(b.tokens.data(), b.targets.data(), b.loss_mask.data(), b.B, b.T, z_loss,
                                   compute_grad);
  }
  void scale_grad(double s) override { model_.scale_grad(float(s)); }
  double update(double lr, double max_norm) override {
    cuda::PhaseScope span(ctx_.stream, "clip + AdamW");
    if (!comm_) return adam_.update(ctx_, model_.weights(), model_.grad(), lr, max_norm);
    const int64_t S = model_.shard_size();
    {
      cuda::PhaseScope rs(ctx_.stream, "gradient reduce-scatter");
      comm_->reduce_scatter_mean(model_.grad(), S);
    }
    const double norm = adam_.update(ctx_, model_.weights(), model_.grad(), lr, max_norm, [&](double sq) {
      comm_->sum(&sq, 1);
      return sq;
    });
    if (std::isfinite(norm)) {  // every rank saw the same norm: all of them gather, or none
      cuda::PhaseScope ag(ctx_.stream, "weights all-gather");
      comm_->all_gather(model_.weights(), S);
    }
    return norm;
  }
  WorldInfo world() const override { return world_; }
  void sum_over_ranks(double* values, int n) override {
    if (comm_) comm_->sum(values, n);
  }

  std::vector<NamedTensor> param_tensors() override {
    ParamStore<float> s = model_.layout;
    s.value = gather(adam_.master());
    return world_.leader() ? store_tensors(s) : std::vector<NamedTensor>{};
  }
  void load_param_tensors(const std::vector<NamedTensor>& t, const std::string& what) override {
    ParamStore<float> s = model_.layout;
    s.value.assign(size_t(model_.layout_size()), 0.f);
    load_store_tensors(s, t, what);
    model_.set_values(s.value);
    adam_.set_master(ctx_, s.value.data());
  }
  // The moments go through a host AdamW of the same groups, which names and checks them
  // exactly as the CPU backend does.
  std::vector<NamedTensor> optimizer_tensors() override {
    if (!world_.leader()) {  // take part in the gathers, keep nothing
      gather(adam_.m()), gather(adam_.v());
      return {};
    }
    AdamW<float> host(adam_.groups(), adam_cfg_);
    host.m() = gather(adam_.m());
    host.v() = gather(adam_.v());
    return host.state_tensors();
  }
  void load_optimizer_tensors(const std::vector<NamedTensor>& t, int64_t step_count) override {
    AdamW<float> host(adam_.groups(), adam_cfg_);
    host.load_state_tensors(t);
    cuda::to_device(ctx_, adam_.m(), host.m().data() + adam_.shard_lo(), adam_.shard_size());
    cuda::to_device(ctx_, adam_.v(), host.v().data() + adam_.shard_lo(), adam_.shard_size());
    ctx_.sync();
    adam_.set_step_count(step_count);
  }
  EvalStats evaluate(const DataSource& data, int64_t n_batches) override {
    return evaluate_device(model_, data, T_, n_batches);
  }
  EvalStats evaluate_at_length(const ModelConfig& mc, const DataSource& data, int64_t Tn,
                               int64_t n_batches) override {
    cuda::Context ctx(cuda::DeviceModel::scratch_bytes(mc, B_, Tn), ctx_.device);
    cuda::DeviceModel m(ctx, mc, B_, Tn, 1, model_.checkpointing);
    m.copy_weights(model_);
    return evaluate_device(m, data, Tn, n_batches);
  }

 private:
  WorldInfo world_;
  cuda::Context ctx_;
  std::unique_ptr<cuda::NcclComm> comm_;
  cuda::DeviceModel model_;
  cuda::AdamW adam_;
  AdamWConfig adam_cfg_;
  int64_t B_, T_;

  // A per-shard optimizer array (master, m or v) of every parameter, on the leader's host in
  // the model's layout; the other ranks take part and get nothing (a 7B array is 30 GB: a
  // copy on every rank outgrew the host at checkpoints). Staged in the gradient buffer,
  // which is free between steps and zeroed at the next one.
  std::vector<float> gather(const float* shard_array) {
    float* staging = model_.grad();
    CUDA_CHECK(cudaMemcpyAsync(staging + adam_.shard_lo(), shard_array, size_t(adam_.shard_size()) * sizeof(float),
                               cudaMemcpyDeviceToDevice, ctx_.stream));
    if (comm_) comm_->all_gather(staging, model_.shard_size());
    if (!world_.leader()) return {};
    std::vector<float> v(size_t(model_.layout_size()));
    cuda::to_host(ctx_, v.data(), staging, model_.layout_size());
    return v;
  }

  // Validation loss and accuracy of a device model: this rank's share of the batches,
  // summed over the ranks.
  EvalStats evaluate_device(cuda::DeviceModel& m, const DataSource& data, int64_t Tn, int64_t n_batches) {
    EvalSums s = evaluate_batch_sums(data, B_, Tn, n_batches, world_.rank, world_.size, [&](const Batch& b) {
      return m.forward_backward(b.tokens.data(), b.targets.data(), b.loss_mask.data(), b.B, b.T, 0.0, false);
    });
    double v[3] = {s.loss, s.weight, s.correct};
    sum_over_ranks(v, 3);
    return EvalSums{v[0], v[1], v[2]}.stats();
  }
};

}  // namespace

std::unique_ptr<TrainBackend> make_cuda_backend(const ModelConfig& mc, const AdamWConfig& ac, int64_t B, int64_t Tn,
                                                uint64_t seed, const CudaOptions& options) {
  if (cuda::device_count() == 0)
    throw std::runtime_error("run.device = cuda: no CUDA device is visible (driver missing or no GPU)");
  return std::make_unique<CudaBackend>(mc, ac, B, Tn, seed, options);
}

}  // namespace hysim
