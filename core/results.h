// A run's record (metrics history, evals, events, model size), written as one HDF5
// file results/<experiment>/<run>.h5 in the schema of results/README.md.
//
// Everything is kept in memory; flush() rewrites the whole file through a temporary
// file and a rename, so a reader never sees half a file and a killed run keeps the
// history of its last flush. Metrics rows are small (8 numbers), so even 10^6 steps
// are a few tens of MB.
#pragma once
#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <vector>

namespace hysim {

// Root attributes of a results file. version, git_hash, host and created default to
// this binary, this machine and now (ISO 8601 UTC).
struct RunAttributes {
  std::string config_text;  // the full resolved config
  std::string backend;      // "cpu", "cuda", ...
  std::string version;
  std::string git_hash;
  std::string host;
  std::string created;
  std::map<std::string, std::string> extra;  // further string attributes (experiment, run, ...)
};

// One row of metrics/ per logged step. val_loss is NaN at steps without an eval.
struct MetricsRow {
  int64_t step = 0;
  int64_t tokens = 0;  // tokens seen so far
  double flops = 0;    // training FLOPs so far (double: exceeds int64 at scale)
  double train_loss = 0;
  double val_loss = std::numeric_limits<double>::quiet_NaN();
  double lr = 0;
  double grad_norm = 0;
  double tokens_per_s = 0;
};

struct EvalResult {
  double accuracy = 0;
  double loss = std::numeric_limits<double>::quiet_NaN();
  int64_t step = -1;  // training step of the eval; -1 when not given
};

struct RunEvent {
  int64_t step = 0;
  std::string message;  // e.g. "NaN loss; skipped the update"
};

// "results_dir/experiment/run.h5"
std::string results_path(const std::string& results_dir, const std::string& experiment, const std::string& run);

// ISO 8601 UTC time of now, e.g. "2026-01-31T12:34:56Z".
std::string iso_time_now();

class RunResults {
 public:
  // Creates the parent directories; writes nothing until flush().
  RunResults(std::string path, RunAttributes attributes);
  // Read a results file back (e.g. to continue a resumed run's record).
  static RunResults load(const std::string& path);

  void append_metrics(const MetricsRow& row);
  // eval/<task>/<length>/{accuracy,loss}; a second call for the same task and length replaces it.
  void set_eval(const std::string& task, int64_t length, double accuracy,
                double loss = std::numeric_limits<double>::quiet_NaN(), int64_t step = -1);
  void add_event(int64_t step, const std::string& message);
  // model/ attributes: parameter counts by kind ("embedding", "attention", "total", ...).
  void set_model_counts(const std::map<std::string, int64_t>& counts);
  // Drop metrics rows and events after `step` (a run resumed from a checkpoint at `step`).
  void truncate_after(int64_t step);
  // Rewrite the file atomically with everything recorded so far.
  void flush();

  const std::string& path() const { return path_; }
  const RunAttributes& attributes() const { return attrs_; }
  const std::vector<MetricsRow>& metrics() const { return metrics_; }
  const std::map<std::string, std::map<int64_t, EvalResult>>& evals() const { return evals_; }
  const std::vector<RunEvent>& events() const { return events_; }
  const std::map<std::string, int64_t>& model_counts() const { return model_counts_; }

 private:
  RunResults() = default;
  std::string path_;
  RunAttributes attrs_;
  std::vector<MetricsRow> metrics_;
  std::map<std::string, std::map<int64_t, EvalResult>> evals_;
  std::vector<RunEvent> events_;
  std::map<std::string, int64_t> model_counts_;
};

}  // namespace hysim
