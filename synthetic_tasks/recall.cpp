#include "synthetic_tasks/recall.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

namespace hysim {

namespace {

void require(bool ok, const std::string& task, const std::string& what) {
  if (!ok) throw std::invalid_argument("task " + task + ": " + what);
}
std::string str(int64_t x) { return std::to_string(x); }
std::string str(double x) { return std::to_string(x); }

}  // namespace

// ---- mqar -------------------------------------------------------------------------

MqarTask::MqarTask(const MqarConfig& cfg, uint64_t seed) : SyntheticTask("mqar", seed), cfg_(cfg) {
  require(cfg.n_pairs >= 0, "mqar", "n_pairs = " + str(cfg.n_pairs) + " must be >= 0 (0: from fill)");
  require(cfg.fill > 0 && cfg.fill < 1, "mqar", "fill = " + str(cfg.fill) + " must be in (0, 1)");
  require(cfg.key_vocab >= 1, "mqar", "key_vocab = " + str(cfg.key_vocab) + " must be >= 1");
  require(cfg.value_vocab >= 1, "mqar", "value_vocab = " + str(cfg.value_vocab) + " must be >= 1");
  require(cfg.n_pairs <= cfg.key_vocab, "mqar",
          "n_pairs = " + str(cfg.n_pairs) + " distinct keys need key_vocab >= n_pairs (key_vocab = " +
              str(cfg.key_vocab) + ")");
  require(cfg.alpha > 0 && std::isfinite(cfg.alpha), "mqar", "alpha = " + str(cfg.alpha) + " must be > 0");
}

int64_t MqarTask::n_pairs(int64_t T) const {
  return cfg_.n_pairs > 0 ? cfg_.n_pairs : std::max<int64_t>(1, int64_t(std::floor(cfg_.fill * double(T) / 2)));
}

void MqarTask::check_length(int64_t T) const {
  const int64_t N = n_pairs(T);
  if (2 * N + 1 > T) length_error(T, str(N) + " key-value pairs and one query need T >= " + str(2 * N + 1));
  if (N > cfg_.key_vocab)
    length_error(T, str(N) + " pairs need as many distinct keys, but key_vocab = " + str(cfg_.key_vocab) +
                        " (raise key_vocab, lower fill or fix n_pairs)");
}

void MqarTask::generate(Draw& draw, int64_t T, int32_t* tokens, int32_t* targets, float* mask) const {
  const int64_t N = n_pairs(T), K = cfg_.key_vocab;
  const std::vector<int64_t> keys = sample_distinct(draw, K, N);
  std::vector<int32_t> values(N);
  for (int64_t i = 0; i < N; ++i) {
    values[i] = int32_t(K + draw.below(cfg_.value_vocab));
    tokens[2 * i] = int32_t(keys[i]);
    tokens[2 * i + 1] = values[i];
  }
  std::vector<double> cdf;  // powerlaw: cumulative weights of pairs 0..N-1
  if (cfg_.query == QueryDistribution::powerlaw) {
    cdf.resize(N);
    double total = 0;
    for (int64_t i = 0; i < N; ++i) cdf[i] = total += std::pow(double(N - i), -cfg_.alpha);
  }
  for (int64_t pos = 2 * N; pos < T; pos += 2) {
    int64_t i;
    if (cfg_.query == QueryDistribution::uniform) {
      i = draw.below(N);
    } else {
      const double u = draw.uniform() * cdf.back();
      i = std::min<int64_t>(N - 1, std::upper_bound(cdf.begin(), cdf.end(), u) - cdf.begin());
    }
    tokens[pos] = int32_t(keys[i]);
    targets[pos] = values[i];
    mask[pos] = 1.0f;
    if (pos + 1 < T) tokens[pos + 1] = values[i];
  }
}

// ---- selective copying ----------------------------------------------------------------

SelectiveCopyTask::SelectiveCopyTask(const SelectiveCopyConfig& cfg, uint64_t seed)
    : SyntheticTask("selective_copy", seed), cfg_(cfg) {
  require(cfg.n_tokens >= 0, "selective_copy", "n_tokens = " + str(cfg.n_tokens) + " must be >= 0 (0: from fill)");
  require(cfg.fill > 0 && cfg.fill < 0.5, "selective_copy", "fill = " + str(cfg.fill) + " must be in (0, 0.5)");
  require(cfg.data_vocab >= 1, "selective_copy", "data_vocab = " + str(cfg.data_vocab) + " must be >= 1");
}

int64_t SelectiveCopyTask::n_tokens(int64_t T) const {
  return cfg_.n_tokens > 0 ? cfg_.n_tokens : std::max<int64_t>(1, int64_t(std::floor(cfg_.fill * double(T))));
}

void SelectiveCopyTask::check_length(int64_t T) const {
  const int64_t n = n_tokens(T);
  if (T < 2 * n + 1)
    length_error(T, str(n) + " data tokens need a region of >= " + str(n) + " positions, the separator and " +
                        str(n) + " copies: T >= " + str(2 * n + 1));
}

void SelectiveCopyTask::generate(Draw& draw, int64_t T, int32_t* tokens, int32_t* targets, float* mask) const {
  const int64_t n = n_tokens(T), L = T - 1 - n;
  const std::vector<int64_t> where = sample_sorted_distinct(draw, L, n);
  std::vector<int32_t> data(n);
  std::fill(tokens, tokens + L, blank());
  for (int64_t j = 0; j < n; ++j) {
    data[j] = int32_t(draw.below(cfg_.data_vocab));
    tokens[where[j]] = data[j];
  }
  tokens[L] = separator();
  targets[L] = data[0];
  mask[L] = 1.0f;
  for (int64_t j = 0; j < n; ++j) {
    tokens[L + 1 + j] = data[j];
    if (j + 1 < n) {
      targets[L + 1 + j] = data[j + 1];
      mask[L + 1 + j] = 1.0f;
    }
  }
}

// ---- needle in a haystack ---------------------------------------------------------------

NiahTask::NiahTask(const NiahConfig& cfg, uint64_t seed) : SyntheticTask("niah", seed), cfg_(cfg) {
  require(cfg.n_keys >= 1, "niah", "n_keys = " + str(cfg.n_keys) + " must be >= 1");
  require(cfg.values_per_key >= 1, "niah", "n_values = " + str(cfg.values_per_key) + " must be >= 1");
  require(cfg.hay_vocab >= 1, "niah", "hay_vocab = " + str(cfg.hay_vocab) + " must be >= 1");
  require(cfg.key_vocab >= cfg.n_keys, "niah",
          "key_vocab = " + str(cfg.key_vocab) + " must be >= n_keys = " + str(cfg.n_keys) + " (distinct keys)");
  require(cfg.value_vocab >= cfg.values_per_key, "niah",
          "value_vocab = " + str(cfg.value_vocab) + " must be >= n_values = " + str(cfg.values_per_key) +
              " (distinct values of one key)");
}

void NiahTask::check_length(int64_t T) const {
  const int64_t needles = cfg_.n_keys * cfg_.values_per_key, question = 2 + cfg_.values_per_key;
  if (T < 3 * needles + question)
    length_error(T, str(needles) + " needles of 3 tokens and a question of " + str(question) + " tokens need T >= " +
                        str(3 * needles + question));
}

void NiahTask::generate(Draw& draw, int64_t T, int32_t* tokens, int32_t* targets, float* mask) const {
  const int64_t m = cfg_.values_per_key, needles = cfg_.n_keys * m, H = T - 2 - m;
  const int32_t key0 = int32_t(cfg_.hay_vocab), value0 = int32_t(cfg_.hay_vocab + cfg_.key_vocab);
  for (int64_t t = 0; t < H; ++t) tokens[t] = int32_t(draw.below(cfg_.hay_vocab));
  const std::vector<int64_t> keys = sample_distinct(draw, cfg_.key_vocab, cfg_.n_keys);
  // values[k*m + j]: the j-th value of key k; a key's values are distinct.
  std::vector<int64_t> values;
  for (int64_t k = 0; k < cfg_.n_keys; ++k) {
    const std::vector<int64_t> v = sample_distinct(draw, cfg_.value_vocab, m);
    values.insert(values.end(), v.begin(), v.end());
  }
  // Which needle goes where: a random order of the needles, placed left to right, so
  // the keys interleave at random and each key's values appear in index order.
  std::vector<int64_t> order;  // needle ids k*m + j, key k's needles in order j = 0, 1, ...
  {
    std::vector<int64_t> key_slots;  // a random sequence with m copies of each key
    for (int64_t k = 0; k < cfg_.n_keys; ++k) key_slots.insert(key_slots.end(), size_t(m), k);
    const std::vector<int64_t> perm = sample_distinct(draw, needles, needles);
    std::vector<int64_t> next(cfg_.n_keys, 0);
    for (int64_t p : perm) {
      const int64_t k = key_slots[p];
      order.push_back(k * m + next[k]++);
    }
  }
  // Non-overlapping starts: s_0 < ... < s_{c-1} from [0, H - 2c), needle i at s_i + 2i.
  const std::vector<int64_t> starts = sample_sorted_distinct(draw, H - 2 * needles, needles);
  for (int64_t i = 0; i < needles; ++i) {
    const int64_t pos = starts[i] + 2 * i, id = order[i];
    tokens[pos] = needle_marker();
    tokens[pos + 1] = key0 + int32_t(keys[id / m]);
    tokens[pos + 2] = value0 + int32_t(values[id]);
  }
  const int64_t asked = draw.below(cfg_.n_keys);
  tokens[H] = query_marker();
  tokens[H + 1] = key0 + int32_t(keys[asked]);
  for (int64_t j = 0; j < m; ++j) {
    const int32_t v = value0 + int32_t(values[asked * m + j]);
    targets[H + 1 + j] = v;  // at the key (j = 0), then at value j-1
    mask[H + 1 + j] = 1.0f;
    tokens[H + 2 + j] = v;
  }
}

// ---- variable tracking ---------------------------------------------------------------

VarTrackTask::VarTrackTask(const VarTrackConfig& cfg, uint64_t seed) : SyntheticTask("vartrack", seed), cfg_(cfg) {
  require(cfg.n_statements >= 0, "vartrack",
          "n_statements = " + str(cfg.n_statements) + " must be >= 0 (0: from fill)");
  require(cfg.fill > 0 && cfg.fill < 1, "vartrack", "fill = " + str(cfg.fill) + " must be in (0, 1)");
  require(cfg.n_chains >= 1, "vartrack", "n_chains = " + str(cfg.n_chains) + " must be >= 1");
  require(cfg.n_statements == 0 || cfg.n_statements >= cfg.n_chains, "vartrack",
          "n_statements = " + str(cfg.n_statements) + " must be >= n_chains = " + str(cfg.n_chains));
  require(cfg.var_vocab >= cfg.n_statements, "vartrack",
          "var_vocab = " + str(cfg.var_vocab) + " must be >= n_statements = " + str(cfg.n_statements) +
              " (each statement assigns a new variable)");
  require(cfg.var_vocab >= cfg.n_chains, "vartrack",
          "var_vocab = " + str(cfg.var_vocab) + " must be >= n_chains = " + str(cfg.n_chains));
  require(cfg.value_vocab >= cfg.n_chains, "vartrack",
          "value_vocab = " + str(cfg.value_vocab) + " must be >= n_chains = " + str(cfg.n_chains) +
              " (each chain has its own constant)");
}

int64_t VarTrackTask::n_statements(int64_t T) const {
  return cfg_.n_statements > 0 ? cfg_.n_statements
                                : std::max(cfg_.n_chains, int64_t(std::floor(cfg_.fill * double(T) / 3)));
}

void VarTrackTask::check_length(int64_t T) const {
  const int64_t S = n_statements(T);
  if (3 * S + 2 > T) length_error(T, str(S) + " statements of 3 tokens and one query need T >= " + str(3 * S + 2));
  if (S > cfg_.var_vocab)
    length_error(T, str(S) + " statements assign as many distinct variables, but var_vocab = " +
                        str(cfg_.var_vocab) + " (raise var_vocab, lower fill or fix n_statements)");
}

void VarTrackTask::generate(Draw& draw, int64_t T, int32_t* tokens, int32_t* targets, float* mask) const {
  const int64_t S = n_statements(T), C = cfg_.n_chains;
  const int32_t value0 = int32_t(cfg_.var_vocab);
  const std::vector<int64_t> vars = sample_distinct(draw, cfg_.var_vocab, S);
  const std::vector<int64_t> constants = sample_distinct(draw, cfg_.value_vocab, C);
  // Chain c owns the variables vars[first[c] .. first[c+1]), assigned in that order.
  std::vector<int64_t> first(C + 1, 0), chain_of(S);
  for (int64_t c = 0; c < C; ++c) first[c + 1] = first[c] + S / C + (c < S % C ? 1 : 0);
  for (int64_t c = 0; c < C; ++c)
    for (int64_t i = first[c]; i < first[c + 1]; ++i) chain_of[i] = c;
  // The interleaving: a uniformly random arrangement of the chains' statement slots.
  const std::vector<int64_t> perm = sample_distinct(draw, S, S);
  std::vector<int64_t> next(first.begin(), first.end() - 1);
  for (int64_t s = 0; s < S; ++s) {
    const int64_t c = chain_of[perm[s]], i = next[c]++;
    tokens[3 * s] = int32_t(vars[i]);
    tokens[3 * s + 1] = equals();
    tokens[3 * s + 2] = i == first[c] ? value0 + int32_t(constants[c]) : int32_t(vars[i - 1]);
  }
  for (int64_t pos = 3 * S; pos < T; pos += 3) {
    tokens[pos] = query_marker();
    if (pos + 1 >= T) break;
    const int64_t i = draw.below(S);
    const int32_t value = value0 + int32_t(constants[chain_of[i]]);
    tokens[pos + 1] = int32_t(vars[i]);
    targets[pos + 1] = value;
    mask[pos + 1] = 1.0f;
    if (pos + 2 < T) tokens[pos + 2] = value;
  }
}

}  // namespace hysim
