#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "synthetic_tasks/registry.h"
#include "synthetic_tasks/state_tracking.h"
#include "synthetic_tasks/tasks.h"

using namespace hysim;

namespace {

// ---- independent oracles --------------------------------------------------------------
// Each parses a row back from the documented token format (throwing on anything that
// does not follow it), recomputes the answers into targets/mask (zero elsewhere) and
// returns the instance's size (items) for the length test.

struct FormatError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
void expect(bool ok, const std::string& what) {
  if (!ok) throw FormatError(what);
}

using Oracle = std::function<int64_t(const int32_t* tok, int64_t T, int32_t* targets, float* mask)>;

Oracle modular_sum_oracle(int64_t m) {
  return [m](const int32_t* tok, int64_t T, int32_t* targets, float* mask) {
    int64_t s = 0;
    for (int64_t t = 0; t < T; ++t) {
      expect(tok[t] >= 0 && tok[t] < m, "token out of range");
      s = (s + tok[t]) % m;
      targets[t] = int32_t(s);
      mask[t] = 1;
    }
    return T;
  };
}

// The group's elements in lexicographic order, found by filtering all n^n tuples
// (an odometer counts them in lexicographic order); A_n by cycle-count sign.
std::vector<std::vector<int>> group_elements(int n, bool even_only) {
  std::vector<std::vector<int>> out;
  std::vector<int> t(n, 0);
  while (true) {
    std::vector<bool> seen(n, false);
    bool bijective = true;
    for (int x : t) bijective = bijective && !seen[x], seen[x] = true;
    if (bijective) {
      int cycles = 0;
      std::vector<bool> visited(n, false);
      for (int i = 0; i < n; ++i)
        if (!visited[i]) {
          ++cycles;
          for (int j = i; !visited[j]; j = t[j]) visited[j] = true;
        }
      if (!even_only || (n - cycles) % 2 == 0) out.push_back(t);
    }
    int i = n - 1;
    while (i >= 0 && t[i] == n - 1) t[i--] = 0;
    if (i < 0) break;
    ++t[i];
  }
  return out;
}

Oracle permutation_oracle(int n, bool even_only) {
  auto elements = std::make_shared<std::vector<std::vector<int>>>(group_elements(n, even_only));
  return [elements, n](const int32_t* tok, int64_t T, int32_t* targets, float* mask) {
    std::vector<int> state(n);
    for (int i = 0; i < n; ++i) state[i] = i;
    for (int64_t t = 0; t < T; ++t) {
      expect(tok[t] >= 0 && tok[t] < int32_t(elements->size()), "element out of range");
      const std::vector<int>& g = (*elements)[tok[t]];
      std::vector<int> next(n);
      for (int i = 0; i < n; ++i) next[i] = g[state[i]];  // g after the product so far
      state = next;
      targets[t] = int32_t(std::find(elements->begin(), elements->end(), state) - elements->begin());
      expect(targets[t] < int32_t(elements->size()), "product left the group");
      mask[t] = 1;
    }
    return T;
  };
}

int64_t flipflop_oracle(const int32_t* tok, int64_t T, int32_t* targets, float* mask) {
  int32_t last = -1;
  int64_t reads = 0;
  for (int64_t p = 0; p < T; p += 2) {
    const int32_t op = tok[p];
    expect(op >= 2 && op <= 4, "not an instruction");
    expect(p > 0 || op == 2, "first instruction is not a write");
    if (p + 1 < T) expect(tok[p + 1] == 0 || tok[p + 1] == 1, "not a bit");
    if (op == 2 && p + 1 < T) last = tok[p + 1];
    if (op == 4) {
      ++reads;
      if (p + 1 < T) expect(tok[p + 1] == last, "read bit is not the last written bit");
      targets[p] = last;
      mask[p] = 1;
    }
  }
  expect(reads >= 1, "no read");
  return (T + 1) / 2;
}

// N: the number of pairs the test expects at this T.
Oracle mqar_oracle(int64_t K, int64_t V, std::function<int64_t(int64_t)> expected_pairs) {
  return [=](const int32_t* tok, int64_t T, int32_t* targets, float* mask) {
    const int64_t N = expected_pairs(T);
    std::map<int32_t, int32_t> value_of;
    for (int64_t i = 0; i < N; ++i) {
      expect(tok[2 * i] >= 0 && tok[2 * i] < K, "pair key out of range");
      expect(tok[2 * i + 1] >= K && tok[2 * i + 1] < K + V, "pair value out of range");
      expect(value_of.emplace(tok[2 * i], tok[2 * i + 1]).second, "repeated key among the pairs");
    }
    for (int64_t p = 2 * N; p < T; p += 2) {
      expect(value_of.count(tok[p]) == 1, "query of a key not among the pairs");
      targets[p] = value_of[tok[p]];
      mask[p] = 1;
      if (p + 1 < T) expect(tok[p + 1] == value_of[tok[p]], "query answer token is not the key's value");
    }
    return N;
  };
}

Oracle selective_copy_oracle(int64_t D) {
  return [D](const int32_t* tok, int64_t T, int32_t* targets, float* mask) {
    const int32_t blank = int32_t(D), sep = int32_t(D + 1);
    const int64_t L = std::find(tok, tok + T, sep) - tok;
    expect(L < T, "no separator");
    std::vector<int32_t> data;
    for (int64_t t = 0; t < L; ++t) {
      expect(tok[t] >= 0 && tok[t] <= blank, "region token out of range");
      if (tok[t] != blank) data.push_back(tok[t]);
    }
    const int64_t n = int64_t(data.size());
    expect(n >= 1 && L + 1 + n == T, "copy section length != number of data tokens");
    for (int64_t j = 0; j < n; ++j) expect(tok[L + 1 + j] == data[j], "copy differs from the data");
    for (int64_t j = 0; j < n; ++j) {  // at the separator and the first n-1 copies
      targets[L + j] = data[j];
      mask[L + j] = 1;
    }
    return n;
  };
}

Oracle niah_oracle(int64_t Hv, int64_t Kv, int64_t Vv, int64_t n_keys, int64_t n_values) {
  return [=](const int32_t* tok, int64_t T, int32_t* targets, float* mask) {
    const int32_t needle = int32_t(Hv + Kv + Vv), query = needle + 1;
    const int64_t q = T - 2 - n_values;
    expect(tok[q] == query, "no question where expected");
    std::map<int32_t, std::vector<int32_t>> values_of;
    int64_t n_needles = 0;
    for (int64_t t = 0; t < q; ++t) {
      if (tok[t] == needle) {
        expect(t + 2 < q, "needle cut by the question");
        const int32_t k = tok[t + 1], v = tok[t + 2];
        expect(k >= Hv && k < Hv + Kv && v >= Hv + Kv && v < Hv + Kv + Vv, "needle key/value out of range");
        auto& vs = values_of[k];
        expect(std::find(vs.begin(), vs.end(), v) == vs.end(), "repeated value of one key");
        vs.push_back(v);
        ++n_needles;
        t += 2;
      } else {
        expect(tok[t] >= 0 && tok[t] < Hv, "haystack token out of range");
      }
    }
    expect(n_needles == n_keys * n_values && int64_t(values_of.size()) == n_keys, "wrong needle count");
    expect(values_of.count(tok[q + 1]) == 1, "asked key is not in the haystack");
    const std::vector<int32_t>& vs = values_of[tok[q + 1]];
    expect(int64_t(vs.size()) == n_values, "asked key has the wrong number of values");
    for (int64_t j = 0; j < n_values; ++j) {
      expect(tok[q + 2 + j] == vs[j], "answer tokens are not the key's values in order");
      targets[q + 1 + j] = vs[j];
      mask[q + 1 + j] = 1;
    }
    return q;  // the haystack length
  };
}

Oracle vartrack_oracle(int64_t X, int64_t V, int64_t n_chains) {
  return [=](const int32_t* tok, int64_t T, int32_t* targets, float* mask) {
    const int32_t eq = int32_t(X + V), query = eq + 1;
    std::map<int32_t, int32_t> value_of;
    std::set<int32_t> constants;
    int64_t p = 0, S = 0;
    for (; p < T && tok[p] != query; p += 3, ++S) {
      expect(p + 2 < T, "statement cut");
      const int32_t x = tok[p], a = tok[p + 2];
      expect(x >= 0 && x < X && tok[p + 1] == eq, "malformed statement");
      expect(value_of.count(x) == 0, "variable assigned twice");
      if (a >= X) {
        expect(a < X + V, "constant out of range");
        expect(constants.insert(a).second, "two chains share a constant");
        value_of[x] = a;
      } else {
        expect(value_of.count(a) == 1, "copy from an unassigned variable");
        value_of[x] = value_of[a];
      }
    }
    expect(int64_t(constants.size()) == n_chains, "wrong number of chains");
    int64_t queries = 0;
    for (; p < T; p += 3) {
      expect(tok[p] == query, "expected a query");
      if (p + 1 >= T) break;
      expect(value_of.count(tok[p + 1]) == 1, "query of an unknown variable");
      targets[p + 1] = value_of[tok[p + 1]];
      mask[p + 1] = 1;
      ++queries;
      if (p + 2 < T) expect(tok[p + 2] == value_of[tok[p + 1]], "query answer token is wrong");
    }
    expect(queries >= 1, "no query");
    return S;
  };
}

Oracle codeexec_oracle(int64_t X, int64_t m, int64_t n_queries) {
  return [=](const int32_t* tok, int64_t T, int32_t* targets, float* mask) {
    const int32_t SET = int32_t(X + m), COPY = SET + 1, ADD = SET + 2, SWAP = SET + 3, QUERY = SET + 4, PAD = SET + 5;
    int64_t p = 0;
    while (p < T && tok[p] == PAD) ++p;
    expect(p <= 2, "more than 2 pads");
    std::vector<int64_t> var(X, -1);
    int64_t statements = 0;
    auto is_var = [&](int32_t t) { return t >= 0 && t < X; };
    auto is_val = [&](int32_t t) { return t >= X && t < X + m; };
    for (; p < T && tok[p] != QUERY; p += 3, ++statements) {
      expect(p + 2 < T, "statement cut");
      const int32_t op = tok[p], a = tok[p + 1], b = tok[p + 2];
      expect(is_var(a), "first operand is not a variable");
      if (statements < X) expect(op == SET && a == statements, "initialisation is not SET x_i in order");
      if (op == SET) {
        expect(is_val(b), "SET of a non-value");
        var[a] = b - X;
      } else if (op == ADD) {
        expect(is_val(b) && b > X, "ADD of a non-value or of 0");
        var[a] = (var[a] + (b - X)) % m;
      } else if (op == COPY || op == SWAP) {
        expect(is_var(b) && b != a, "COPY/SWAP operand");
        if (op == COPY) var[a] = var[b];
        else std::swap(var[a], var[b]);
      } else {
        expect(false, "unknown opcode");
      }
    }
    expect(statements > X, "no statement after the initialisation");
    std::set<int32_t> asked;
    for (; p < T; p += 3) {
      expect(tok[p] == QUERY && p + 1 < T && is_var(tok[p + 1]), "malformed query");
      expect(asked.insert(tok[p + 1]).second, "variable asked twice");
      const int32_t value = int32_t(X + var[tok[p + 1]]);
      targets[p + 1] = value;
      mask[p + 1] = 1;
      if (p + 2 < T) expect(tok[p + 2] == value, "query answer token is wrong");
    }
    expect(int64_t(asked.size()) == n_queries, "wrong number of queries");
    return statements;
  };
}

Oracle recall_parity_oracle(int64_t N, int64_t n_streams) {
  return [=](const int32_t* tok, int64_t T, int32_t* targets, float* mask) {
    const int32_t query = int32_t(N + 2), pad = query + 1;
    auto is_name = [&](int32_t t) { return t >= 2 && t < N + 2; };
    std::map<int32_t, int32_t> parity;
    std::set<int32_t> names;
    int64_t events = 0, p = 0;
    while (p < T) {
      if (tok[p] == pad) {
        expect(p == T - 3, "pad anywhere but just before the final query");
        ++p;
      } else if (tok[p] == query) {
        expect(p + 1 < T && is_name(tok[p + 1]), "malformed query");
        names.insert(tok[p + 1]);
        targets[p + 1] = parity[tok[p + 1]];
        mask[p + 1] = 1;
        if (p + 2 < T) expect(tok[p + 2] == parity[tok[p + 1]], "query answer token is wrong");
        expect(p + 2 < T || p == T - 2, "final query not at T-2");
        p += 3;
        ++events;
      } else {
        expect(is_name(tok[p]) && p + 1 < T - 2 && (tok[p + 1] == 0 || tok[p + 1] == 1), "malformed update");
        names.insert(tok[p]);
        parity[tok[p]] ^= tok[p + 1];
        p += 2;
        ++events;
      }
    }
    expect(tok[T - 2] == query, "no final query");
    expect(int64_t(names.size()) <= n_streams, "more stream names than streams");
    return events;
  };
}

Oracle flip_recall_oracle(int64_t K, int64_t V, int64_t N) {
  return [=](const int32_t* tok, int64_t T, int32_t* targets, float* mask) {
    const int32_t bit0 = int32_t(K + V), bit1 = bit0 + 1;
    auto is_key = [&](int32_t t) { return t >= 0 && t < K; };
    auto is_value = [&](int32_t t) { return t >= K && t < K + V; };
    std::map<int32_t, int64_t> stored;
    int64_t p = 0;
    for (; p < 2 * N; p += 2) {
      expect(is_key(tok[p]) && is_value(tok[p + 1]), "malformed pair");
      expect(stored.emplace(tok[p], tok[p + 1] - K).second, "key stored twice");
    }
    int64_t parity = 0, events = 0;
    while (p < T) {
      ++events;
      if (tok[p] == bit0 || tok[p] == bit1) {
        parity ^= int64_t(tok[p] == bit1);
        ++p;
        continue;
      }
      expect(stored.count(tok[p]) == 1, "query of a key that was not stored");
      const int32_t answer = int32_t(K + (stored[tok[p]] + parity * (V / 2)) % V);
      targets[p] = answer;
      mask[p] = 1;
      if (p + 1 < T) expect(tok[p + 1] == answer, "query answer token is wrong");
      p += 2;
    }
    return events;
  };
}

// ---- the task table -------------------------------------------------------------------

struct Case {
  std::string name, args;
  int64_t T;       // a short training length
  double chance;   // expected chance_accuracy()
  Oracle oracle;
  bool scales = true;  // items grow with T (false: fixed by an argument)
};

std::vector<Case> cases() {
  auto half_fill = [](int64_t T) { return std::max<int64_t>(1, T / 4); };  // fill 0.5: floor(0.5 T / 2)
  return {
      {"parity", "", 16, 0.5, modular_sum_oracle(2)},
      {"modadd", "m=3", 16, 1.0 / 3, modular_sum_oracle(3)},
      {"modadd", "", 16, 1.0 / 5, modular_sum_oracle(5)},
      {"perm_s3", "", 16, 1.0 / 6, permutation_oracle(3, false)},
      {"perm_s5", "", 16, 1.0 / 120, permutation_oracle(5, false)},
      {"perm_a5", "", 16, 1.0 / 60, permutation_oracle(5, true)},
      {"flipflop", "", 17, 0.5, flipflop_oracle},
      {"flipflop", "p_write=0.3 p_read=0.5", 16, 0.5, flipflop_oracle},
      {"mqar", "key_vocab=256 value_vocab=16", 32, 1.0 / 16, mqar_oracle(256, 16, half_fill)},
      {"mqar", "key_vocab=256 value_vocab=16 query=powerlaw alpha=1.5", 33, 1.0 / 16, mqar_oracle(256, 16, half_fill)},
      {"mqar", "n_pairs=5 key_vocab=8 value_vocab=4", 20, 1.0 / 4, mqar_oracle(8, 4, [](int64_t) { return 5; }), false},
      {"selective_copy", "data_vocab=8", 32, 1.0 / 8, selective_copy_oracle(8)},
      {"selective_copy", "n_tokens=3 data_vocab=5", 16, 1.0 / 5, selective_copy_oracle(5), false},
      {"niah", "hay_vocab=8 key_vocab=8 value_vocab=16", 24, 1.0 / 16, niah_oracle(8, 8, 16, 1, 1)},
      {"niah", "mode=multikey hay_vocab=8 key_vocab=8 value_vocab=16", 24, 1.0 / 16, niah_oracle(8, 8, 16, 4, 1)},
      {"niah", "mode=multivalue n_values=3 hay_vocab=8 key_vocab=8 value_vocab=16", 24, 1.0 / 16,
       niah_oracle(8, 8, 16, 1, 3)},
      {"vartrack", "var_vocab=256 value_vocab=8", 40, 1.0 / 8, vartrack_oracle(256, 8, 4)},
      {"vartrack", "n_chains=2 var_vocab=64 value_vocab=4 fill=0.7", 31, 1.0 / 4, vartrack_oracle(64, 4, 2)},
      {"codeexec", "", 32, 1.0 / 5, codeexec_oracle(4, 5, 1)},
      {"codeexec", "n_vars=3 m=7 n_queries=2 ops=add,swap", 33, 1.0 / 7, codeexec_oracle(3, 7, 2)},
      {"codeexec", "n_vars=2 m=3 ops=set,copy", 34, 1.0 / 3, codeexec_oracle(2, 3, 1)},
      {"recall_parity", "n_streams=3 name_vocab=16", 32, 0.5, recall_parity_oracle(16, 3)},
      {"recall_parity", "p_query=0", 17, 0.5, recall_parity_oracle(64, 4)},
      {"flip_recall", "", 48, 1.0 / 32, flip_recall_oracle(32, 32, 16)},
      {"flip_recall", "n_pairs=3 key_vocab=5 value_vocab=6 p_query=0.3", 17, 1.0 / 6, flip_recall_oracle(5, 6, 3)},
  };
}

std::string label(const Case& c) { return c.name + (c.args.empty() ? "" : " " + c.args); }

// Checks one batch against the oracle; returns the mean instance size.
double check_batch(const Case& c, const DataSource& d, const Batch& b) {
  REQUIRE(b.tokens.size() == size_t(b.B * b.T));
  REQUIRE(b.targets.size() == size_t(b.B * b.T));
  REQUIRE(b.loss_mask.size() == size_t(b.B * b.T));
  const int64_t V = d.vocab_size();
  double items = 0;
  for (int64_t r = 0; r < b.B; ++r) {
    const int32_t* tok = b.tokens.data() + r * b.T;
    std::vector<int32_t> targets(b.T, 0);
    std::vector<float> mask(b.T, 0.0f);
    for (int64_t t = 0; t < b.T; ++t) {
      const int64_t i = r * b.T + t;
      REQUIRE((b.tokens[i] >= 0 && b.tokens[i] < V));
      REQUIRE((b.targets[i] >= 0 && b.targets[i] < V));
      REQUIRE((b.loss_mask[i] == 0.0f || b.loss_mask[i] == 1.0f));
    }
    try {
      items += double(c.oracle(tok, b.T, targets.data(), mask.data()));
    } catch (const FormatError& e) {
      std::string row;
      for (int64_t t = 0; t < b.T; ++t) row += std::to_string(tok[t]) + " ";
      FAIL(label(c) << " T=" << b.T << ": " << e.what() << "\n  row: " << row);
    }
    const std::vector<int32_t> got_targets(b.targets.begin() + r * b.T, b.targets.begin() + (r + 1) * b.T);
    const std::vector<float> got_mask(b.loss_mask.begin() + r * b.T, b.loss_mask.begin() + (r + 1) * b.T);
    REQUIRE(got_mask == mask);
    REQUIRE(got_targets == targets);  // answers at the masked positions, 0 elsewhere
  }
  return items / double(b.B);
}

std::string row_key(const Batch& b, int64_t r) {
  return std::string(reinterpret_cast<const char*>(b.tokens.data() + r * b.T), size_t(b.T) * sizeof(int32_t));
}

template <class E = std::invalid_argument, class F> void check_throws_with(F f, std::vector<std::string> parts) {
  try {
    f();
    FAIL("no exception; expected one mentioning '" << parts[0] << "'");
  } catch (const E& e) {
    const std::string msg = e.what();
    INFO("message: " << msg);
    for (const std::string& p : parts) CHECK(msg.find(p) != std::string::npos);
  }
}

}  // namespace

