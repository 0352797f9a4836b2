#include "synthetic_tasks/text_data.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <stdexcept>

namespace hysim {

TextData::TextData(const std::string& path, double val_fraction, uint64_t seed) : path_(path), seed_(seed) {
  std::ifstream f(path, std::ios::binary);
  if (!f)
    throw std::runtime_error("text data: cannot open '" + path + "': " + std::strerror(errno));
  bytes_.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  if (f.bad()) throw std::runtime_error("text data: error reading '" + path + "'");
  if (!(val_fraction >= 0 && val_fraction < 1))
    throw std::runtime_error("text data '" + path + "': val_fraction " + std::to_string(val_fraction) +
                             " must be in [0, 1)");
  const int64_t n = int64_t(bytes_.size());
  const int64_t n_val = int64_t(std::floor(val_fraction * double(n)));
  n_train_ = n - n_val;
  if (n_val < 2)
    throw std::runtime_error("text data '" + path + "': empty validation split (val_fraction " +
                             std::to_string(val_fraction) + " of " + std::to_string(n) + " bytes = " +
                             std::to_string(n_val) + " bytes; at least 2 needed)");
  if (n_train_ < 2)
    throw std::runtime_error("text data '" + path + "': empty training split (" + std::to_string(n_train_) +
                             " of " + std::to_string(n) + " bytes)");
}

void TextData::check_fits(const char* split, int64_t n, int64_t B, int64_t T) const {
  if (B < 1) throw std::runtime_error("text data '" + path_ + "': batch size " + std::to_string(B) + " < 1");
  if (T < 1) throw std::runtime_error("text data '" + path_ + "': sequence length " + std::to_string(T) + " < 1");
  if (n < T + 1)
    throw std::runtime_error("text data '" + path_ + "': the " + split + " split has " + std::to_string(n) +
                             " bytes (file " + std::to_string(bytes_.size()) + " bytes), shorter than T+1 = " +
                             std::to_string(T + 1) + " bytes needed for one window of T tokens and its targets");
}

void TextData::train_batch(int64_t step, int64_t B, int64_t T, Batch& out) const {
  check_fits("training", n_train_, B, T);
  out.resize(B, T);
  const int64_t n_starts = n_train_ - T;
  for (int64_t r = 0; r < B; ++r) {
    const uint8_t* w = bytes_.data() + window_start(seed_, step, r, n_starts);
    for (int64_t t = 0; t < T; ++t) {
      out.tokens[r * T + t] = w[t];
      out.targets[r * T + t] = w[t + 1];
      out.loss_mask[r * T + t] = 1.0f;
    }
  }
}

void TextData::val_batch(int64_t index, int64_t B, int64_t T, Batch& out) const {
  check_fits("validation", val_size(), B, T);
  if (index < 0) throw std::runtime_error("text data '" + path_ + "': negative validation batch index");
  out.resize(B, T);
  const int64_t n_windows = (val_size() - 1) / T;
  for (int64_t r = 0; r < B; ++r) {
    const int64_t w_idx = (index * B + r) % n_windows;
    const uint8_t* w = bytes_.data() + n_train_ + w_idx * T;
    for (int64_t t = 0; t < T; ++t) {
      out.tokens[r * T + t] = w[t];
      out.targets[r * T + t] = w[t + 1];
      out.loss_mask[r * T + t] = 1.0f;
    }
  }
}

int64_t TextData::val_batch_count(int64_t B, int64_t T) const {
  check_fits("validation", val_size(), B, T);
  return std::max<int64_t>(1, (val_size() - 1) / T / B);
}

}  // namespace hysim
