// Tasks that need both state tracking and recall ("beyond both": a pure recurrence
// with a small state cannot store everything it may be asked about, attention alone
// cannot compose the long chains of updates) (tasks.h: split, determinism, length
// scaling).
//
// code execution ("codeexec"; n_vars = 4 variables, values mod m = 5)
//   tokens  variables [0, X), values [X, X+m), then the opcodes
//           SET X+m, COPY X+m+1, ADD X+m+2, SWAP X+m+3, query "?" X+m+4, PAD X+m+5
//   layout  a straight-line program of 3-token statements, then the queries:
//             PAD ... PAD                       (0-2 tokens, so the program fits T exactly)
//             SET x_0 c_0  ...  SET x_{X-1} c_{X-1}      (every variable initialised)
//             P random statements, ops uniform over the enabled `ops`:
//               SET x c   x = c                 (c uniform in [0, m))
//               COPY x y  x = y                 (y != x)
//               ADD x c   x = (x + c) mod m     (c uniform in [1, m))
//               SWAP x y  exchange x and y      (y != x)
//             ? x_1 a_1 ? x_2 a_2 ... ? x_Q     (Q = n_queries distinct variables;
//                                                the last answer is outside the window)
//           P = floor((T - 3Q + 1) / 3) - X grows with T; needs P >= 1.
//   answers at each queried variable's position: target = its value at the end of the
//           program (value token X + v). Chance 1/m.
//
// associative recall of running parities ("recall_parity"; n_streams = 4 named bit
//   streams, names drawn per instance from name_vocab = 64)
//   tokens  bits 0, 1; names [2, 2+N); "?" 2+N; PAD 3+N   (N = name_vocab)
//   layout  events up to position T-3, then a final query "? s" at T-2, T-1:
//             update  s b     stream s receives bit b (uniform)
//             query   ? s p   p = parity of all bits stream s has received so far
//           each event is a query with probability p_query (0.25), else an update,
//           streams uniform among the instance's n_streams names (distinct, uniform
//           from the N names); an event that does not fit before T-2 is replaced by an
//           update (2 positions left) or PAD (1 left). The number of events grows with T.
//   answers at the stream name of every query (including the final one): target = the
//           stream's running parity (0 for a stream with no bits yet). Chance 1/2.
//
// associative recall through a parity switch ("flip_recall"; n_pairs = 16, key_vocab =
//   32, value_vocab = 32). Recall needs a store as large as the dictionary (attention has
//   one, a small recurrent state has not); the switch needs the parity of an unbounded
//   bit stream (a recurrence with negative eigenvalues has it, a transformer does not
//   length-generalise). A 3:1 GDN:attention hybrid can split the work between its layers.
//   tokens  keys [0, K), values [K, K+V), switch bits "0" K+V and "1" K+V+1
//           (K = key_vocab, V = value_vocab, V even)
//   layout  N key-value pairs  k_1 v_1 ... k_N v_N  (distinct keys in random order,
//           values uniform), then events up to position T-1: with probability p_query
//           (0.5) a query  k a  (k uniform over the N keys, a its answer as the next
//           token), else one switch bit (uniform). The event phase, and with it the
//           number of switch bits, grows with T; N is fixed.
//   answers at every query key's position: with P the parity of the switch bits so far,
//           target = value token K + ((v + P V/2) mod V) (the stored value when P = 0,
//           its partner half-way round the value ring when P = 1). Chance 1/V.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "synthetic_tasks/tasks.h"

namespace hysim {

enum class CodeOp { set, copy, add, swap };

struct CodeExecConfig {
  int64_t n_vars = 4, modulus = 5, n_queries = 1;  // n_queries <= n_vars
  std::vector<CodeOp> ops = {CodeOp::set, CodeOp::copy, CodeOp::add, CodeOp::swap};
};

class CodeExecTask : public SyntheticTask {
 public:
  // Throws std::invalid_argument naming a field out of range (copy and swap need
  // n_vars >= 2).
  CodeExecTask(const CodeExecConfig& cfg, uint64_t seed);
  int64_t vocab_size() const override { return cfg_.n_vars + cfg_.modulus + 6; }
  double chance_accuracy() const override { return 1.0 / double(cfg_.modulus); }
  int32_t opcode(CodeOp op) const { return int32_t(cfg_.n_vars + cfg_.modulus) + int32_t(op); }
  int32_t query_marker() const { return int32_t(cfg_.n_vars + cfg_.modulus + 4); }
  int32_t pad() const { return int32_t(cfg_.n_vars + cfg_.modulus + 5); }
  // P above: random statements after the initialisation.
  int64_t n_random_statements(int64_t T) const;

 protected:
  void check_length(int64_t T) const override;
  void generate(Draw& draw, int64_t T, int32_t* tokens, int32_t* targets, float* mask) const override;

 private:
  CodeExecConfig cfg_;
};

struct RecallParityConfig {
  int64_t n_streams = 4, name_vocab = 64;  // n_streams <= name_vocab
  double p_query = 0.25;                   // in [0, 1]
};

class RecallParityTask : public SyntheticTask {
 public:
  RecallParityTask(const RecallParityConfig& cfg, uint64_t seed);
  int64_t vocab_size() const override { return cfg_.name_vocab + 4; }
  double chance_accuracy() const override { return 0.5; }
  int32_t query_marker() const { return int32_t(cfg_.name_vocab + 2); }
  int32_t pad() const { return int32_t(cfg_.name_vocab + 3); }

 protected:
  void check_length(int64_t T) const override;
  void generate(Draw& draw, int64_t T, int32_t* tokens, int32_t* targets, float* mask) const override;

 private:
  RecallParityConfig cfg_;
};

struct FlipRecallConfig {
  int64_t n_pairs = 16, key_vocab = 32, value_vocab = 32;  // n_pairs <= key_vocab, value_vocab even
  double p_query = 0.5;                                    // in (0, 1)
};

class FlipRecallTask : public SyntheticTask {
 public:
  FlipRecallTask(const FlipRecallConfig& cfg, uint64_t seed);
  int64_t vocab_size() const override { return cfg_.key_vocab + cfg_.value_vocab + 2; }
  double chance_accuracy() const override { return 1.0 / double(cfg_.value_vocab); }
  int32_t switch_bit(int32_t b) const { return int32_t(cfg_.key_vocab + cfg_.value_vocab) + b; }

 protected:
  void check_length(int64_t T) const override;
  void generate(Draw& draw, int64_t T, int32_t* tokens, int32_t* targets, float* mask) const override;

 private:
  FlipRecallConfig cfg_;
};

}  // namespace hysim