TEST_CASE("every task: answers match an independent re-computation at 1x, 2x, 4x and 8x length") {
  for (const Case& c : cases()) {
    INFO(label(c));
    const auto d = make_task(c.name, c.args, 7);
    CHECK(d->chance_accuracy() == doctest::Approx(c.chance).epsilon(1e-12));
    Batch b;
    std::vector<double> sizes;
    for (int64_t mult : {1, 2, 4, 8}) {
      const int64_t T = c.T * mult;
      double train_items = 0;
      for (int64_t step = 0; step < 4; ++step) {
        d->train_batch(step, 8, T, b);
        REQUIRE(b.B == 8);
        REQUIRE(b.T == T);
        train_items += check_batch(c, *d, b) / 4;
        for (int64_t r = 0; r < b.B; ++r) CHECK_FALSE(SyntheticTask::is_validation_instance(&b.tokens[r * T], T));
      }
      d->val_batch(mult, 8, T, b);
      check_batch(c, *d, b);
      for (int64_t r = 0; r < b.B; ++r) CHECK(SyntheticTask::is_validation_instance(&b.tokens[r * T], T));
      sizes.push_back(train_items);
    }
    INFO("mean instance size at 1x, 2x, 4x, 8x: " << sizes[0] << " " << sizes[1] << " " << sizes[2] << " " << sizes[3]);
    for (size_t i = 1; i < sizes.size(); ++i) {
      if (c.scales) CHECK(sizes[i] > 1.5 * sizes[i - 1]);  // roughly doubles with T
      else CHECK(sizes[i] == sizes[0]);
    }
  }
}

