#include "core/trainer.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>

#include <omp.h>

#include "core/optimizer.h"
#include "core/results.h"
#include "core/schedule.h"
#include "core/distributed.h"
#include "core/train_backend.h"
#include "layers/model.h"
#include "scaling/accounting.h"
#include "synthetic_tasks/registry.h"
#include "synthetic_tasks/text_data.h"
#include "synthetic_tasks/token_shards.h"

namespace hysim {

std::unique_ptr<DataSource> make_data_source(const Config& cfg) {
  const DataConfig& d = cfg.data;
  if (d.source == "text") {
    if (cfg.model.vocab_size < 256)
      throw std::runtime_error("data.source = text is byte-level and needs model.vocab_size >= 256 (got " +
                               std::to_string(cfg.model.vocab_size) + ")");
    return std::make_unique<TextData>(d.path, d.val_fraction, uint64_t(cfg.train.seed));
  }
  if (d.source == "tokens") {
    TokenShardConfig t;
    t.path = d.path;
    t.val_fraction = d.val_fraction;
    t.dtype = d.token_dtype;
    t.vocab_size = cfg.model.vocab_size;
    t.seed = uint64_t(cfg.train.seed);
    return std::make_unique<TokenShards>(t);
  }
  if (is_task(d.source)) return make_task(d.source, d.task_args, uint64_t(cfg.train.seed));
  std::string names;
  for (const std::string& t : task_names()) names += ", " + t;
  throw std::runtime_error("data.source = " + d.source + ": no such data source (available: text, tokens" + names + ")");
}

std::string run_results_path(const Config& cfg) {
  return results_path(cfg.run.out_dir, cfg.run.experiment, cfg.run.name);
}
std::string run_checkpoint_path(const Config& cfg) {
  return (std::filesystem::path(cfg.run.out_dir) / cfg.run.experiment / (cfg.run.name + ".ckpt.h5")).string();
}

std::string stable_checkpoint_path(const Config& cfg, int64_t step) {
  return (std::filesystem::path(cfg.run.out_dir) / cfg.run.experiment /
          (cfg.run.name + ".stable" + std::to_string(step) + ".ckpt.h5"))
      .string();
}

template <class T> std::vector<NamedTensor> store_tensors(const ParamStore<T>& store) {
  std::vector<NamedTensor> out;
  for (size_t i = 0; i < store.specs.size(); ++i) {
    const T* p = store.value.data() + store.offsets[i];
    out.push_back({store.specs[i].name, store.specs[i].shape, std::vector<float>(p, p + store.specs[i].numel())});
  }
  return out;
}

template <class T>
void load_store_tensors(ParamStore<T>& store, const std::vector<NamedTensor>& tensors, const std::string& what) {
  std::map<std::string, const NamedTensor*> by_name;
  for (const NamedTensor& t : tensors) by_name[t.name] = &t;
  for (size_t i = 0; i < store.specs.size(); ++i) {
    const ParamSpec& s = store.specs[i];
    auto it = by_name.find(s.name);
    if (it == by_name.end())
      throw std::runtime_error(what + ": parameter " + s.name + " " + shape_str(s.shape) +
                               " is missing (does the checkpoint match this model config?)");
    if (it->second->shape != s.shape)
      throw std::runtime_error(what + ": parameter " + s.name + " has shape " + shape_str(it->second->shape) +
                               " but the model config gives " + shape_str(s.shape));
    std::copy(it->second->data.begin(), it->second->data.end(), store.value.begin() + store.offsets[i]);
  }
}

namespace {

// One status line, rewritten in place on a terminal; plain log lines otherwise.
class Progress {
 public:
  explicit Progress(bool quiet) : quiet_(quiet), tty_(isatty(STDOUT_FILENO)) {}
  void update(const std::string& line, bool log_line) {
    if (quiet_) return;
    if (tty_) std::printf("\r%s\x1b[K", line.c_str());
    else if (log_line) std::printf("%s\n", line.c_str());
    std::fflush(stdout);
  }
  void message(const std::string& line) {
    if (quiet_) return;
    std::printf(tty_ ? "\r%s\x1b[K\n" : "%s\n", line.c_str());
    std::fflush(stdout);
  }
  void finish() {
    if (!quiet_ && tty_) std::printf("\n");
  }

