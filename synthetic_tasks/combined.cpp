#include "synthetic_tasks/combined.h"

#include <algorithm>
#include <stdexcept>
#include <utility>

namespace hysim {

namespace {

void require(bool ok, const std::string& task, const std::string& what) {
  if (!ok) throw std::invalid_argument("task " + task + ": " + what);
}
std::string str(int64_t x) { return std::to_string(x); }

}  // namespace

// ---- code execution -----------------------------------------------------------------

CodeExecTask::CodeExecTask(const CodeExecConfig& cfg, uint64_t seed) : SyntheticTask("codeexec", seed), cfg_(cfg) {
  require(cfg.n_vars >= 1, "codeexec", "n_vars = " + str(cfg.n_vars) + " must be >= 1");
  require(cfg.modulus >= 2, "codeexec", "m = " + str(cfg.modulus) + " must be >= 2");
  require(cfg.n_queries >= 1 && cfg.n_queries <= cfg.n_vars, "codeexec",
          "n_queries = " + str(cfg.n_queries) + " must be in [1, n_vars = " + str(cfg.n_vars) + "]");
  require(!cfg.ops.empty(), "codeexec", "ops must name at least one operation");
  for (CodeOp op : cfg.ops)
    require(cfg.n_vars >= 2 || op == CodeOp::set || op == CodeOp::add, "codeexec",
            "ops copy and swap need n_vars >= 2 (n_vars = " + str(cfg.n_vars) + ")");
}

int64_t CodeExecTask::n_random_statements(int64_t T) const {
  return (T - 3 * cfg_.n_queries + 1) / 3 - cfg_.n_vars;
}

void CodeExecTask::check_length(int64_t T) const {
  const int64_t need = 3 * (cfg_.n_vars + 1) + 3 * cfg_.n_queries - 1;
  if (T < need)
    length_error(T, "initialising " + str(cfg_.n_vars) + " variables, one statement and " + str(cfg_.n_queries) +
                        " queries need T >= " + str(need));
}

void CodeExecTask::generate(Draw& draw, int64_t T, int32_t* tokens, int32_t* targets, float* mask) const {
  const int64_t X = cfg_.n_vars, m = cfg_.modulus, Q = cfg_.n_queries;
  const int32_t value0 = int32_t(X);
  const int64_t body = T - (3 * Q - 1), n_pad = body % 3, P = n_random_statements(T);
  std::vector<int64_t> state(X);
  int64_t pos = 0;
  for (; pos < n_pad; ++pos) tokens[pos] = pad();
  auto emit = [&](CodeOp op, int64_t a, int32_t b_token) {
    tokens[pos] = opcode(op);
    tokens[pos + 1] = int32_t(a);
    tokens[pos + 2] = b_token;
    pos += 3;
  };
  for (int64_t x = 0; x < X; ++x) {
    state[x] = draw.below(m);
    emit(CodeOp::set, x, value0 + int32_t(state[x]));
  }
  for (int64_t s = 0; s < P; ++s) {
    const CodeOp op = cfg_.ops[size_t(draw.below(int64_t(cfg_.ops.size())))];
    const int64_t x = draw.below(X);
    switch (op) {
      case CodeOp::set: {
        const int64_t c = draw.below(m);
        state[x] = c;
        emit(op, x, value0 + int32_t(c));
        break;
      }
      case CodeOp::add: {
        const int64_t c = 1 + draw.below(m - 1);
        state[x] = (state[x] + c) % m;
        emit(op, x, value0 + int32_t(c));
        break;
      }
      case CodeOp::copy:
      case CodeOp::swap: {
        const int64_t y = (x + 1 + draw.below(X - 1)) % X;  // uniform over the others
        if (op == CodeOp::copy) state[x] = state[y];
        else std::swap(state[x], state[y]);
        emit(op, x, int32_t(y));
        break;
      }
    }
  }
  const std::vector<int64_t> asked = sample_distinct(draw, X, Q);
  for (int64_t q = 0; q < Q; ++q) {
    const int32_t value = value0 + int32_t(state[asked[q]]);
    tokens[pos] = query_marker();
    tokens[pos + 1] = int32_t(asked[q]);
    targets[pos + 1] = value;
    mask[pos + 1] = 1.0f;
    if (pos + 2 < T) tokens[pos + 2] = value;
    pos += 3;
  }
}

// ---- recall of running parities ------------------------------------------------------------

RecallParityTask::RecallParityTask(const RecallParityConfig& cfg, uint64_t seed)
    : SyntheticTask("recall_parity", seed), cfg_(cfg) {
  require(cfg.n_streams >= 1, "recall_parity", "n_streams = " + str(cfg.n_streams) + " must be >= 1");
  require(cfg.name_vocab >= cfg.n_streams, "recall_parity",
          "name_vocab = " + str(cfg.name_vocab) + " must be >= n_streams = " + str(cfg.n_streams) +
              " (distinct stream names)");
  require(cfg.p_query >= 0 && cfg.p_query <= 1, "recall_parity",
          "p_query = " + std::to_string(cfg.p_query) + " must be in [0, 1]");
}

void RecallParityTask::check_length(int64_t T) const {
  if (T < 2) length_error(T, "the final query \"? s\" needs T >= 2");
}

void RecallParityTask::generate(Draw& draw, int64_t T, int32_t* tokens, int32_t* targets, float* mask) const {
  const std::vector<int64_t> names = sample_distinct(draw, cfg_.name_vocab, cfg_.n_streams);
  std::vector<int32_t> parity(cfg_.n_streams, 0);
  auto name_token = [&](int64_t s) { return int32_t(2 + names[s]); };
  const int64_t end = T - 2;  // the final query's position
  int64_t pos = 0;
  while (pos < end) {
    const int64_t left = end - pos;
    if (left == 1) {
      tokens[pos++] = pad();
    } else if (left >= 3 && draw.bernoulli(cfg_.p_query)) {
      const int64_t s = draw.below(cfg_.n_streams);
      tokens[pos] = query_marker();
      tokens[pos + 1] = name_token(s);
      targets[pos + 1] = parity[s];
      mask[pos + 1] = 1.0f;
      tokens[pos + 2] = parity[s];
      pos += 3;
    } else {
      const int64_t s = draw.below(cfg_.n_streams);
      const int32_t bit = int32_t(draw.below(2));
      parity[s] ^= bit;
      tokens[pos] = name_token(s);
      tokens[pos + 1] = bit;
      pos += 2;
    }
  }
  const int64_t s = draw.below(cfg_.n_streams);
  tokens[end] = query_marker();
  tokens[end + 1] = name_token(s);
  targets[end + 1] = parity[s];
  mask[end + 1] = 1.0f;
}

// ---- recall through a parity switch ---------------------------------------------------

FlipRecallTask::FlipRecallTask(const FlipRecallConfig& cfg, uint64_t seed) : SyntheticTask("flip_recall", seed), cfg_(cfg) {
  require(cfg.n_pairs >= 1, "flip_recall", "n_pairs = " + str(cfg.n_pairs) + " must be >= 1");
  require(cfg.key_vocab >= cfg.n_pairs, "flip_recall",
          "key_vocab = " + str(cfg.key_vocab) + " must be >= n_pairs = " + str(cfg.n_pairs) + " (distinct keys)");
  require(cfg.value_vocab >= 2 && cfg.value_vocab % 2 == 0, "flip_recall",
          "value_vocab = " + str(cfg.value_vocab) + " must be even and >= 2 (values come in partner pairs)");
  require(cfg.p_query > 0 && cfg.p_query < 1, "flip_recall",
          "p_query = " + std::to_string(cfg.p_query) + " must be in (0, 1)");
}

void FlipRecallTask::check_length(int64_t T) const {
  if (T < 2 * cfg_.n_pairs + 1)
    length_error(T, str(cfg_.n_pairs) + " key-value pairs and one query need T >= " + str(2 * cfg_.n_pairs + 1));
}

void FlipRecallTask::generate(Draw& draw, int64_t T, int32_t* tokens, int32_t* targets, float* mask) const {
  const int64_t N = cfg_.n_pairs, K = cfg_.key_vocab, V = cfg_.value_vocab;
  const std::vector<int64_t> keys = sample_distinct(draw, K, N);
  std::vector<int64_t> values(N);
  for (int64_t i = 0; i < N; ++i) {
    values[i] = draw.below(V);
    tokens[2 * i] = int32_t(keys[i]);
    tokens[2 * i + 1] = int32_t(K + values[i]);
  }
  int64_t parity = 0, pos = 2 * N;
  while (pos < T) {
    if (draw.bernoulli(cfg_.p_query)) {
      const int64_t i = draw.below(N);
      const int32_t answer = int32_t(K + (values[i] + parity * V / 2) % V);
      tokens[pos] = int32_t(keys[i]);
      targets[pos] = answer;
      mask[pos] = 1.0f;
      if (pos + 1 < T) tokens[pos + 1] = answer;
      pos += 2;
    } else {
      const int64_t bit = draw.below(2);
      parity ^= bit;
      tokens[pos++] = switch_bit(int32_t(bit));
    }
  }
}

}  // namespace hysim
