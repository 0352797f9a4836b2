// Recall tasks: the answer is a token seen earlier in the context, found by content
// (tasks.h: split, determinism, length scaling). Each task's token ranges are disjoint
// blocks; "value v" below means the token id of the v-th value.
//
// multi-query associative recall ("mqar"; after Zoology, Arora et al. 2023)
//   tokens  keys [0, K), values [K, K + V)   (K = key_vocab, V = value_vocab)
//   layout  N key-value pairs  k_1 v_1 ... k_N v_N  (distinct keys in random order,
//           values uniform and independent), then queries  q_1 a_1 q_2 a_2 ...  up to
//           position T-1: each q_j is one of the N keys and a_j its value (the next
//           token); for odd T - 2N the last query's answer falls outside the window.
//   N       n_pairs if given, else max(1, floor(fill * T / 2)) (fill = 0.5: half the
//           sequence is pairs, half queries), so N grows with T; needs N <= K.
//   queries uniform over the N pairs, or powerlaw: pair i (0-based, in order of
//           appearance) with probability proportional to (N - i)^-alpha, i.e. a
//           Zipf law over how far back the pair was written (recent pairs more often).
//   answers at every query key's position: target = its value. Chance 1/V.
//
// selective copying ("selective_copy"; after Mamba, Gu & Dao 2023)
//   tokens  data [0, D), blank D, separator D + 1   (D = data_vocab)
//   layout  a region of L = T - 1 - n positions: n data tokens (uniform) at random
//           distinct positions, blanks elsewhere; then the separator at position L;
//           then the n data tokens again in order (positions L+1 ... T-1).
//   n       n_tokens if given, else max(1, floor(fill * T)) (fill < 0.5); needs L >= n.
//   answers at the separator (target: data token 1) and at the copies of data tokens
//           1..n-1 (target: the next data token): n positions. Chance 1/D.
//
// needle in a haystack ("niah"; after RULER, Hsieh et al. 2024)
//   tokens  haystack [0, H), keys [H, H+K), values [H+K, H+K+V), needle marker
//           H+K+V, query marker H+K+V+1   (H, K, V = hay_vocab, key_vocab, value_vocab)
//   layout  a haystack of uniform haystack tokens holding n_keys * values_per_key
//           needles "needle k v" (3 tokens each, non-overlapping, at uniformly random
//           positions), then the question at the very end:
//             query k v_1 ... v_m        (m = values_per_key; ends at position T-1)
//           n_keys distinct keys; the values of one key are distinct, in haystack order.
//           single: 1 key, 1 value; multikey: several keys, one value each, one of
//           them (uniform) asked; multivalue: one key with m values, all asked.
//           The haystack is everything before the question, so it grows with T.
//   answers at the asked key's position (target v_1) and at v_1 ... v_{m-1} (target:
//           the next value): m positions. Chance 1/V.
//
// variable tracking ("vartrack"; after RULER)
//   tokens  variables [0, X), values [X, X+V), "=" X+V, "?" X+V+1
//           (X = var_vocab, V = value_vocab)
//   layout  S statements "x = a" (3 tokens): the variables form n_chains chains
//           x_1 = c; x_2 = x_1; x_3 = x_2; ... whose statements are interleaved at
//           random (each chain in order); every variable is assigned exactly once, the
//           chain constants c are distinct values. Then queries "? x a" (a = the value
//           of x, i.e. its chain's constant) up to position T-1 (the last query may be
//           cut after "? x" or after "?"); queried variables are uniform over all S.
//   S       n_statements if given, else max(n_chains, floor(fill * T / 3)); chains have
//           S / n_chains statements (the first S mod n_chains one more), so the number
//           of hops grows with T. Needs S <= X and at least "? x" after the statements.
//   answers at every queried variable's position: target = its value. Chance 1/V.
#pragma once
#include <cstdint>
#include <string>

#include "synthetic_tasks/tasks.h"

