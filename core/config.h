// Run configuration: INI sections [model] [train] [data] [eval] [run], parsed with
// Boost.Program_options, every key overridable on the command line.
//
//   [model]                       # '#' starts a comment (to the end of the line)
//   pattern = GGGA
//   d_model = 512
//
//   hysim train experiments/configs/tiny.ini --model.d_model=128 --train.lr=1e-3
//
// Key `section.field` maps 1:1 to the field of the same name in the section's struct
// (model.gdn_d_head_k -> ModelConfig::gdn_d_head_k). Command-line values win over the
// file; keys not given keep the struct's default. Unknown keys, values of the wrong type
// and inconsistent settings are rejected with a ConfigError naming the key, the value
// and the rule. Lists are comma separated ("0.25,0.5,1.0"); booleans are true/false
// (also 1/0, yes/no, on/off). to_ini() writes the fully resolved config, which parses
// back to the same Config.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/model_config.h"

namespace hysim {

struct ConfigError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct TrainConfig {
  int64_t steps = 200;              // optimizer steps
  int64_t batch_size = 8;           // sequences per micro-batch (per device)
  int64_t seq_len = 128;            // tokens per sequence
  int64_t grad_accum = 1;           // micro-batches per optimizer step
  double lr = 3e-3;                 // peak learning rate
  double min_lr_ratio = 0.1;        // final lr = min_lr_ratio * lr
  int64_t warmup_steps = 20;        // linear warmup from 0
  std::string schedule = "cosine";  // cosine | wsd (warmup-stable-decay) | wsds (WSD with decay branches)
  double decay_fraction = 0.2;      // wsd: the last decay_fraction of steps decay to min_lr; wsds: branch length
  std::vector<double> wsds_decays = {1.0};  // wsds: step fractions at which a decay branch starts
  int64_t wsds_branch = -1;         // wsds: -1 = the stable main run; k = decay branch k (see core/trainer.h)
  double beta1 = 0.9, beta2 = 0.95, adam_eps = 1e-8;
  double weight_decay = 0.1;        // AdamW, decoupled; applied to ParamSpec::weight_decay tensors only
  double grad_clip = 1.0;           // global grad-norm clip; 0 = off
  double z_loss = 1e-5;             // coefficient of log(Z)^2 in the loss; 0 = off
  int64_t seed = 0;                 // parameter init and data order
  int64_t eval_every = 50;          // steps between validation passes; 0 = never
  int64_t eval_batches = 4;         // batches per validation pass
  int64_t checkpoint_every = 0;     // steps between checkpoints; 0 = only at the end
  int64_t log_every = 10;           // steps between metric rows
  bool activation_checkpointing = false;  // recompute each block's activations in the backward

  bool operator==(const TrainConfig&) const = default;
};

struct DataConfig {
  // "text" (bytes of a UTF-8 file, needs vocab_size >= 256), "tokens" (a binary shard of
  // token ids) or the name of a synthetic task (synthetic_tasks/), configured by task_args.
  std::string source = "text";
  std::string path = "data/tinyshakespeare.txt";
  double val_fraction = 0.1;          // tail of the text/shard held out for validation
  std::string token_dtype = "uint16"; // tokens: uint16 | uint32
  std::string task_args;              // free-form "key=value ..." string for the task

  bool operator==(const DataConfig&) const = default;
};

struct EvalConfig {
  std::vector<std::string> tasks;  // evaluation tasks run at the end (comma list)
  std::vector<int64_t> lengths;    // sequence lengths to evaluate them at (comma list)
  // How attention's positions are treated at evaluation (eval_model_config): "none" (as
  // trained), "yarn" (lengths L > train.seq_len run with YaRN, factor L / seq_len) or
  // "drop_pe" (every length without positional encoding, NoPE: "DroPE" without its
  // recalibration phase).
  std::string context_extension = "none";

  bool operator==(const EvalConfig&) const = default;
};

struct RunConfig {
  std::string name = "run";           // results/<experiment>/<name>.h5
  std::string experiment = "default";
  std::string out_dir = "results";
  std::string device = "cpu";         // cpu | cuda
  int64_t threads = 0;                // OpenMP threads; 0 = OpenMP's default
  std::string resume;                 // checkpoint to resume from; empty = fresh start

  bool operator==(const RunConfig&) const = default;
};

// A grid of (architecture x task x seed) cells for `hysim expressivity`.
struct GridConfig {
  std::vector<std::string> architectures;  // presets (experiments/expressivity.h), e.g. transformer,hybrid_3to1
  std::vector<std::string> tasks;          // synthetic task names
  // Per task "key=value ..." in task order, separated by ';' (a task's own lists use
  // commas: "ops=set,add"); may name fewer tasks than `tasks`; "-" or empty: defaults.
  std::string task_args;
  int64_t seeds = 1;                       // seeds 0 .. seeds-1 per cell
  int64_t jobs = 1;                        // cells trained in parallel processes
  std::vector<int64_t> length_multipliers = {1, 2, 4, 8};  // eval lengths = multiplier * train.seq_len

  bool operator==(const GridConfig&) const = default;
};

struct Config {
  ModelConfig model;
  TrainConfig train;
  DataConfig data;
  EvalConfig eval;
  RunConfig run;
  GridConfig grid;

  bool operator==(const Config&) const = default;
};

// Defaults, then the INI file (none when ini_path is empty), then overrides: strings of
// the form "--section.key=value" (a bare "--section.key" sets a boolean to true).
// Validates the result. Throws ConfigError.
Config parse_config(const std::string& ini_path, const std::vector<std::string>& overrides = {});
// The same from INI text in memory; `source` names it in error messages.
Config parse_config_text(const std::string& ini_text, const std::vector<std::string>& overrides = {},
                         const std::string& source = "<string>");

// Every violated rule, one message each ("model.window = 0 must be >= 1"); empty when valid.
std::vector<std::string> config_problems(const Config& c);
// Throws ConfigError listing config_problems(c), one per line, if there are any.
void validate(const Config& c);

// The model as evaluated at sequence length L under eval.context_extension: unchanged
// ("none"; "yarn" at L <= train.seq_len), with YaRN at factor L / train.seq_len, or without
// positional encoding ("drop_pe").
ModelConfig eval_model_config(const Config& c, int64_t L);

// The fully resolved config as INI text (all keys, all sections); parses back to c.
std::string to_ini(const Config& c);
// All keys with their defaults and a one-line description (for `hysim --help`).
std::string config_help();

const char* to_string(NormPlacement p);

}  // namespace hysim