 private:
  bool quiet_, tty_;
};

std::string format_duration(double s) {
  char buf[32];
  if (s >= 3600) std::snprintf(buf, sizeof buf, "%dh%02dm", int(s / 3600), int(std::fmod(s, 3600) / 60));
  else std::snprintf(buf, sizeof buf, "%dm%02ds", int(s / 60), int(std::fmod(s, 60)));
  return buf;
}

ScheduleConfig schedule_config(const TrainConfig& t) {
  ScheduleConfig s;
  s.kind = t.schedule;
  s.lr = t.lr;
  s.min_lr_ratio = t.min_lr_ratio;
  s.warmup_steps = t.warmup_steps;
  s.total_steps = t.steps;
  s.decay_fraction = t.decay_fraction;
  s.wsds_decays = t.wsds_decays;
  return s;
}

}  // namespace

EvalStats evaluate(Model<float>& model, const DataSource& data, int64_t B, int64_t Tn, int64_t n_batches) {
  return evaluate_batches(data, B, Tn, n_batches, [&](const Batch& b) {
    return model.forward_backward(b.tokens.data(), b.targets.data(), b.loss_mask.data(), B, Tn, 0.0, false);
  });
}

EvalStats evaluate_at_length(const ModelConfig& mc, const ParamStore<float>& params, const DataSource& data,
                             int64_t B, int64_t Tn, int64_t n_batches) {
  Model<float> m(mc, B, Tn);
  m.store.value = params.value;
  return evaluate(m, data, B, Tn, n_batches);
}

namespace {

// The CPU backend: Model<float> and AdamW<float> over its ParamStore.
class CpuBackend final : public TrainBackend {
 public:
  CpuBackend(const ModelConfig& mc, const AdamWConfig& ac, int64_t B, int64_t Tn, uint64_t seed)
      : model_(mc, B, Tn), adam_(param_groups(model_.store), ac), B_(B), T_(Tn) {
    model_.init(seed);
  }
  std::string name() const override { return "cpu"; }
  std::string description() const override {
    return "cpu, " + std::to_string(omp_get_max_threads()) + " threads";
  }
  int64_t n_params() const override { return model_.store.size(); }
  void zero_grad() override { model_.store.zero_grad(); }
  StepStats forward_backward(const Batch& b, double z_loss, bool compute_grad) override {
    return model_.forward_backward(b.tokens.data(), b.targets.data(), b.loss_mask.data(), b.B, b.T, z_loss,
                                   compute_grad);
  }
  void scale_grad(double s) override {
    for (float& g : model_.store.grad) g *= float(s);
  }
  double update(double lr, double max_norm) override {
    return adam_.update(model_.store.value.data(), model_.store.grad.data(), lr, max_norm);
  }
  std::vector<NamedTensor> param_tensors() override { return store_tensors(model_.store); }
  void load_param_tensors(const std::vector<NamedTensor>& t, const std::string& what) override {
    load_store_tensors(model_.store, t, what);
  }
  std::vector<NamedTensor> optimizer_tensors() override { return adam_.state_tensors(); }
  void load_optimizer_tensors(const std::vector<NamedTensor>& t, int64_t step_count) override {
    adam_.load_state_tensors(t);
    adam_.set_step_count(step_count);
  }
  EvalStats evaluate(const DataSource& data, int64_t n_batches) override {
    return hysim::evaluate(model_, data, B_, T_, n_batches);
  }
  EvalStats evaluate_at_length(const ModelConfig& mc, const DataSource& data, int64_t Tn,
                               int64_t n_batches) override {
    return hysim::evaluate_at_length(mc, model_.store, data, B_, Tn, n_batches);
  }

