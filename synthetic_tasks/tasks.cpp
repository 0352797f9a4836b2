#include "synthetic_tasks/tasks.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>
#include <stdexcept>

namespace hysim {

std::vector<int64_t> sample_distinct(Draw& draw, int64_t n, int64_t k) {
  if (k < 0 || k > n)
    throw std::logic_error("sample_distinct: k = " + std::to_string(k) + " not in [0, " + std::to_string(n) + "]");
  std::vector<int64_t> pool(n);
  std::iota(pool.begin(), pool.end(), int64_t(0));
  for (int64_t i = 0; i < k; ++i) std::swap(pool[i], pool[i + draw.below(n - i)]);
  pool.resize(k);
  return pool;
}

std::vector<int64_t> sample_sorted_distinct(Draw& draw, int64_t n, int64_t k) {
  std::vector<int64_t> s = sample_distinct(draw, n, k);
  std::sort(s.begin(), s.end());
  return s;
}

// ---- SyntheticTask ------------------------------------------------------------

SyntheticTask::SyntheticTask(std::string kind, uint64_t seed)
    : kind_(std::move(kind)), seed_(seed), kind_hash_(hash_name(kind_)) {}

std::string SyntheticTask::name() const { return args_label_.empty() ? kind_ : kind_ + "(" + args_label_ + ")"; }

uint64_t SyntheticTask::instance_hash(const int32_t* tokens, int64_t T) {
  uint64_t h = mix64(uint64_t(T));
  for (int64_t t = 0; t < T; ++t) h = mix64(h ^ uint64_t(uint32_t(tokens[t])));
  return h;
}

void SyntheticTask::length_error(int64_t T, const std::string& why) const {
  throw std::runtime_error("task " + name() + ": sequence length T = " + std::to_string(T) + " does not fit: " + why);
}

void SyntheticTask::train_batch(int64_t step, int64_t B, int64_t T, Batch& out) const { make_batch(0, step, B, T, out); }

void SyntheticTask::val_batch(int64_t index, int64_t B, int64_t T, Batch& out) const {
  if (index < 0) throw std::runtime_error("task " + name() + ": negative validation batch index");
  make_batch(1, index, B, T, out);
}

void SyntheticTask::make_batch(uint64_t split, int64_t i, int64_t B, int64_t T, Batch& out) const {
  if (B < 1) throw std::runtime_error("task " + name() + ": batch size " + std::to_string(B) + " < 1");
  if (T < 1) throw std::runtime_error("task " + name() + ": sequence length " + std::to_string(T) + " < 1");
  check_length(T);
  out.resize(B, T);
  const bool want_val = split == 1;
  for (int64_t r = 0; r < B; ++r) {
    int32_t* tokens = out.tokens.data() + r * T;
    int32_t* targets = out.targets.data() + r * T;
    float* mask = out.loss_mask.data() + r * T;
    int64_t attempt = 0;
    for (; attempt < kMaxAttempts; ++attempt) {
      uint64_t stream = kind_hash_;
      for (uint64_t x : {split, uint64_t(i), uint64_t(r), uint64_t(attempt)}) stream = mix64(stream ^ x);
      Draw draw(CounterRng(seed_, stream));
      std::fill(targets, targets + T, 0);
      std::fill(mask, mask + T, 0.0f);
      generate(draw, T, tokens, targets, mask);
      if (is_validation_instance(tokens, T) == want_val) break;
    }
    if (attempt == kMaxAttempts)
      throw std::runtime_error("task " + name() + ": no " + (want_val ? "validation" : "training") +
                               " instance found in " + std::to_string(kMaxAttempts) + " draws at T = " +
                               std::to_string(T) + " (too few distinct instances of this length for a disjoint split;"
                               " use a longer T)");
  }
}

// ---- TaskArgs -------------------------------------------------------------------

TaskArgs::TaskArgs(std::string task, const std::string& text) : task_(std::move(task)) {
  std::istringstream in(text);
  std::string item;
  while (in >> item) {
    const size_t eq = item.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == item.size())
      throw error("argument '" + item + "' is not of the form key=value");
    const std::string key = item.substr(0, eq), value = item.substr(eq + 1);
    if (!values_.emplace(key, value).second) throw error("key '" + key + "' is given more than once");
  }
}