TEST_CASE("every task: batches are a pure function of (seed, step) and (seed, index)") {
  for (const Case& c : cases()) {
    INFO(label(c));
    const auto a = make_task(c.name, c.args, 3), a2 = make_task(c.name, c.args, 3), other = make_task(c.name, c.args, 4);
    Batch x, y, z;
    a->train_batch(5, 4, c.T, x);
    a2->train_batch(9, 4, c.T, y);  // a different history
    a2->val_batch(2, 4, c.T, y);
    a2->train_batch(5, 4, c.T, y);
    CHECK(x.tokens == y.tokens);
    CHECK(x.targets == y.targets);
    CHECK(x.loss_mask == y.loss_mask);
    a->train_batch(5, 4, c.T, y);  // again from the same object
    CHECK(x.tokens == y.tokens);
    a->train_batch(6, 4, c.T, z);
    CHECK(x.tokens != z.tokens);
    other->train_batch(5, 4, c.T, z);
    CHECK(x.tokens != z.tokens);
    // row r does not depend on B: the first rows of a larger batch are the same
    a->train_batch(5, 6, c.T, z);
    CHECK(std::equal(x.tokens.begin(), x.tokens.end(), z.tokens.begin()));
    a->val_batch(1, 4, c.T, x);
    a2->val_batch(1, 4, c.T, y);
    CHECK(x.tokens == y.tokens);
    a->val_batch(2, 4, c.T, z);
    CHECK(x.tokens != z.tokens);
    // rows within a batch differ
    std::set<std::string> rows;
    for (int64_t r = 0; r < 4; ++r) rows.insert(row_key(x, r));
    CHECK(rows.size() == 4);
  }
  // Different tasks with the same seed draw independent streams (parity vs modadd m=2
  // would otherwise be the same task).
  Batch p, m;
  make_task("parity", "", 1)->train_batch(0, 2, 32, p);
  make_task("modadd", "m=2", 1)->train_batch(0, 2, 32, m);
  CHECK(p.tokens != m.tokens);
}