namespace hysim {

enum class QueryDistribution { uniform, powerlaw };

struct MqarConfig {
  int64_t n_pairs = 0;  // 0: from fill and T
  double fill = 0.5;    // fraction of the sequence taken by the pairs, in (0, 1)
  int64_t key_vocab = 512, value_vocab = 512;
  QueryDistribution query = QueryDistribution::uniform;
  double alpha = 1.0;  // powerlaw exponent, > 0
};

class MqarTask : public SyntheticTask {
 public:
  // Throws std::invalid_argument naming a field out of range.
  MqarTask(const MqarConfig& cfg, uint64_t seed);
  int64_t vocab_size() const override { return cfg_.key_vocab + cfg_.value_vocab; }
  double chance_accuracy() const override { return 1.0 / double(cfg_.value_vocab); }
  int64_t n_pairs(int64_t T) const;

 protected:
  void check_length(int64_t T) const override;
  void generate(Draw& draw, int64_t T, int32_t* tokens, int32_t* targets, float* mask) const override;

 private:
  MqarConfig cfg_;
};

struct SelectiveCopyConfig {
  int64_t n_tokens = 0;  // 0: from fill and T
  double fill = 0.125;   // copied tokens per position, in (0, 0.5)
  int64_t data_vocab = 16;
};

class SelectiveCopyTask : public SyntheticTask {
 public:
  SelectiveCopyTask(const SelectiveCopyConfig& cfg, uint64_t seed);
  int64_t vocab_size() const override { return cfg_.data_vocab + 2; }
  double chance_accuracy() const override { return 1.0 / double(cfg_.data_vocab); }
  int64_t n_tokens(int64_t T) const;
  int32_t blank() const { return int32_t(cfg_.data_vocab); }
  int32_t separator() const { return int32_t(cfg_.data_vocab + 1); }

 protected:
  void check_length(int64_t T) const override;
  void generate(Draw& draw, int64_t T, int32_t* tokens, int32_t* targets, float* mask) const override;

 private:
  SelectiveCopyConfig cfg_;
};

struct NiahConfig {
  int64_t n_keys = 1;          // distinct needle keys; one is asked
  int64_t values_per_key = 1;  // needles per key; all are asked, in haystack order
  int64_t hay_vocab = 64, key_vocab = 64, value_vocab = 64;
};

class NiahTask : public SyntheticTask {
 public:
  NiahTask(const NiahConfig& cfg, uint64_t seed);
  int64_t vocab_size() const override { return cfg_.hay_vocab + cfg_.key_vocab + cfg_.value_vocab + 2; }
  double chance_accuracy() const override { return 1.0 / double(cfg_.value_vocab); }
  int32_t needle_marker() const { return int32_t(cfg_.hay_vocab + cfg_.key_vocab + cfg_.value_vocab); }
  int32_t query_marker() const { return needle_marker() + 1; }

 protected:
  void check_length(int64_t T) const override;
  void generate(Draw& draw, int64_t T, int32_t* tokens, int32_t* targets, float* mask) const override;

 private:
  NiahConfig cfg_;
};

struct VarTrackConfig {
  int64_t n_statements = 0;  // 0: from fill and T
  double fill = 0.5;         // fraction of the sequence taken by the statements, in (0, 1)
  int64_t n_chains = 4;
  int64_t var_vocab = 512, value_vocab = 16;  // value_vocab >= n_chains
};

class VarTrackTask : public SyntheticTask {
 public:
  VarTrackTask(const VarTrackConfig& cfg, uint64_t seed);
  int64_t vocab_size() const override { return cfg_.var_vocab + cfg_.value_vocab + 2; }
  double chance_accuracy() const override { return 1.0 / double(cfg_.value_vocab); }
  int64_t n_statements(int64_t T) const;
  int32_t equals() const { return int32_t(cfg_.var_vocab + cfg_.value_vocab); }
  int32_t query_marker() const { return equals() + 1; }

 protected:
  void check_length(int64_t T) const override;
  void generate(Draw& draw, int64_t T, int32_t* tokens, int32_t* targets, float* mask) const override;

 private:
  VarTrackConfig cfg_;
};

}  // namespace hysim