std::invalid_argument TaskArgs::error(const std::string& what) const {
  return std::invalid_argument("task " + task_ + ": " + what);
}

std::string TaskArgs::bad_value(const std::string& key, const std::string& value, const std::string& expected) const {
  return "bad value '" + value + "' for key '" + key + "' (expected " + expected + ")";
}

int64_t TaskArgs::get_int(const std::string& key, int64_t def, int64_t lo, int64_t hi) {
  known_.push_back(key);
  auto it = values_.find(key);
  if (it == values_.end()) return def;
  const std::string expected = "an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
  int64_t v = 0;
  size_t used = 0;
  try {
    v = std::stoll(it->second, &used);
  } catch (const std::exception&) {
    throw error(bad_value(key, it->second, expected));
  }
  if (used != it->second.size() || v < lo || v > hi) throw error(bad_value(key, it->second, expected));
  return v;
}

double TaskArgs::get_double(const std::string& key, double def, double lo, double hi, bool lo_open, bool hi_open) {
  known_.push_back(key);
  auto it = values_.find(key);
  if (it == values_.end()) return def;
  std::ostringstream range;
  range << "a number in " << (lo_open ? "(" : "[") << lo << ", " << hi << (hi_open ? ")" : "]");
  double v = 0;
  size_t used = 0;
  try {
    v = std::stod(it->second, &used);
  } catch (const std::exception&) {
    throw error(bad_value(key, it->second, range.str()));
  }
  const bool in_range = std::isfinite(v) && (lo_open ? v > lo : v >= lo) && (hi_open ? v < hi : v <= hi);
  if (used != it->second.size() || !in_range) throw error(bad_value(key, it->second, range.str()));
  return v;
}

namespace {
std::string join(const std::vector<std::string>& xs, const char* sep) {
  std::string s;
  for (const std::string& x : xs) s += (s.empty() ? "" : sep) + x;
  return s;
}
}  // namespace

std::string TaskArgs::get_choice(const std::string& key, const std::string& def,
                                 const std::vector<std::string>& choices) {
  known_.push_back(key);
  auto it = values_.find(key);
  if (it == values_.end()) return def;
  if (std::find(choices.begin(), choices.end(), it->second) == choices.end())
    throw error(bad_value(key, it->second, "one of " + join(choices, ", ")));
  return it->second;
}

std::vector<std::string> TaskArgs::get_list(const std::string& key, const std::vector<std::string>& def,
                                            const std::vector<std::string>& choices) {
  known_.push_back(key);
  auto it = values_.find(key);
  if (it == values_.end()) return def;
  const std::string expected = "a comma list of distinct items from " + join(choices, ", ");
  std::vector<std::string> items;
  std::istringstream in(it->second);
  std::string item;
  while (std::getline(in, item, ',')) {
    if (std::find(choices.begin(), choices.end(), item) == choices.end() ||
        std::find(items.begin(), items.end(), item) != items.end())
      throw error(bad_value(key, it->second, expected));
    items.push_back(item);
  }
  if (items.empty() || it->second.back() == ',') throw error(bad_value(key, it->second, expected));
  return items;
}

void TaskArgs::check_keys(const std::vector<std::string>& allowed) const {
  for (const auto& [key, value] : values_)
    if (std::find(allowed.begin(), allowed.end(), key) == allowed.end())
      throw error("unknown key '" + key + "' (known keys: " + (allowed.empty() ? "none" : join(allowed, ", ")) + ")");
}

void TaskArgs::finish() const {
  for (const auto& [key, value] : values_)
    if (std::find(known_.begin(), known_.end(), key) == known_.end())
      throw error("unknown key '" + key + "' (known keys: " + (known_.empty() ? "none" : join(known_, ", ")) + ")");
}

std::string TaskArgs::canonical() const {
  std::string s;
  for (const auto& [key, value] : values_) s += (s.empty() ? "" : " ") + key + "=" + value;
  return s;
}

}  // namespace hysim