TEST_CASE("every task: training and validation instances are disjoint") {
  for (const Case& c : cases()) {
    INFO(label(c));
    const auto d = make_task(c.name, c.args, 11);
    std::set<std::string> train, val;
    Batch b;
    const int64_t B = 32, steps = 40;
    for (int64_t step = 0; step < steps; ++step) {
      d->train_batch(step, B, c.T, b);
      for (int64_t r = 0; r < B; ++r) train.insert(row_key(b, r));
    }
    for (int64_t index = 0; index < 20; ++index) {
      d->val_batch(index, B, c.T, b);
      for (int64_t r = 0; r < B; ++r) val.insert(row_key(b, r));
    }
    int64_t shared = 0;
    for (const std::string& v : val) shared += train.count(v);
    CHECK(shared == 0);
    CHECK(val.size() > 1);
  }
  // A small instance space, so that the check above can fail: parity at T = 10 has
  // 1024 instances; 1280 training rows repeat many, and would share with validation
  // without the split.
  const auto d = make_task("parity", "", 0);
  std::set<std::string> train, val;
  Batch b;
  for (int64_t step = 0; step < 40; ++step) {
    d->train_batch(step, 32, 10, b);
    for (int64_t r = 0; r < 32; ++r) train.insert(row_key(b, r));
  }
  for (int64_t index = 0; index < 40; ++index) {
    d->val_batch(index, 32, 10, b);
    for (int64_t r = 0; r < 32; ++r) val.insert(row_key(b, r));
  }
  CHECK(train.size() < 1000);  // repeats: the space is small
  CHECK(val.size() > 60);      // about 1024 / 8 validation instances, most of them seen
  CHECK(val.size() < 200);
  for (const std::string& v : val) CHECK(train.count(v) == 0);
  CHECK(train.size() + val.size() <= 1024);
}

