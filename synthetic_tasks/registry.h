// Synthetic tasks by name, configured by a "key=value key=value" string (data.task_args,
// grid.task_args). Tasks and their keys (defaults in brackets; the formats are documented
// in state_tracking.h, recall.h, combined.h):
//
//   parity          (no keys)
//   modadd          m [5]
//   perm_s3, perm_s5, perm_a5   (no keys)
//   flipflop        p_write [0.1], p_read [0.1]
//   mqar            n_pairs [from fill], fill [0.5], key_vocab [512], value_vocab [512],
//                   query = uniform | powerlaw [uniform], alpha [1]
//   selective_copy  n_tokens [from fill], fill [0.125], data_vocab [16]
//   niah            mode = single | multikey | multivalue [single],
//                   n_keys [multikey: 4, else 1], n_values [multivalue: 4, else 1],
//                   hay_vocab [64], key_vocab [64], value_vocab [64]
//   vartrack        n_statements [from fill], fill [0.5], n_chains [4], var_vocab [512],
//                   value_vocab [16]
//   codeexec        n_vars [4], m [5], n_queries [1], ops = comma list of
//                   set, copy, add, swap [all]
//   recall_parity   n_streams [4], name_vocab [64], p_query [0.25]
//   flip_recall     n_pairs [16], key_vocab [32], value_vocab [32], p_query [0.5]
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "synthetic_tasks/task.h"

namespace hysim {

// The task names above, in that order.
const std::vector<std::string>& task_names();
bool is_task(const std::string& name);

// Throws std::invalid_argument: for an unknown name (listing the available tasks), for a
// malformed argument, an unknown key (listing the task's keys) or a bad value (naming
// the key and the value).
std::unique_ptr<DataSource> make_task(const std::string& name, const std::string& task_args, uint64_t seed);

}  // namespace hysim
