// The training loop shared by every backend: data -> forward/backward -> clip -> AdamW
// -> metrics, periodic evaluation, atomic checkpoints and results, resume.
//
// Determinism: parameter init is a function of (seed, parameter name), batches of (seed,
// step), so a run resumed from a checkpoint (parameters, AdamW moments and step count)
// continues with exactly the numbers of an uninterrupted one.
#pragma once
#include <functional>
#include <memory>
#include <string>

#include "core/config.h"
#include "synthetic_tasks/task.h"

namespace hysim {

// Builds the configured data source ("text", "tokens"; synthetic tasks by name).
std::unique_ptr<DataSource> make_data_source(const Config& cfg);

// Where a run writes: <out_dir>/<experiment>/<name>.h5 and <name>.ckpt.h5.
std::string run_results_path(const Config& cfg);
std::string run_checkpoint_path(const Config& cfg);
// WSDS main run (train.schedule = wsds, train.wsds_branch = -1): the checkpoint saved at
// `step`, where a decay branch starts. Branch k is then trained with
//   --train.wsds_branch=k --run.resume=<stable checkpoint of its start> --run.name=<name>_b<k>
// and ends at its own length (schedule.h: wsds_branches), a finished model per budget.
std::string stable_checkpoint_path(const Config& cfg, int64_t step);

// Loss (nats/token over loss-masked positions) and accuracy (argmax == target there) of a
// model on validation batches 0 .. n_batches-1 (fewer when the source has fewer).
struct EvalStats {
  double loss = 0, accuracy = 0;
};
template <class T> class Model;
EvalStats evaluate(Model<float>& model, const DataSource& data, int64_t B, int64_t Tn, int64_t n_batches);
// The same for parameter values held in `params` at another sequence length (a model
// sized for (B, Tn) is built for the occasion): length generalisation.
template <class T> struct ParamStore;
EvalStats evaluate_at_length(const ModelConfig& mc, const ParamStore<float>& params, const DataSource& data,
                             int64_t B, int64_t Tn, int64_t n_batches);

struct TrainOptions {
  bool quiet = false;                     // no progress output (tests)
  std::function<void(int64_t)> on_step;   // called after each completed optimizer step (tests)
};

struct TrainOutcome {
  int64_t steps_done = 0;     // optimizer steps completed (counting resumed ones)
  double train_loss = 0;      // last step's training loss
  double val_loss = 0;        // last evaluation's loss (NaN if none)
  std::string results_path, checkpoint_path;
};

// Trains as configured (resuming from cfg.run.resume when set). Throws TrainingError on
// a non-finite loss or gradient, after recording the event in the results file; the last
// good checkpoint is left in place.
TrainOutcome train(const Config& cfg, const TrainOptions& opt = {});

struct TrainingError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace hysim

#include "core/checkpoint.h"
#include "core/params.h"

namespace hysim {

// Parameter values of a store as named fp32 tensors (checkpoint order = store order).
template <class T> std::vector<NamedTensor> store_tensors(const ParamStore<T>& store);
// Copies named tensors into a store. Throws std::runtime_error naming the first parameter
// that is missing from `tensors` or whose shape differs (`what` names the source file).
template <class T>
void load_store_tensors(ParamStore<T>& store, const std::vector<NamedTensor>& tensors, const std::string& what);

}  // namespace hysim