TEST_CASE("every task: answers are spread over the answer alphabet as chance_accuracy says") {
  for (const Case& c : cases()) {
    INFO(label(c));
    const auto d = make_task(c.name, c.args, 5);
    std::map<int32_t, int64_t> count;
    int64_t total = 0;
    Batch b;
    // enough answers that each class expects >= 200
    for (int64_t step = 0; total * d->chance_accuracy() < 200; ++step) {
      d->train_batch(step, 16, c.T * 2, b);
      for (int64_t i = 0; i < b.size(); ++i)
        if (b.loss_mask[i] == 1.0f) {
          ++count[b.targets[i]];
          ++total;
        }
    }
    int64_t most = 0;
    for (const auto& [answer, n] : count) most = std::max(most, n);
    INFO("answers " << total << ", classes seen " << count.size() << ", most frequent " << double(most) / double(total));
    CHECK(int64_t(count.size()) == int64_t(std::lround(1.0 / d->chance_accuracy())));
    // recall_parity: streams queried before their first bit answer 0, so 0 is favoured
    CHECK(double(most) / double(total) < 1.5 * d->chance_accuracy());
  }
}

TEST_CASE("mqar: power-law queries favour recent pairs, uniform queries do not") {
  auto recent_share = [](const std::string& args) {
    const auto d = make_task("mqar", args, 2);
    Batch b;
    const int64_t T = 128, N = 32;  // fill 0.5
    int64_t recent = 0, old = 0;
    for (int64_t step = 0; step < 20; ++step) {
      d->train_batch(step, 8, T, b);
      for (int64_t r = 0; r < 8; ++r) {
        const int32_t* tok = &b.tokens[r * T];
        for (int64_t p = 2 * N; p < T; p += 2) {
          const int64_t i = (std::find(tok, tok + 2 * N, tok[p]) - tok) / 2;  // which pair
          recent += i >= 3 * N / 4;
          old += i < N / 4;
        }
      }
    }
    return double(recent) / double(recent + old);
  };
  const double uniform = recent_share("key_vocab=64 value_vocab=8");
  const double powerlaw = recent_share("key_vocab=64 value_vocab=8 query=powerlaw alpha=1");
  INFO("share of last-quarter among first+last-quarter queries: uniform " << uniform << ", powerlaw " << powerlaw);
  CHECK(uniform == doctest::Approx(0.5).epsilon(0.1));
  CHECK(powerlaw > 0.8);
}

