// hysim: the command-line interface.
//
//   hysim train   -c run.ini [--section.key=value ...]      train, write results + checkpoints
//   hysim info    -c run.ini [--gpus N] [--zero1] ...      parameters, FLOPs, memory
//   hysim forward -c run.ini --checkpoint C --tokens F --out O.h5   logits of a checkpoint
//   hysim eval    -c run.ini --checkpoint C                validation loss of a checkpoint
//   hysim launch  --gpus N train -c run.ini ...            N data-parallel processes, one per GPU
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "core/checkpoint.h"
#include "core/config.h"
#include "core/distributed.h"
#include "core/hdf5_io.h"
#include "core/trainer.h"
#include "core/version.h"
#include "experiments/expressivity.h"
#include "layers/model.h"
#include "scaling/accounting.h"
#include "synthetic_tasks/token_shards.h"

using namespace hysim;

namespace {

struct Args {
  std::string config;                     // -c / --config
  std::vector<std::string> overrides;     // --section.key=value
  std::map<std::string, std::string> opts;  // subcommand options --name value / --flag
  bool help = false;
};

// Options of a subcommand: name -> takes a value.
using OptSpec = std::map<std::string, bool>;

Args parse_args(int argc, char** argv, int first, const OptSpec& spec) {
  Args a;
  for (int i = first; i < argc; ++i) {
    std::string s = argv[i];
    if (s == "-h" || s == "--help") { a.help = true; continue; }
    if (s == "-c" || s == "--config") {
      if (i + 1 >= argc) throw std::runtime_error(s + " needs a path");
      if (!a.config.empty())
        throw std::runtime_error("-c given twice (" + a.config + ", " + argv[i + 1] + "): one config file per run");
      a.config = argv[++i];
      continue;
    }
    if (s.rfind("--", 0) == 0) {
      std::string name = s.substr(2), value;
      const auto eq = name.find('=');
      if (eq != std::string::npos) value = name.substr(eq + 1), name = name.substr(0, eq);
      if (name.find('.') != std::string::npos) { a.overrides.push_back(s); continue; }
      auto it = spec.find(name);
      if (it == spec.end()) throw std::runtime_error("unknown option --" + name + " (see --help)");
      if (it->second && eq == std::string::npos) {
        if (i + 1 >= argc) throw std::runtime_error("--" + name + " needs a value");
        value = argv[++i];
      }
      a.opts[name] = it->second ? value : "1";
      continue;
    }
    throw std::runtime_error("unexpected argument '" + s + "' (see --help)");
  }
  return a;
}

Config load_config(const Args& a) {
  if (!a.config.empty() && !std::filesystem::exists(a.config))
    throw std::runtime_error("config file " + a.config + " does not exist");
  return parse_config(a.config, a.overrides);
}

std::string opt(const Args& a, const std::string& k, const std::string& def = "") {
  auto it = a.opts.find(k);
  return it == a.opts.end() ? def : it->second;
}

const char* kUsage =
    "hysim " "— research simulator for hybrid language models\n\n"
    "usage: hysim <command> [-c config.ini] [--section.key=value ...] [options]\n\n"
    "commands:\n"
    "  train     train a model as configured; writes results/<experiment>/<run>.h5 and .ckpt.h5\n"
    "  info      parameter counts, FLOPs per token and memory per device of a config\n"
    "  forward   logits of a checkpoint for a token file, written to HDF5\n"
    "  eval      validation loss and accuracy of a checkpoint\n"
    "  config    print the fully resolved config (and, with --keys, every key with its meaning)\n"
    "  expressivity  train and evaluate an (architecture x task x seed) grid on synthetic tasks\n"
    "  launch    start a command as N data-parallel processes (one per GPU): hysim launch --gpus N train ...\n\n"
    "Every config key can be overridden on the command line, e.g. --model.d_model=512.\n"
    "`hysim <command> --help` for the command's options.\n";

int cmd_train(int argc, char** argv) {
  Args a = parse_args(argc, argv, 2, {{"resume", true}, {"quiet", false}});
  if (a.help) {
    std::printf(
        "usage: hysim train -c run.ini [--section.key=value ...] [--resume CHECKPOINT] [--quiet]\n\n"
        "Trains as configured, printing one progress line (step, loss, lr, tokens/s, ETA).\n"
        "Writes <run.out_dir>/<run.experiment>/<run.name>.h5 (metrics, eval, config; flushed at\n"
        "every eval and checkpoint) and <run.name>.ckpt.h5 (every train.checkpoint_every steps and\n"
        "at the end). --resume continues from a checkpoint so that the continued run equals an\n"
        "uninterrupted one.\n");
    return 0;
  }
  if (a.opts.count("resume")) a.overrides.push_back("--run.resume=" + a.opts["resume"]);
  Config cfg = load_config(a);
  const bool leader = world_from_env().leader();  // data parallel: rank 0 reports
  const bool quiet = a.opts.count("quiet") || !leader;
  if (!quiet) std::printf("# resolved config (hysim %s, %s)\n%s\n", version_string(), git_hash(), to_ini(cfg).c_str());
  TrainOptions o;
  o.quiet = quiet;
  TrainOutcome r = train(cfg, o);
  if (!leader) return 0;
  std::printf("done: %lld steps, train loss %.4f, val loss %.4f\nresults:    %s\ncheckpoint: %s\n",
              (long long)r.steps_done, r.train_loss, r.val_loss, r.results_path.c_str(), r.checkpoint_path.c_str());
  return 0;
}

int cmd_info(int argc, char** argv) {
  Args a = parse_args(argc, argv, 2,
                      {{"gpus", true}, {"zero1", false}, {"micro-batch", true}, {"seq-len", true}, {"bytes", true}});
  if (a.help) {
    std::printf(
        "usage: hysim info -c model.ini [--gpus N] [--zero1] [--micro-batch B] [--seq-len T] [--bytes 2|4]\n\n"
        "Parameter count by kind (embedding / attention / GDN / Mamba2 / MLP / norms / head), FLOPs per\n"
        "token (forward and forward+backward) at the sequence length, and memory per device for\n"
        "parameters, gradients, optimizer state and activations (with activation checkpointing as\n"
        "train.activation_checkpointing says; both per-token figures are printed), for N data-parallel\n"
        "GPUs with or without ZeRO-1.\n");
    return 0;
  }
  Config cfg = load_config(a);
  MemoryOptions mo;
  mo.data_parallel = std::stoll(opt(a, "gpus", "1"));
  mo.zero1 = a.opts.count("zero1");
  mo.activation_checkpointing = cfg.train.activation_checkpointing;
  mo.micro_batch = std::stoll(opt(a, "micro-batch", std::to_string(cfg.train.batch_size)));
  mo.seq_len = std::stoll(opt(a, "seq-len", std::to_string(cfg.train.seq_len)));
  const int64_t bytes = std::stoll(opt(a, "bytes", "2"));
  mo.param_bytes = mo.act_bytes = bytes;
  mo.master_bytes = bytes >= 4 ? 0 : 4;  // below fp32, weights are a copy of fp32 master weights
  mo.grad_bytes = std::max<int64_t>(bytes, mo.grad_bytes);
  std::printf("%s", accounting_report(cfg, mo).c_str());
  // Cross-check: the layers' own parameter declarations, counted without allocating.
  ModelParams<float> p;
  int64_t declared = 0;
  visit_params(cfg.model, p, [&](float*&, const ParamSpec& s) { declared += s.numel(); });
  const int64_t counted = count_params(cfg.model).total();
  std::printf("parameters declared by the layers: %lld (%s the accounting)\n", (long long)declared,
              declared == counted ? "matches" : "DIFFERS FROM");
  return declared == counted ? 0 : 1;
}

// Tokens from .npy / .bin (token_shards) or, for other files, the bytes of the file.
std::vector<int32_t> read_tokens(const std::string& path, const Config& cfg) {
  if (!std::filesystem::exists(path)) throw std::runtime_error("token file " + path + " does not exist");
  const std::string ext = std::filesystem::path(path).extension();
  std::vector<int32_t> toks;
  if (ext == ".npy" || ext == ".bin") {
    TokenFile f(path, cfg.data.token_dtype);
    toks.resize(f.size());
    f.read(0, f.size(), cfg.model.vocab_size, toks.data());
  } else {
    std::FILE* fp = std::fopen(path.c_str(), "rb");
    for (int ch; (ch = std::fgetc(fp)) != EOF;) toks.push_back(ch);
    std::fclose(fp);
  }
  return toks;
}

int cmd_forward(int argc, char** argv) {
  Args a = parse_args(argc, argv, 2, {{"checkpoint", true}, {"tokens", true}, {"out", true}, {"max-tokens", true}});
  if (a.help || !a.opts.count("checkpoint") || !a.opts.count("tokens") || !a.opts.count("out")) {
    std::printf(
        "usage: hysim forward -c model.ini --checkpoint C.h5 --tokens F --out logits.h5 [--max-tokens N]\n\n"
        "Runs the model of checkpoint C on the token sequence in F (.npy or raw .bin token ids, or any\n"
        "other file as bytes) and writes datasets `tokens` [T] and `logits` [T, vocab] (float32).\n");
    return a.help ? 0 : 2;
  }
  Config cfg = load_config(a);
  Checkpoint ck = load_checkpoint(a.opts["checkpoint"]);
  std::vector<int32_t> toks = read_tokens(a.opts["tokens"], cfg);
  if (a.opts.count("max-tokens")) toks.resize(std::min<size_t>(toks.size(), std::stoull(a.opts["max-tokens"])));
  if (toks.empty()) throw std::runtime_error("token file " + a.opts["tokens"] + " is empty");
  const int64_t T = int64_t(toks.size()), V = cfg.model.vocab_size;
  Model<float> model(cfg.model, 1, T);
  load_store_tensors(model.store, ck.params, "checkpoint " + a.opts["checkpoint"]);
  std::vector<float> logits(size_t(T * V));
  model.forward_logits(toks.data(), 1, T, logits.data());
  h5::write_file_atomically(a.opts["out"], [&](h5::File& f) {
    std::vector<int64_t> t64(toks.begin(), toks.end());
    f.write("tokens", t64);
    f.write("logits", logits.data(), Shape{T, V});
    f.set_attr("checkpoint", a.opts["checkpoint"]);
  });
  std::printf("wrote %s: logits [%lld, %lld]\n", a.opts["out"].c_str(), (long long)T, (long long)V);
  return 0;
}

int cmd_eval(int argc, char** argv) {
  Args a = parse_args(argc, argv, 2, {{"checkpoint", true}});
  if (a.help || !a.opts.count("checkpoint")) {
    std::printf(
        "usage: hysim eval -c run.ini --checkpoint C.h5 [--train.eval_batches=N] [--train.seq_len=T]\n\n"
        "Validation loss (nats/token) and next-token accuracy of a checkpoint on the configured data,\n"
        "at train.seq_len and at every length in eval.lengths (attention positions as\n"
        "eval.context_extension says: none | yarn | drop_pe).\n");
    return a.help ? 0 : 2;
  }
  Config cfg = load_config(a);
  Checkpoint ck = load_checkpoint(a.opts["checkpoint"]);
  auto data = make_data_source(cfg);
  std::vector<int64_t> lengths = cfg.eval.lengths;
  if (lengths.empty()) lengths.push_back(cfg.train.seq_len);
  const int64_t B = cfg.train.batch_size;
  std::printf("| length | val loss | accuracy |\n|---|---|---|\n");
  ParamStore<float> params;
  {
    Model<float> m(cfg.model, 1, 1);
    load_store_tensors(m.store, ck.params, "checkpoint " + a.opts["checkpoint"]);
    params = m.store;
  }
  for (int64_t T : lengths) {
    const EvalStats e = evaluate_at_length(eval_model_config(cfg, T), params, *data, B, T, cfg.train.eval_batches);
    std::printf("| %lld | %.4f | %.4f |\n", (long long)T, e.loss, e.accuracy);
  }
  return 0;
}

int cmd_expressivity(int argc, char** argv) {
  Args a = parse_args(argc, argv, 2, {{"quiet", false}});
  if (a.help) {
    std::printf(
        "usage: hysim expressivity -c experiments/configs/expressivity.ini [--section.key=value ...]\n\n"
        "Trains every (grid.architectures x grid.tasks x grid.seeds) cell as a separate `hysim train`\n"
        "process (grid.jobs at a time), evaluates each at grid.length_multipliers x train.seq_len and\n"
        "writes <out_dir>/<experiment>/expressivity.h5 plus a table. Finished cells are kept: re-running\n"
        "completes an interrupted sweep. Architectures:\n");
    for (const Architecture& ar : architecture_presets())
      std::printf("  %-20s %s\n", ar.name.c_str(), ar.description.c_str());
    return 0;
  }
  Config cfg = load_config(a);
  ExpressivityOptions o;
  o.config_path = a.config;
  o.overrides = a.overrides;
  o.hysim_exe = std::filesystem::read_symlink("/proc/self/exe").string();
  o.quiet = a.opts.count("quiet");
  return run_expressivity(cfg, o) == 0 ? 0 : 1;
}

int cmd_config(int argc, char** argv) {
  Args a = parse_args(argc, argv, 2, {{"keys", false}});
  if (a.help) {
    std::printf("usage: hysim config [-c run.ini] [--section.key=value ...] [--keys]\n");
    return 0;
  }
  if (a.opts.count("keys")) std::printf("%s", config_help().c_str());
  else std::printf("%s", to_ini(load_config(a)).c_str());
  return 0;
}

int cmd_launch(int argc, char** argv) {
  int gpus = 0;
  std::string rdzv_dir;
  int i = 2;
  for (; i < argc && argv[i][0] == '-'; ++i) {
    const std::string s = argv[i];
    auto value = [&](const std::string& name) -> std::string {
      if (s.rfind(name + "=", 0) == 0) return s.substr(name.size() + 1);
      if (i + 1 >= argc) throw std::runtime_error(name + " needs a value");
      return argv[++i];
    };
    if (s == "-h" || s == "--help") {
      std::printf(
          "usage: hysim launch --gpus N [--rendezvous-dir DIR] <command> [args ...]\n\n"
          "Starts <command> N times, one process per GPU, with RANK, WORLD_SIZE, LOCAL_RANK,\n"
          "LOCAL_WORLD_SIZE and HYSIM_RENDEZVOUS (a fresh file in DIR, default the temporary\n"
          "directory, through which the ranks exchange the NCCL id) set. <command> is a hysim command\n"
          "(train, eval, ...: this binary runs it) or a program. Rank r uses GPU r; rank 0 prints and\n"
          "writes results and checkpoints. If one rank fails, the others are stopped and its exit\n"
          "status is returned. mpirun and srun start the same processes without this command\n"
          "(DESIGN.md, GPUs). Example:\n"
          "  hysim launch --gpus 2 train -c experiments/configs/olmo_hybrid_1b.ini --run.device=cuda\n");
      return 0;
    }
    if (s == "--gpus" || s.rfind("--gpus=", 0) == 0) {
      const std::string v = value("--gpus");
      char* end = nullptr;
      const long n = std::strtol(v.c_str(), &end, 10);
      if (v.empty() || *end || n < 1 || n > 1024) throw std::runtime_error("--gpus " + v + ": need a count >= 1");
      gpus = int(n);
    } else if (s == "--rendezvous-dir" || s.rfind("--rendezvous-dir=", 0) == 0) {
      rdzv_dir = value("--rendezvous-dir");
    } else {
      throw std::runtime_error("unknown option " + s + " (before the command; see hysim launch --help)");
    }
  }
  if (gpus == 0) throw std::runtime_error("--gpus N is required (see hysim launch --help)");
  if (i >= argc) throw std::runtime_error("no command to launch (e.g. hysim launch --gpus 2 train -c run.ini)");
  std::vector<std::string> command(argv + i, argv + argc);
  // A hysim command runs in this very binary.
  if (command[0].find('/') == std::string::npos &&
      (command[0] == "train" || command[0] == "eval" || command[0] == "forward" || command[0] == "expressivity"))
    command.insert(command.begin(), std::filesystem::read_symlink("/proc/self/exe").string());
  return launch(gpus, command, rdzv_dir);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "--help")) {
    std::printf("%s", kUsage);
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  try {
    if (cmd == "train") return cmd_train(argc, argv);
    if (cmd == "info") return cmd_info(argc, argv);
    if (cmd == "forward") return cmd_forward(argc, argv);
    if (cmd == "eval") return cmd_eval(argc, argv);
    if (cmd == "config") return cmd_config(argc, argv);
    if (cmd == "expressivity") return cmd_expressivity(argc, argv);
    if (cmd == "launch") return cmd_launch(argc, argv);
    if (cmd == "--version") return std::printf("hysim %s (%s)\n", version_string(), git_hash()), 0;
    std::fprintf(stderr, "hysim: unknown command '%s'\n\n%s", cmd.c_str(), kUsage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "\nhysim %s: error: %s\n", cmd.c_str(), e.what());
    return 1;
  }
}
