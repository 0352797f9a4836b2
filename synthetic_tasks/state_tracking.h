// State-tracking tasks: the answer at a position is a function of the whole prefix,
// computed by a finite automaton (tasks.h: split, determinism, length scaling).
//
// parity ("parity")
//   tokens  x_t in {0, 1}, uniform and independent; every position t is an answer:
//   target  x_0 xor ... xor x_t (the running parity). Answers {0, 1}: chance 1/2.
//   A parity instance is the bit string itself (2^T instances).
//
// modular addition ("modadd", m = 5 by default)
//   tokens  x_t in {0, ..., m-1}, uniform; every position is an answer:
//   target  (x_0 + ... + x_t) mod m. Answers {0..m-1}: chance 1/m. (parity = modadd m=2.)
//
// permutation word problems ("perm_s3", "perm_s5", "perm_a5")
//   The elements of the group G (S3, S5: all permutations of {0..n-1}; A5: the even
//   permutations of {0..4}) are numbered in lexicographic order of their one-line
//   notation (p[0], ..., p[n-1]); element 0 is the identity.
//   tokens  g_t: an element index, uniform over G; every position is an answer:
//   target  the index of s_t = g_t o g_{t-1} o ... o g_0, where (a o b)[i] = a[b[i]]
//           (g_0 is applied first). Answers G: chance 1/|G| (1/6, 1/120, 1/60).
//   Why these three: S3 is solvable, S5 and A5 (the smallest non-solvable group) have
//   NC1-complete word problems, beyond constant-depth transformers and diagonal SSMs.
//
// flip-flop language ("flipflop", p_write = 0.1, p_read = 0.1, the rest ignore)
//   tokens  pairs (instruction, bit) at positions (2j, 2j+1): instruction
//           2 = write, 3 = ignore, 4 = read, bit in {0, 1}. Instruction 0 is a write;
//           the others are write / read / ignore with probabilities p_write, p_read,
//           1 - p_write - p_read. Write and ignore bits are uniform; a read's bit is the
//           bit of the most recent write (the sequence is a valid flip-flop string).
//           If no read was drawn, the last instruction becomes a read. For odd T the
//           last position is an instruction whose bit falls outside the window.
//   answers at every read instruction's position: target = the most recent written
//           bit (the next token). Answers {0, 1}: chance 1/2. Vocabulary 5. T >= 3.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "synthetic_tasks/tasks.h"

namespace hysim {

class ModularSumTask : public SyntheticTask {
 public:
  // m >= 2; `kind` is "parity" or "modadd".
  ModularSumTask(std::string kind, int64_t m, uint64_t seed);
  int64_t vocab_size() const override { return m_; }
  double chance_accuracy() const override { return 1.0 / double(m_); }
  int64_t modulus() const { return m_; }

 protected:
  void check_length(int64_t T) const override {}
  void generate(Draw& draw, int64_t T, int32_t* tokens, int32_t* targets, float* mask) const override;

 private:
  int64_t m_;
};

// A permutation group on {0..n-1} (n <= 8), elements in lexicographic order.
struct PermutationGroup {
  int n = 0;
  std::vector<std::array<uint8_t, 8>> elements;  // one-line notation, first n entries used
  std::vector<int32_t> product;                  // product[a * order() + b] = index of a o b

  static PermutationGroup symmetric(int n);
  static PermutationGroup alternating(int n);
  int64_t order() const { return int64_t(elements.size()); }
  int32_t compose(int32_t a, int32_t b) const { return product[size_t(a) * elements.size() + size_t(b)]; }
};

class PermutationTask : public SyntheticTask {
 public:
  PermutationTask(std::string kind, PermutationGroup group, uint64_t seed);
  int64_t vocab_size() const override { return group_.order(); }
  double chance_accuracy() const override { return 1.0 / double(group_.order()); }
  const PermutationGroup& group() const { return group_; }

 protected:
  void check_length(int64_t T) const override {}
  void generate(Draw& draw, int64_t T, int32_t* tokens, int32_t* targets, float* mask) const override;

 private:
  PermutationGroup group_;
};

struct FlipFlopConfig {
  double p_write = 0.1, p_read = 0.1;  // p_write > 0, p_read > 0, p_write + p_read <= 1
};

class FlipFlopTask : public SyntheticTask {
 public:
  static constexpr int32_t kWrite = 2, kIgnore = 3, kRead = 4;
  // Throws std::invalid_argument naming the probability that is out of range.
  FlipFlopTask(const FlipFlopConfig& cfg, uint64_t seed);
  int64_t vocab_size() const override { return 5; }
  double chance_accuracy() const override { return 0.5; }

 protected:
  void check_length(int64_t T) const override;
  void generate(Draw& draw, int64_t T, int32_t* tokens, int32_t* targets, float* mask) const override;

 private:
  FlipFlopConfig cfg_;
};

}  // namespace hysim