TEST_CASE("the permutation groups have the right orders and multiplication") {
  const PermutationGroup s3 = PermutationGroup::symmetric(3), s5 = PermutationGroup::symmetric(5),
                         a5 = PermutationGroup::alternating(5);
  CHECK(s3.order() == 6);
  CHECK(s5.order() == 120);
  CHECK(a5.order() == 60);
  for (const PermutationGroup* g : {&s3, &s5, &a5}) {
    const auto elements = group_elements(g->n, g == &a5);
    REQUIRE(int64_t(elements.size()) == g->order());
    for (int64_t i = 0; i < g->order(); ++i)
      for (int j = 0; j < g->n; ++j) REQUIRE(g->elements[i][j] == elements[i][j]);
    CHECK(g->compose(0, 5) == 5);  // element 0 is the identity
    bool abelian = true;
    for (int32_t a = 0; a < g->order(); ++a)
      for (int32_t b = 0; b < g->order(); ++b) abelian = abelian && g->compose(a, b) == g->compose(b, a);
    CHECK_FALSE(abelian);
  }
}

TEST_CASE("argument errors name the task, key and value") {
  check_throws_with([] { make_task("nope", "", 0); }, {"'nope'", "available", "parity", "perm_a5", "recall_parity"});
  check_throws_with([] { make_task("mqar", "n_keys=8", 0); }, {"mqar", "unknown key 'n_keys'", "n_pairs", "key_vocab"});
  check_throws_with([] { make_task("parity", "m=2", 0); }, {"parity", "unknown key 'm'", "none"});
  check_throws_with([] { make_task("modadd", "m=1", 0); }, {"modadd", "'m'", "'1'"});
  check_throws_with([] { make_task("modadd", "m=abc", 0); }, {"'m'", "'abc'", "integer"});
  check_throws_with([] { make_task("modadd", "m=3x", 0); }, {"'m'", "'3x'"});
  check_throws_with([] { make_task("modadd", "m=3 m=4", 0); }, {"'m'", "more than once"});
  check_throws_with([] { make_task("modadd", "m", 0); }, {"'m'", "key=value"});
  check_throws_with([] { make_task("modadd", "m=", 0); }, {"'m='", "key=value"});
  check_throws_with([] { make_task("mqar", "fill=1.5", 0); }, {"'fill'", "'1.5'", "(0, 1)"});
  check_throws_with([] { make_task("mqar", "fill=nan", 0); }, {"'fill'", "'nan'"});
  check_throws_with([] { make_task("mqar", "query=zipf", 0); }, {"'query'", "'zipf'", "uniform, powerlaw"});
  check_throws_with([] { make_task("mqar", "n_pairs=4 fill=0.3", 0); }, {"n_pairs", "fill", "not both"});
  check_throws_with([] { make_task("mqar", "n_pairs=20 key_vocab=10", 0); }, {"n_pairs", "key_vocab"});
  check_throws_with([] { make_task("flipflop", "p_write=0.6 p_read=0.6", 0); }, {"p_write + p_read"});
  check_throws_with([] { make_task("flipflop", "p_read=0", 0); }, {"'p_read'", "'0'"});
  check_throws_with([] { make_task("selective_copy", "fill=0.5", 0); }, {"'fill'", "'0.5'"});
  check_throws_with([] { make_task("niah", "mode=single n_keys=2", 0); }, {"mode=single"});
  check_throws_with([] { make_task("niah", "mode=multikey n_values=2", 0); }, {"mode=multikey"});
  check_throws_with([] { make_task("niah", "mode=many", 0); }, {"'mode'", "'many'", "multivalue"});
  check_throws_with([] { make_task("niah", "mode=multivalue n_values=9 value_vocab=8", 0); }, {"value_vocab", "n_values"});
  check_throws_with([] { make_task("vartrack", "value_vocab=2", 0); }, {"value_vocab", "n_chains"});
  check_throws_with([] { make_task("codeexec", "ops=set,mul", 0); }, {"'ops'", "'set,mul'", "swap"});
  check_throws_with([] { make_task("codeexec", "ops=set,set", 0); }, {"'ops'", "distinct"});
  check_throws_with([] { make_task("codeexec", "n_vars=1 ops=copy", 0); }, {"copy and swap", "n_vars >= 2"});
  check_throws_with([] { make_task("codeexec", "n_queries=5", 0); }, {"n_queries", "n_vars = 4"});
  check_throws_with([] { make_task("recall_parity", "n_streams=9 name_vocab=8", 0); }, {"name_vocab", "n_streams"});
  check_throws_with([] { make_task("flip_recall", "value_vocab=7", 0); }, {"value_vocab", "7", "even"});
  check_throws_with([] { make_task("flip_recall", "n_pairs=40", 0); }, {"key_vocab", "n_pairs"});
  // the valid forms, canonically named
  CHECK(make_task("mqar", "  value_vocab=8   key_vocab=64 ", 0)->name() == "mqar(key_vocab=64 value_vocab=8)");
  CHECK(make_task("parity", "", 0)->name() == "parity");
  CHECK(make_task("perm_a5", "", 0)->vocab_size() == 60);
  CHECK(make_task("codeexec", "n_vars=3 m=7", 0)->vocab_size() == 3 + 7 + 6);
  CHECK(task_names().size() == 13);
  for (const std::string& n : task_names()) CHECK(is_task(n));
  CHECK_FALSE(is_task("text"));
}

