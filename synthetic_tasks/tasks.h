// Synthetic tasks for the expressivity experiments: the common machinery (the split,
// the per-row random streams, the task_args parser). The tasks themselves are in
// state_tracking.h, recall.h and combined.h; registry.h builds them by name.
//
// Every task generates one instance per row, of exactly the T positions the caller asks
// for: the instance's size (number of items, haystack length, program length...) grows
// with T, so evaluating at 2x/4x/8x the training length gives longer instances of the
// same distribution. Targets outside the answer positions are 0 with loss_mask 0.
//
// Determinism and split. Row r of training batch `step` is drawn from the counter-based
// stream (seed, task kind, split 0, step, r, attempt); row r of validation batch `index`
// from (seed, task kind, split 1, index, r, attempt). An instance (its T tokens) belongs
// to the validation split iff
//   instance_hash(tokens) % kValShare == 0                    (independent of the seed),
// and to the training split otherwise: a row is redrawn (attempt 0, 1, ...) until its
// instance lies in the row's split. Training and validation instances are therefore
// disjoint by construction, even for tasks whose instance space is small (parity at
// T = 10 has only 1024 instances); the rejection leaves the distribution within a split
// unchanged apart from the removed instances. Where a split is (nearly) empty at some
// length, generation throws std::runtime_error after kMaxAttempts draws for one row.
#pragma once
#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/rng.h"
#include "synthetic_tasks/task.h"

namespace hysim {

// Sequential draws from one counter-based stream: the k-th call uses counter k, so a
// row's content is a pure function of its stream whatever other rows do.
class Draw {
 public:
  explicit Draw(const CounterRng& rng) : rng_(rng) {}
  // Uniform in [0, n), n >= 1 (modulo bias < n / 2^64: negligible for our n).
  int64_t below(int64_t n) { return int64_t(rng_.below(counter_++, uint64_t(n))); }
  // Uniform in (0, 1).
  double uniform() { return rng_.uniform(counter_++); }
  bool bernoulli(double p) { return uniform() < p; }

 private:
  CounterRng rng_;
  uint64_t counter_ = 0;
};

// k distinct values of [0, n) in uniformly random order (partial Fisher-Yates; O(n)).
std::vector<int64_t> sample_distinct(Draw& draw, int64_t n, int64_t k);
// k distinct values of [0, n) in increasing order, uniform among the k-subsets.
std::vector<int64_t> sample_sorted_distinct(Draw& draw, int64_t n, int64_t k);

class SyntheticTask : public DataSource {
 public:
  static constexpr uint64_t kValShare = 8;       // 1 instance in 8 is a validation instance
  static constexpr int64_t kMaxAttempts = 4096;  // draws per row before giving up

  // `kind` is the registry name ("mqar"); it keys the random streams, so two different
  // tasks with the same seed draw independent data.
  SyntheticTask(std::string kind, uint64_t seed);

  // kind, or "kind(args)" when the task was built with arguments (set_args_label).
  std::string name() const override;
  void set_args_label(std::string args) { args_label_ = std::move(args); }
  const std::string& kind() const { return kind_; }
  uint64_t seed() const { return seed_; }

  // Throw std::runtime_error when B < 1, T is too short for one instance of this task
  // (check_length), index < 0, or kMaxAttempts draws find no instance of the split.
  void train_batch(int64_t step, int64_t B, int64_t T, Batch& out) const override;
  void val_batch(int64_t index, int64_t B, int64_t T, Batch& out) const override;

  // The split rule above: mix64 folded over T and the tokens.
  static uint64_t instance_hash(const int32_t* tokens, int64_t T);
  static bool is_validation_instance(const int32_t* tokens, int64_t T) {
    return instance_hash(tokens, T) % kValShare == 0;
  }

 protected:
  // Throws std::runtime_error (naming the task, T and what does not fit) when no
  // instance fits T positions.
  virtual void check_length(int64_t T) const = 0;
  // One instance of T positions. targets and mask arrive zeroed; the task writes every
  // token and the targets/mask of its answer positions.
  virtual void generate(Draw& draw, int64_t T, int32_t* tokens, int32_t* targets, float* mask) const = 0;
  [[noreturn]] void length_error(int64_t T, const std::string& why) const;

 private:
  void make_batch(uint64_t split, int64_t i, int64_t B, int64_t T, Batch& out) const;
  std::string kind_, args_label_;
  uint64_t seed_, kind_hash_;
};

// task_args: "key=value key=value ..." (separated by whitespace; a value has no spaces;
// lists are comma-separated, "ops=set,add"). The getters return the value given or the
// default, and throw std::invalid_argument naming the task, key and value when it does
// not parse or lies outside the allowed range; finish() throws std::invalid_argument
// naming any key no getter asked for, with the task's known keys.
class TaskArgs {
 public:
  // Throws std::invalid_argument on an item that is not key=value or a repeated key.
  TaskArgs(std::string task, const std::string& text);

  bool has(const std::string& key) const { return values_.count(key) != 0; }
  int64_t get_int(const std::string& key, int64_t def, int64_t lo, int64_t hi);
  // A finite number in [lo, hi]; open bounds exclude the endpoint.
  double get_double(const std::string& key, double def, double lo, double hi, bool lo_open = false,
                    bool hi_open = false);
  // One of `choices`.
  std::string get_choice(const std::string& key, const std::string& def, const std::vector<std::string>& choices);
  // A non-empty comma list of distinct members of `choices`.
  std::vector<std::string> get_list(const std::string& key, const std::vector<std::string>& def,
                                    const std::vector<std::string>& choices);
  // Throws for a key not in `allowed`, listing them.
  void check_keys(const std::vector<std::string>& allowed) const;
  void finish() const;
  // The arguments in canonical form: "key=value" sorted by key, space-separated.
  std::string canonical() const;
  // A std::invalid_argument "task <task>: <what>".
  std::invalid_argument error(const std::string& what) const;

 private:
  std::string task_;
  std::map<std::string, std::string> values_;
  std::vector<std::string> known_;  // every key a getter asked for, in order
  std::string bad_value(const std::string& key, const std::string& value, const std::string& expected) const;
};

}  // namespace hysim
