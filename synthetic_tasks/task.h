// The data interface: every source of training sequences (text files, token shards,
// synthetic tasks) implements DataSource.
//
// A batch is a pure function of (the source's seed, step) for training and of (seed,
// index) for validation. The trainer's "data cursor" is therefore just the step: a run
// resumed from a checkpoint at step s asks for train_batch(s, ...) and sees exactly the
// batches an uninterrupted run would have seen, whatever happened before. For the same
// reason a source must not keep state that changes what a later call returns (the
// calls are const, and may be made from any thread, in any order).
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "core/rng.h"

namespace hysim {

// B sequences of T positions, row-major [B*T]: the model reads tokens[b*T + t] and is
// trained to predict targets[b*T + t]; loss_mask (0 or 1, float so it can weight the
// per-token loss directly) selects the positions that count in the loss and in the
// accuracy (synthetic tasks score only their answer positions; text scores all).
struct Batch {
  int64_t B = 0, T = 0;
  std::vector<int32_t> tokens, targets;
  std::vector<float> loss_mask;

  // Sizes the arrays for B x T (contents unspecified; the source fills every entry).
  void resize(int64_t b, int64_t t) {
    B = b;
    T = t;
    tokens.resize(b * t);
    targets.resize(b * t);
    loss_mask.resize(b * t);
  }
  int64_t size() const { return B * T; }
};

class DataSource {
 public:
  virtual ~DataSource() = default;

  // Short description for logs and result files, e.g. "text:data/tinyshakespeare.txt".
  virtual std::string name() const = 0;
  // Every token and target lies in [0, vocab_size()).
  virtual int64_t vocab_size() const = 0;

  // Training batch number `step` (the optimizer step; with gradient accumulation the
  // trainer passes step * grad_accum + micro). Fills `out` for B x T (resizing it).
  virtual void train_batch(int64_t step, int64_t B, int64_t T, Batch& out) const = 0;
  // Validation batch number `index` (0, 1, ...): the same batches in every run and at
  // every evaluation, disjoint from the training data where the source has a split.
  virtual void val_batch(int64_t index, int64_t B, int64_t T, Batch& out) const = 0;
  // How many distinct validation batches of this shape exist (indices at or beyond it
  // repeat earlier ones); -1 where they never repeat (generated tasks).
  virtual int64_t val_batch_count(int64_t B, int64_t T) const { return -1; }

  // Accuracy of guessing (over loss-masked positions) for tasks where it is defined
  // (e.g. 1/n_states for state tracking); NaN where it is not (natural text).
  virtual double chance_accuracy() const { return std::numeric_limits<double>::quiet_NaN(); }
};

// Start of training window `row` of batch `step`, uniform among n_starts possible starts:
// a pure function of (seed, step, row), shared by the sources that cut windows out of
// one long token sequence (text files, token shards).
inline int64_t window_start(uint64_t seed, int64_t step, int64_t row, int64_t n_starts) {
  return int64_t(CounterRng(seed, uint64_t(step)).below(uint64_t(row), uint64_t(n_starts)));
}

}  // namespace hysim