TEST_CASE("length and batch errors") {
  Batch b;
  auto mqar = make_task("mqar", "n_pairs=10 key_vocab=16", 0);
  mqar->train_batch(0, 2, 21, b);  // 10 pairs + one query
  check_throws_with<std::runtime_error>([&] { mqar->train_batch(0, 2, 20, b); }, {"mqar", "T = 20", "T >= 21"});
  auto mqar_default = make_task("mqar", "", 0);  // fill 0.5, key_vocab 512: T <= 2051
  mqar_default->train_batch(0, 1, 2051, b);
  check_throws_with<std::runtime_error>([&] { mqar_default->val_batch(0, 1, 2052, b); }, {"513 pairs", "key_vocab = 512"});
  auto niah = make_task("niah", "mode=multivalue", 0);  // 4 needles + "? k v v v v": T >= 18
  niah->train_batch(0, 1, 18, b);
  check_throws_with<std::runtime_error>([&] { niah->train_batch(0, 1, 17, b); }, {"niah", "T >= 18"});
  auto codeexec = make_task("codeexec", "", 0);  // 4 SETs, one statement, "? x": 17
  codeexec->train_batch(0, 1, 17, b);
  check_throws_with<std::runtime_error>([&] { codeexec->train_batch(0, 1, 16, b); }, {"codeexec", "T >= 17"});
  check_throws_with<std::runtime_error>([] { Batch c; make_task("flipflop", "", 0)->train_batch(0, 1, 2, c); },
                                        {"flipflop", "T >= 3"});
  check_throws_with<std::runtime_error>([&] { codeexec->train_batch(0, 0, 32, b); }, {"batch size 0"});
  check_throws_with<std::runtime_error>([&] { codeexec->val_batch(-1, 1, 32, b); }, {"negative"});
  // An instance space with no validation instance: the split cannot be met.
  auto parity = make_task("parity", "", 0);
  const int32_t zero = 0, one = 1;
  const bool any_val = SyntheticTask::is_validation_instance(&zero, 1) || SyntheticTask::is_validation_instance(&one, 1);
  if (!any_val)
    check_throws_with<std::runtime_error>([&] { parity->val_batch(0, 1, 1, b); }, {"parity", "no validation instance"});
  else
    parity->val_batch(0, 1, 1, b);
  parity->train_batch(0, 1, 1, b);  // at least one of the two is a training instance
}

TEST_CASE("generation is fast at long lengths") {
  const auto t0 = std::chrono::steady_clock::now();
  Batch b;
  for (const std::string& n : task_names()) make_task(n, "", 0)->val_batch(0, 8, 2048, b);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  MESSAGE("one validation batch of 8 x 2048 for each of 12 tasks: " << s << " s");
  CHECK(s < 2.0);
}