 private:
  Model<float> model_;
  AdamW<float> adam_;
  int64_t B_, T_;
};

}  // namespace

std::unique_ptr<TrainBackend> make_cpu_backend(const ModelConfig& mc, const AdamWConfig& ac, int64_t B, int64_t Tn,
                                               uint64_t seed) {
  return std::make_unique<CpuBackend>(mc, ac, B, Tn, seed);
}

#ifndef HYSIM_HAVE_CUDA
std::unique_ptr<TrainBackend> make_cuda_backend(const ModelConfig&, const AdamWConfig&, int64_t, int64_t, uint64_t,
                                                const CudaOptions&) {
  throw std::runtime_error(
      "run.device = cuda: this binary was built without the CUDA backend (configure with the `cuda` preset)");
}
#endif

TrainOutcome train(const Config& cfg, const TrainOptions& opt) {
  validate(cfg);
  if (cfg.run.threads > 0) omp_set_num_threads(int(cfg.run.threads));
  const TrainConfig& tc = cfg.train;
  const int64_t B = tc.batch_size, T = tc.seq_len;

  std::unique_ptr<DataSource> data = make_data_source(cfg);
  if (data->vocab_size() > cfg.model.vocab_size)
    throw std::runtime_error("data source " + data->name() + " has vocabulary " + std::to_string(data->vocab_size()) +
                             " > model.vocab_size " + std::to_string(cfg.model.vocab_size));
  AdamWConfig ac;
  ac.beta1 = tc.beta1;
  ac.beta2 = tc.beta2;
  ac.eps = tc.adam_eps;
  ac.weight_decay = tc.weight_decay;
  // Data parallel: each rank trains on its own batches (core/distributed.h).
  const WorldInfo world = world_from_env();
  if (world.distributed() && cfg.run.device != "cuda")
    throw std::runtime_error("data parallel training (" + world.source + ": " + std::to_string(world.size) +
                             " processes) needs run.device = cuda");
  if (tc.activation_checkpointing && cfg.run.device != "cuda")
    throw std::runtime_error("train.activation_checkpointing = true: implemented by the CUDA backend only "
                             "(the CPU model keeps every activation); set it to false for run.device = cpu");
  CudaOptions cuda_options;
  cuda_options.world = world;
  cuda_options.activation_checkpointing = tc.activation_checkpointing;
  if (cfg.run.device == "cuda") cuda_options.rendezvous_file = rendezvous_path(world, cfg.run.out_dir);
  std::unique_ptr<TrainBackend> backend = cfg.run.device == "cuda"
                                              ? make_cuda_backend(cfg.model, ac, B, T, uint64_t(tc.seed), cuda_options)
                                              : make_cpu_backend(cfg.model, ac, B, T, uint64_t(tc.seed));
  const bool leader = world.leader();  // the one rank that writes results, checkpoints and progress
  const int64_t ranks = world.size;
  const ScheduleConfig sched = schedule_config(tc);

  TrainOutcome out;
  out.results_path = run_results_path(cfg);
  out.checkpoint_path = run_checkpoint_path(cfg);
  out.val_loss = std::nan("");
  const std::string config_text = to_ini(cfg);

  // Micro-batches of one step over all ranks; the data cursor counts micro-batches consumed,
  // so that a run resumed with another ranks x grad_accum continues where the data stopped
  // (neither replaying nor skipping batches) and its token axis stays the tokens seen.
  const int64_t micro_per_step = tc.grad_accum * ranks;
  int64_t start = 0, cursor_at_start = 0;
  std::unique_ptr<RunResults> results;
  if (!cfg.run.resume.empty()) {
    Checkpoint ck = load_checkpoint(cfg.run.resume);
    backend->load_param_tensors(ck.params, "checkpoint " + cfg.run.resume);
    backend->load_optimizer_tensors(ck.optimizer, ck.step);
    start = ck.step;
    cursor_at_start = ck.data_cursor.empty() ? start * micro_per_step : ck.data_cursor[0];
    if (leader && cursor_at_start != start * micro_per_step)
      std::fprintf(stderr,
                   "hysim train: warning: %s was written with another global batch (%lld micro-batches in %lld "
                   "steps, %lld per step now): the data continues at micro-batch %lld, the schedule at step %lld\n",
                   cfg.run.resume.c_str(), (long long)cursor_at_start, (long long)start, (long long)micro_per_step,
                   (long long)cursor_at_start, (long long)start);
    if (leader && std::filesystem::exists(out.results_path)) {
      results = std::make_unique<RunResults>(RunResults::load(out.results_path));
      results->truncate_after(start);  // rows after the checkpoint are recomputed
    }
  }
  if (leader && !results) {
    RunAttributes attrs;
    attrs.config_text = config_text;
    attrs.backend = backend->name();
    attrs.extra["experiment"] = cfg.run.experiment;
    attrs.extra["run"] = cfg.run.name;
    attrs.extra["data"] = data->name();
    results = std::make_unique<RunResults>(out.results_path, attrs);
    const ParamCounts pc = count_params(cfg.model);
    results->set_model_counts({{"total", pc.total()}, {"embedding", pc.embedding}, {"attention", pc.attention},
                               {"gdn", pc.gdn}, {"mamba2", pc.mamba2}, {"mlp", pc.mlp}, {"norms", pc.norms},
                               {"lm_head", pc.lm_head}, {"non_embedding", pc.non_embedding()}});
  }

  // WSDS: the main run keeps the stable lr and saves a checkpoint where each decay branch
  // starts; branch k resumes from it and ends at its own length.
  const int64_t branch = tc.schedule == "wsds" ? tc.wsds_branch : -1;
  std::vector<WsdsBranch> branches;
  if (tc.schedule == "wsds") branches = wsds_branches(sched);
  const int64_t end_step = branch >= 0 ? branches[size_t(branch)].end : tc.steps;
  if (branch >= 0 && start != branches[size_t(branch)].start)
    throw std::runtime_error("train.wsds_branch = " + std::to_string(branch) + " starts at step " +
                             std::to_string(branches[size_t(branch)].start) + ": resume it from the main run's " +
                             "<run>.stable" + std::to_string(branches[size_t(branch)].start) +
                             ".ckpt.h5, not from a checkpoint of step " + std::to_string(start));

  // Collective: every rank gathers, the leader writes.
  auto save_ckpt = [&](int64_t step, const std::string& path) {
    Checkpoint ck;
    ck.step = step;
    ck.config_text = config_text;
    ck.params = backend->param_tensors();
    ck.optimizer = backend->optimizer_tensors();
    ck.rng_state = {uint64_t(tc.seed)};
    ck.data_cursor = {cursor_at_start + (step - start) * micro_per_step};
    ck.meta["backend"] = backend->name();
    if (ranks > 1) ck.meta["data_parallel"] = std::to_string(ranks);
    if (leader) save_checkpoint(path, ck);
  };

  Progress progress(opt.quiet || !leader);
  progress.message("hysim train: " + std::to_string(backend->n_params()) + " parameters on " +
                   backend->description() + ", " + data->name() + ", results " + out.results_path);
  // A step: grad_accum micro-batches on each rank; micro-batch k of step s is data index
  // cursor_at_start + ((s - start) * grad_accum + k) * ranks + rank, so R ranks see the
  // batches of one process with R times the accumulation.
  const double flops_per_micro = 3.0 * double(model_forward_flops(cfg.model, B, T));
  const int64_t tokens_per_step = B * T * micro_per_step;
  Batch batch;
  const auto t_start = std::chrono::steady_clock::now();
  for (int64_t step = start; step < end_step; ++step) {
    backend->zero_grad();
    double loss = 0;
    for (int64_t micro = 0; micro < tc.grad_accum; ++micro) {
      data->train_batch(cursor_at_start + ((step - start) * tc.grad_accum + micro) * ranks + world.rank, B, T, batch);
      const StepStats s = backend->forward_backward(batch, tc.z_loss, true);
      loss += s.loss / double(tc.grad_accum);
    }
    if (ranks > 1) {  // the mean over ranks: every rank sees the same loss (and stops together)
      backend->sum_over_ranks(&loss, 1);
      loss /= double(ranks);
    }
    if (tc.grad_accum > 1) backend->scale_grad(1.0 / double(tc.grad_accum));
    const double lr = lr_at(sched, step, branch);
    const double gnorm = std::isfinite(loss) ? backend->update(lr, tc.grad_clip) : std::nan("");
    if (!std::isfinite(loss) || !std::isfinite(gnorm)) {
      const std::string what = !std::isfinite(loss) ? "loss" : "gradient norm";
      const std::string msg = "non-finite " + what + " at step " + std::to_string(step) + " (loss " +
                              std::to_string(loss) + ", grad norm " + std::to_string(gnorm) +
                              "); stopped without updating. The last good checkpoint is " +
                              (std::filesystem::exists(out.checkpoint_path) ? out.checkpoint_path : "(none written yet)");
      if (leader) {
        results->add_event(step, msg);
        results->flush();
      }
      progress.finish();
      throw TrainingError(msg);
    }
    out.train_loss = loss;
    out.steps_done = step + 1;

    const bool last = step + 1 == end_step;
    const bool eval_now = (tc.eval_every > 0 && (step + 1) % tc.eval_every == 0) || last;
    const bool log_now = (tc.log_every > 0 && (step + 1) % tc.log_every == 0) || eval_now || step == start;
    const auto now = std::chrono::steady_clock::now();
    const double elapsed = std::chrono::duration<double>(now - t_start).count();
    const double tok_s = double((step + 1 - start) * tokens_per_step) / std::max(elapsed, 1e-9);
    if (eval_now) out.val_loss = backend->evaluate(*data, tc.eval_batches).loss;
    if (log_now && leader) {
      MetricsRow row;
      row.step = step + 1;
      const int64_t micro_done = cursor_at_start + (step + 1 - start) * micro_per_step;
      row.tokens = micro_done * B * T;
      row.flops = double(micro_done) * flops_per_micro;
      row.train_loss = loss;
      row.val_loss = eval_now ? out.val_loss : std::nan("");
      row.lr = lr;
      row.grad_norm = gnorm;
      row.tokens_per_s = tok_s;
      results->append_metrics(row);
    }
    const bool ckpt_now = (tc.checkpoint_every > 0 && (step + 1) % tc.checkpoint_every == 0) || last;
    // Results first: a checkpoint never gets ahead of the history that leads to it.
    if (leader && (eval_now || ckpt_now)) results->flush();
    if (ckpt_now) save_ckpt(step + 1, out.checkpoint_path);
    if (branch < 0)
      for (const WsdsBranch& wb : branches)
        if (wb.start == step + 1) save_ckpt(step + 1, stable_checkpoint_path(cfg, step + 1));

    const double eta = elapsed / double(step + 1 - start) * double(end_step - step - 1);
    char line[256];
    std::snprintf(line, sizeof line, "step %lld/%lld | loss %.4f%s | lr %.2e | %.0f tok/s | ETA %s",
                  (long long)(step + 1), (long long)end_step, loss,
                  eval_now ? (" | val " + std::to_string(out.val_loss).substr(0, 6)).c_str() : "", lr, tok_s,
                  format_duration(eta).c_str());
    progress.update(line, log_now);
    if (opt.on_step) opt.on_step(step + 1);
  }
  // Length generalisation: the trained model on validation data at every eval length.
  for (int64_t L : cfg.eval.lengths) {
    const ModelConfig eval_model = eval_model_config(cfg, L);
    const EvalStats e = L == T && eval_model == cfg.model
                            ? backend->evaluate(*data, tc.eval_batches)
                            : backend->evaluate_at_length(eval_model, *data, L, tc.eval_batches);
    if (leader) results->set_eval(cfg.data.source, L, e.accuracy, e.loss, out.steps_done);
    progress.message("eval " + cfg.data.source + " at length " + std::to_string(L) + ": accuracy " +
                     std::to_string(e.accuracy) + ", loss " + std::to_string(e.loss));
  }
  if (leader) results->flush();
  progress.finish();
  return out;
}

template std::vector<NamedTensor> store_tensors<float>(const ParamStore<float>&);
template std::vector<NamedTensor> store_tensors<double>(const ParamStore<double>&);
template void load_store_tensors<float>(ParamStore<float>&, const std::vector<NamedTensor>&, const std::string&);
template void load_store_tensors<double>(ParamStore<double>&, const std::vector<NamedTensor>&, const std::string&);

}  // namespace hysim
