// Byte-level language modelling on any text file (vocab 256: a token is one byte).
//
// Split: the first n_train = n - floor(val_fraction * n) bytes of the file are the
// training split, the remaining tail is the validation split (so the validation text is
// never seen in training, and the split does not depend on the seed).
//
// Training: row r of batch `step` is the window starting at
//   s = window_start(seed, step, r, n_train - T)        (task.h; s in [0, n_train - T - 1])
// tokens = bytes[s, s+T), targets = bytes[s+1, s+T] (the next byte), all in the
// training split; loss_mask = 1 everywhere.
// Validation: the split is cut into W = (n_val - 1) / T consecutive windows (window w
// starts at n_train + w*T; targets overlap the next window's first token only); row r
// of batch `index` is window (index*B + r) mod W. Same windows in every run.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "synthetic_tasks/task.h"

namespace hysim {

class TextData : public DataSource {
 public:
  // Reads the whole file. Throws std::runtime_error naming the file when it cannot be
  // read, when val_fraction is outside [0, 1), or when either split is shorter than 2
  // bytes ("empty validation split": one window of T = 1 needs 2 bytes).
  TextData(const std::string& path, double val_fraction = 0.1, uint64_t seed = 0);

  std::string name() const override { return "text:" + path_; }
  int64_t vocab_size() const override { return 256; }
  // Both throw std::runtime_error if the split is shorter than T + 1 bytes.
  void train_batch(int64_t step, int64_t B, int64_t T, Batch& out) const override;
  void val_batch(int64_t index, int64_t B, int64_t T, Batch& out) const override;
  // max(1, W / B): the batches before the windows repeat.
  int64_t val_batch_count(int64_t B, int64_t T) const override;

  const std::string& path() const { return path_; }
  const std::vector<uint8_t>& bytes() const { return bytes_; }
  int64_t train_size() const { return n_train_; }  // bytes [0, n_train)
  int64_t val_size() const { return int64_t(bytes_.size()) - n_train_; }  // bytes [n_train, n)

 private:
  void check_fits(const char* split, int64_t n, int64_t B, int64_t T) const;
  std::string path_;
  uint64_t seed_;
  std::vector<uint8_t> bytes_;
  int64_t n_train_ = 0;
};

}  // namespace hysim
