#include "synthetic_tasks/state_tracking.h"

#include <algorithm>
#include <functional>
#include <map>
#include <stdexcept>

namespace hysim {

// ---- modular sums (parity, modadd) ---------------------------------------------

ModularSumTask::ModularSumTask(std::string kind, int64_t m, uint64_t seed) : SyntheticTask(std::move(kind), seed), m_(m) {
  if (m < 2) throw std::invalid_argument("task " + this->kind() + ": modulus m = " + std::to_string(m) + " must be >= 2");
}

void ModularSumTask::generate(Draw& draw, int64_t T, int32_t* tokens, int32_t* targets, float* mask) const {
  int64_t sum = 0;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t x = draw.below(m_);
    sum = (sum + x) % m_;
    tokens[t] = int32_t(x);
    targets[t] = int32_t(sum);
    mask[t] = 1.0f;
  }
}

// ---- permutation groups ---------------------------------------------------------

namespace {

bool is_even(const std::array<uint8_t, 8>& p, int n) {
  int inversions = 0;
  for (int i = 0; i < n; ++i)
    for (int j = i + 1; j < n; ++j) inversions += p[i] > p[j];
  return inversions % 2 == 0;
}

PermutationGroup make_group(int n, bool even_only) {
  if (n < 1 || n > 8) throw std::invalid_argument("permutation group: n = " + std::to_string(n) + " not in [1, 8]");
  PermutationGroup g;
  g.n = n;
  // Depth-first, trying the unused values in increasing order at each position: the
  // one-line notations come out in lexicographic order.
  std::array<uint8_t, 8> p{};
  std::array<bool, 8> used{};
  std::function<void(int)> extend = [&](int i) {
    if (i == n) {
      if (!even_only || is_even(p, n)) g.elements.push_back(p);
      return;
    }
    for (int v = 0; v < n; ++v)
      if (!used[v]) {
        used[v] = true;
        p[i] = uint8_t(v);
        extend(i + 1);
        used[v] = false;
      }
  };
  extend(0);
  std::map<std::array<uint8_t, 8>, int32_t> index;
  for (size_t i = 0; i < g.elements.size(); ++i) index[g.elements[i]] = int32_t(i);
  const size_t order = g.elements.size();
  g.product.resize(order * order);
  for (size_t a = 0; a < order; ++a)
    for (size_t b = 0; b < order; ++b) {
      std::array<uint8_t, 8> ab{};
      for (int i = 0; i < n; ++i) ab[i] = g.elements[a][g.elements[b][i]];
      g.product[a * order + b] = index.at(ab);
    }
  return g;
}

}  // namespace

PermutationGroup PermutationGroup::symmetric(int n) { return make_group(n, false); }
PermutationGroup PermutationGroup::alternating(int n) { return make_group(n, true); }

PermutationTask::PermutationTask(std::string kind, PermutationGroup group, uint64_t seed)
    : SyntheticTask(std::move(kind), seed), group_(std::move(group)) {}

void PermutationTask::generate(Draw& draw, int64_t T, int32_t* tokens, int32_t* targets, float* mask) const {
  int32_t state = 0;  // the identity
  for (int64_t t = 0; t < T; ++t) {
    const int32_t g = int32_t(draw.below(group_.order()));
    state = group_.compose(g, state);
    tokens[t] = g;
    targets[t] = state;
    mask[t] = 1.0f;
  }
}

// ---- flip-flop ------------------------------------------------------------------

FlipFlopTask::FlipFlopTask(const FlipFlopConfig& cfg, uint64_t seed) : SyntheticTask("flipflop", seed), cfg_(cfg) {
  if (!(cfg.p_write > 0 && cfg.p_write <= 1))
    throw std::invalid_argument("task flipflop: p_write = " + std::to_string(cfg.p_write) + " must be in (0, 1]");
  if (!(cfg.p_read > 0 && cfg.p_read <= 1))
    throw std::invalid_argument("task flipflop: p_read = " + std::to_string(cfg.p_read) + " must be in (0, 1]");
  if (cfg.p_write + cfg.p_read > 1)
    throw std::invalid_argument("task flipflop: p_write + p_read = " + std::to_string(cfg.p_write + cfg.p_read) +
                                " must be <= 1");
}

void FlipFlopTask::check_length(int64_t T) const {
  if (T < 3) length_error(T, "a flip-flop string needs a write, its bit and a read (T >= 3)");
}

void FlipFlopTask::generate(Draw& draw, int64_t T, int32_t* tokens, int32_t* targets, float* mask) const {
  const int64_t n_instr = (T + 1) / 2;  // at positions 0, 2, 4, ... < T
  std::vector<int32_t> instr(n_instr);
  instr[0] = kWrite;
  bool any_read = false;
  for (int64_t j = 1; j < n_instr; ++j) {
    const double u = draw.uniform();
    instr[j] = u < cfg_.p_write ? kWrite : u < cfg_.p_write + cfg_.p_read ? kRead : kIgnore;
    any_read |= instr[j] == kRead;
  }
  if (!any_read) instr[n_instr - 1] = kRead;  // every row scores at least one read
  int32_t last_written = 0;
  for (int64_t j = 0; j < n_instr; ++j) {
    const int64_t pos = 2 * j;
    int32_t bit = instr[j] == kRead ? last_written : int32_t(draw.below(2));
    if (instr[j] == kWrite) last_written = bit;
    tokens[pos] = instr[j];
    if (pos + 1 < T) tokens[pos + 1] = bit;
    if (instr[j] == kRead) {
      targets[pos] = last_written;
      mask[pos] = 1.0f;
    }
  }
}

}  // namespace hysim
