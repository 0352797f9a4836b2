#include "synthetic_tasks/registry.h"

#include <algorithm>
#include <functional>
#include <stdexcept>
#include <utility>

#include "synthetic_tasks/combined.h"
#include "synthetic_tasks/recall.h"
#include "synthetic_tasks/state_tracking.h"

namespace hysim {

namespace {

constexpr int64_t kMaxCount = int64_t(1) << 24;  // keeps every token id well inside int32

struct TaskEntry {
  std::string name;
  std::vector<std::string> keys;  // every key the builder reads
  std::function<std::unique_ptr<SyntheticTask>(TaskArgs&, uint64_t)> build;
};

const std::vector<TaskEntry>& builders() {
  static const std::vector<TaskEntry> table = {
      {"parity", {}, [](TaskArgs&, uint64_t seed) { return std::make_unique<ModularSumTask>("parity", 2, seed); }},
      {"modadd", {"m"},
       [](TaskArgs& a, uint64_t seed) {
         return std::make_unique<ModularSumTask>("modadd", a.get_int("m", 5, 2, kMaxCount), seed);
       }},
      {"perm_s3", {},
       [](TaskArgs&, uint64_t seed) {
         return std::make_unique<PermutationTask>("perm_s3", PermutationGroup::symmetric(3), seed);
       }},
      {"perm_s5", {},
       [](TaskArgs&, uint64_t seed) {
         return std::make_unique<PermutationTask>("perm_s5", PermutationGroup::symmetric(5), seed);
       }},
      {"perm_a5", {},
       [](TaskArgs&, uint64_t seed) {
         return std::make_unique<PermutationTask>("perm_a5", PermutationGroup::alternating(5), seed);
       }},
      {"flipflop", {"p_write", "p_read"},
       [](TaskArgs& a, uint64_t seed) {
         FlipFlopConfig c;
         c.p_write = a.get_double("p_write", c.p_write, 0, 1, true, false);
         c.p_read = a.get_double("p_read", c.p_read, 0, 1, true, false);
         if (c.p_write + c.p_read > 1) throw a.error("p_write + p_read must be <= 1");
         return std::make_unique<FlipFlopTask>(c, seed);
       }},
      {"mqar", {"n_pairs", "fill", "key_vocab", "value_vocab", "query", "alpha"},
       [](TaskArgs& a, uint64_t seed) {
         MqarConfig c;
         if (a.has("n_pairs") && a.has("fill")) throw a.error("give n_pairs or fill, not both");
         c.n_pairs = a.get_int("n_pairs", 0, 1, kMaxCount);
         c.fill = a.get_double("fill", c.fill, 0, 1, true, true);
         c.key_vocab = a.get_int("key_vocab", c.key_vocab, 1, kMaxCount);
         c.value_vocab = a.get_int("value_vocab", c.value_vocab, 1, kMaxCount);
         c.query = a.get_choice("query", "uniform", {"uniform", "powerlaw"}) == "uniform" ? QueryDistribution::uniform
                                                                                         : QueryDistribution::powerlaw;
         c.alpha = a.get_double("alpha", c.alpha, 0, 100, true, false);
         return std::make_unique<MqarTask>(c, seed);
       }},
      {"selective_copy", {"n_tokens", "fill", "data_vocab"},
       [](TaskArgs& a, uint64_t seed) {
         SelectiveCopyConfig c;
         if (a.has("n_tokens") && a.has("fill")) throw a.error("give n_tokens or fill, not both");
         c.n_tokens = a.get_int("n_tokens", 0, 1, kMaxCount);
         c.fill = a.get_double("fill", c.fill, 0, 0.5, true, true);
         c.data_vocab = a.get_int("data_vocab", c.data_vocab, 1, kMaxCount);
         return std::make_unique<SelectiveCopyTask>(c, seed);
       }},
      {"niah", {"mode", "n_keys", "n_values", "hay_vocab", "key_vocab", "value_vocab"},
       [](TaskArgs& a, uint64_t seed) {
         NiahConfig c;
         const std::string mode = a.get_choice("mode", "single", {"single", "multikey", "multivalue"});
         c.n_keys = a.get_int("n_keys", mode == "multikey" ? 4 : 1, 1, kMaxCount);
         c.values_per_key = a.get_int("n_values", mode == "multivalue" ? 4 : 1, 1, kMaxCount);
         if (mode == "single" && (c.n_keys != 1 || c.values_per_key != 1))
           throw a.error("mode=single has one key with one value (n_keys and n_values are for multikey, multivalue)");
         if (mode == "multikey" && (c.n_keys < 2 || c.values_per_key != 1))
           throw a.error("mode=multikey needs n_keys >= 2 and one value per key (n_values = 1)");
         if (mode == "multivalue" && (c.n_keys != 1 || c.values_per_key < 2))
           throw a.error("mode=multivalue needs one key (n_keys = 1) and n_values >= 2");
         c.hay_vocab = a.get_int("hay_vocab", c.hay_vocab, 1, kMaxCount);
         c.key_vocab = a.get_int("key_vocab", c.key_vocab, 1, kMaxCount);
         c.value_vocab = a.get_int("value_vocab", c.value_vocab, 1, kMaxCount);
         return std::make_unique<NiahTask>(c, seed);
       }},
      {"vartrack", {"n_statements", "fill", "n_chains", "var_vocab", "value_vocab"},
       [](TaskArgs& a, uint64_t seed) {
         VarTrackConfig c;
         if (a.has("n_statements") && a.has("fill")) throw a.error("give n_statements or fill, not both");
         c.n_statements = a.get_int("n_statements", 0, 1, kMaxCount);
         c.fill = a.get_double("fill", c.fill, 0, 1, true, true);
         c.n_chains = a.get_int("n_chains", c.n_chains, 1, kMaxCount);
         c.var_vocab = a.get_int("var_vocab", c.var_vocab, 1, kMaxCount);
         c.value_vocab = a.get_int("value_vocab", c.value_vocab, 1, kMaxCount);
         return std::make_unique<VarTrackTask>(c, seed);
       }},
      {"codeexec", {"n_vars", "m", "n_queries", "ops"},
       [](TaskArgs& a, uint64_t seed) {
         CodeExecConfig c;
         c.n_vars = a.get_int("n_vars", c.n_vars, 1, kMaxCount);
         c.modulus = a.get_int("m", c.modulus, 2, kMaxCount);
         c.n_queries = a.get_int("n_queries", c.n_queries, 1, kMaxCount);
         const std::vector<std::string> names = {"set", "copy", "add", "swap"};
         c.ops.clear();
         for (const std::string& op : a.get_list("ops", names, names))
           c.ops.push_back(CodeOp(std::find(names.begin(), names.end(), op) - names.begin()));
         return std::make_unique<CodeExecTask>(c, seed);
       }},
      {"recall_parity", {"n_streams", "name_vocab", "p_query"},
       [](TaskArgs& a, uint64_t seed) {
         RecallParityConfig c;
         c.n_streams = a.get_int("n_streams", c.n_streams, 1, kMaxCount);
         c.name_vocab = a.get_int("name_vocab", c.name_vocab, 1, kMaxCount);
         c.p_query = a.get_double("p_query", c.p_query, 0, 1);
         return std::make_unique<RecallParityTask>(c, seed);
       }},
      {"flip_recall", {"n_pairs", "key_vocab", "value_vocab", "p_query"},
       [](TaskArgs& a, uint64_t seed) {
         FlipRecallConfig c;
         c.n_pairs = a.get_int("n_pairs", c.n_pairs, 1, kMaxCount);
         c.key_vocab = a.get_int("key_vocab", c.key_vocab, 1, kMaxCount);
         c.value_vocab = a.get_int("value_vocab", c.value_vocab, 2, kMaxCount);
         c.p_query = a.get_double("p_query", c.p_query, 0, 1, true, true);
         return std::make_unique<FlipRecallTask>(c, seed);
       }},
  };
  return table;
}

}  // namespace

const std::vector<std::string>& task_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> n;
    for (const TaskEntry& e : builders()) n.push_back(e.name);
    return n;
  }();
  return names;
}

bool is_task(const std::string& name) {
  const auto& n = task_names();
  return std::find(n.begin(), n.end(), name) != n.end();
}

std::unique_ptr<DataSource> make_task(const std::string& name, const std::string& task_args, uint64_t seed) {
  for (const TaskEntry& e : builders()) {
    if (e.name != name) continue;
    TaskArgs args(name, task_args);
    args.check_keys(e.keys);  // before any value: a misspelt key is the more useful message
    std::unique_ptr<SyntheticTask> t = e.build(args, seed);
    args.finish();
    t->set_args_label(args.canonical());
    return t;
  }
  std::string list;
  for (const std::string& n : task_names()) list += (list.empty() ? "" : ", ") + n;
  throw std::invalid_argument("no synthetic task named '" + name + "' (available: " + list + ")");
}

}  // namespace hysim
